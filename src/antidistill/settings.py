"""One settings object for the whole product (environment prefix ``ANTIDISTILL_``).

Secrets are held as :class:`pydantic.SecretStr` so that they never appear in a ``repr``, a log line or an
exception. Outside the ``dev`` and ``test`` environments a placeholder master key is refused.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from antidistill.errors import ConfigError

if TYPE_CHECKING:
    from antidistill.watermark.config import WatermarkConfig

#: Values people paste into configuration files before they have a real secret.
PLACEHOLDER_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "change_me",
        "secret",
        "password",
        "master",
        "masterkey",
        "master-key",
        "dev",
        "test",
        "example",
        "placeholder",
        "xxx",
        "todo",
        "none",
        "null",
        "default",
    }
)
MIN_SECRET_CHARS = 32


def is_placeholder(value: str) -> bool:
    """True for an empty, well-known or too-short secret."""
    v = value.strip()
    if v.lower() in PLACEHOLDER_SECRETS or len(v) < MIN_SECRET_CHARS:
        return True
    # "aaaaaaaa…" or "00000000…": one repeated character is no secret.
    return len(set(v)) < 4


class Settings(BaseSettings):
    """Process-wide settings, read from the environment (``ANTIDISTILL_*``).

    Args:
        env: ``prod`` (default), ``dev`` or ``test``; placeholder secrets are refused in ``prod``.
        data_dir: where the master key file, the key ring and the SQLite database live (created mode 0700).
        cache_dir: where converted model weights are cached.
        master_key: the master secret; if unset, a random key file is created in ``data_dir``.
        model: a local transformers model directory or GGUF file used instead of the embedded model.
        database_url: SQLAlchemy URL of the database (``postgresql://…`` or ``sqlite:///…``); ``None`` means the
            SQLite file ``antidistill.db`` in ``data_dir``.
        audit_checkpoint_every: audit records between two signed checkpoints.
        admin_token: bearer token of the admin API (``ANTIDISTILL_ADMIN_TOKEN``); no default: unset, the admin
            API answers 401 to everyone. An empty or blank token is refused in every environment, placeholders
            in ``prod``. Surrounding whitespace is dropped (HTTP drops it from a header value, so a token with
            it could never be sent).
        api_docs: serve ``/docs`` and ``/redoc`` to everyone, with a schema of the client API only; off, the
            pages are not served. The full schema (admin routes included) always needs the admin token.
        redis_url: share rate-limit counters between gateway replicas through Redis (default: in process).
        rate_limit_prefix: namespace of the rate-limit keys in Redis.
        backend: what the gateway serves from: ``local`` model, ``upstream`` OpenAI-compatible server (unmarked),
            ``vllm`` (a vLLM server that marks with antidistill's plugin, :mod:`antidistill.models.vllm_backend`),
            ``fake``.
        upstream_url, upstream_api_key, upstream_model, upstream_timeout: the upstream server (``backend=upstream``
            or ``vllm``), its key, a model name to send instead of the client's, and its timeout in seconds.
        verify_every, verify_min_tokens, verify_alpha, verify_alarm_misses: with ``backend=vllm``, one in
            ``verify_every`` completions of at least ``verify_min_tokens`` tokens is tested for its account's mark
            in the background (0: none); a p-value above ``verify_alpha`` is a miss, and ``verify_alarm_misses``
            misses in a row raise the alarm that the engine stopped marking (:mod:`antidistill.gateway.verify`).
        request_timeout: seconds a backend may take for one request before the gateway answers 504.
        max_body_bytes: larger request bodies are refused with 413 before they are read.
        max_header_bytes: a request line and headers larger than this are refused with 431 (the connection is
            closed) before more of them is read.
        header_timeout: seconds a connection may take to send a whole request head, counted from its first byte
            (from the connection's opening for its first request); then 408 and the connection is closed.
        body_timeout: seconds a request body may take to arrive in full after its head; then the connection is
            closed (30 s lets the largest default body arrive at 35 KB/s; raise it with ``max_body_bytes``).
        max_connections: open connections per server process; more are answered 503 and closed at once.
        max_tokens_cap: the largest ``max_tokens`` a request may ask for; ``default_max_tokens`` when it asks none.
        trust_forwarded_for: take the client address from ``X-Forwarded-For`` (only behind a trusted proxy).
        monitor: score the traffic inside the gateway as it passes (a background worker; default off).
        policy_file: the policy (terms of service as YAML, see :mod:`antidistill.monitor.policy`); ``None``: the
            shipped default policy.
        enforcement: apply the stored enforcement state (flag, throttle, review, block) to every exchange, whether
            the gateway's monitor or a batch ``antidistill monitor scan`` set it.
        enforcement_ttl: seconds the gateway trusts its cached enforcement state before reading it again (replicas
            sharing one database agree within this time).
        monitor_queue_size: exchanges waiting for the monitor worker (or, in ``stream`` mode, for the publisher);
            beyond it they are dropped and counted.
        monitor_mode: ``embedded`` (the default): each gateway scores its own traffic in process (with
            ``monitor`` on); ``stream``: gateways publish every audited exchange to a Redis Stream and one
            ``antidistill monitor run`` service scores and enforces for all replicas
            (:mod:`antidistill.monitor.stream`).
        monitor_stream_url: the Redis of the stream (default: ``redis_url``).
        monitor_stream: the stream's key; its enforcement channel is ``<key>:enforcement``.
        monitor_group: the consumer group of ``monitor run`` on the stream.
        monitor_stream_maxlen: entries the stream keeps (approximately; the oldest are trimmed). ``monitor run``
            rebuilds its state after a restart by replaying the stream, so this is also how far back that reaches.
        watermark: mark completions with the account's and the provider's keys (off only to host a model as
            someone else would, e.g. the red team serving a distilled student for a closed-model scan).
        watermark_scheme, watermark_gamma, watermark_delta, watermark_context_width, watermark_provider_fraction,
        watermark_entropy_threshold, watermark_layers: the watermark the local backend marks with
            (``ANTIDISTILL_WATERMARK_SCHEME``, ...): any member of the scheme family
            (:func:`antidistill.watermark.schemes.scheme_names`) and its parameters; unset ones take
            :class:`~antidistill.watermark.config.WatermarkConfig`'s defaults (a single-key member gets provider
            fraction 0). Refused at startup if they do not make a valid configuration. Changing them later is
            safe: every audit record names the configuration that marked it, and detection and scans read each
            record with its own (see :meth:`watermark_config`).
        allow_unmarked: the vLLM plugin (:mod:`antidistill.engines.vllm`) serves requests that carry no antidistill
            arguments, unmarked; off (the default), such a request is refused, so no completion leaves an engine
            started with the plugin unmarked by mistake.
        accept_client_clock: take each exchange's time from the ``X-Antidistill-Clock`` request header (unix
            seconds), so the traffic simulator can replay a virtual week in minutes; refused in ``prod``, where a
            client must never write the audit log's timestamps.

    Example:
        >>> s = Settings(env="test", data_dir="/tmp/x")
        >>> s.env
        'test'
    """

    # hide_input_in_errors: a refused master key (e.g. a real but too short secret) must not be echoed in the
    # ValidationError, which pydantic otherwise prints with the whole input.
    model_config = SettingsConfigDict(env_prefix="ANTIDISTILL_", extra="ignore", hide_input_in_errors=True)

    env: Literal["prod", "dev", "test"] = "prod"
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("antidistill")))
    cache_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_cache_dir("antidistill")))
    master_key: SecretStr | None = None
    model: str | None = None
    database_url: str | None = None
    audit_checkpoint_every: int = Field(default=100, ge=1, le=1_000_000)

    # gateway
    admin_token: SecretStr | None = None
    redis_url: str | None = None
    rate_limit_prefix: str = Field(default="antidistill", min_length=1, max_length=100)
    backend: Literal["local", "upstream", "vllm", "fake"] = "local"
    upstream_url: str | None = None
    upstream_api_key: SecretStr | None = None
    upstream_model: str | None = None
    upstream_timeout: float = Field(default=120.0, gt=0)
    verify_every: int = Field(default=8, ge=0, le=1_000_000)
    verify_min_tokens: int = Field(default=64, ge=16, le=1_000_000)
    verify_alpha: float = Field(default=1e-3, gt=0.0, lt=1.0)
    verify_alarm_misses: int = Field(default=3, ge=1, le=1000)
    request_timeout: float = Field(default=300.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    api_docs: bool = False
    max_tokens_cap: int = Field(default=4096, ge=1)
    default_max_tokens: int = Field(default=256, ge=1)
    trust_forwarded_for: bool = False
    accept_client_clock: bool = False
    watermark: bool = True
    watermark_scheme: str | None = None
    watermark_gamma: float | None = None
    watermark_delta: float | None = None
    watermark_context_width: int | None = None
    watermark_provider_fraction: float | None = None
    watermark_entropy_threshold: float | None = None
    watermark_layers: int | None = None
    allow_unmarked: bool = False

    # monitor and policy
    monitor: bool = False
    policy_file: Path | None = None
    enforcement: bool = True
    enforcement_ttl: float = Field(default=2.0, ge=0.0, le=3600.0)
    monitor_queue_size: int = Field(default=10_000, ge=1, le=10_000_000)
    monitor_mode: Literal["embedded", "stream"] = "embedded"
    monitor_stream_url: str | None = None
    monitor_stream: str = Field(default="antidistill:monitor:events", min_length=1, max_length=200)
    monitor_group: str = Field(default="antidistill-monitor", min_length=1, max_length=200)
    monitor_stream_maxlen: int = Field(default=10_000_000, ge=1000, le=1_000_000_000)

    @field_validator("data_dir", "cache_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @field_validator("admin_token", mode="after")
    @classmethod
    def _no_blank_admin_token(cls, v: SecretStr | None) -> SecretStr | None:
        # Refused rather than taken as "unset": an empty value is most often a variable that a deployment file
        # failed to fill in (``ANTIDISTILL_ADMIN_TOKEN=${ADMIN_TOKEN}``), and its operator should learn that at
        # startup, not from an admin API that is silently off. In no environment may it open the admin API.
        if v is None:
            return None
        token = v.get_secret_value().strip()
        if not token:
            raise ValueError(
                "ANTIDISTILL_ADMIN_TOKEN is set but empty; set a random token (e.g. `openssl rand "
                "-hex 32`) or unset the variable to disable the admin API"
            )
        return SecretStr(token)

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.master_key is not None and self.env == "prod" and is_placeholder(self.master_key.get_secret_value()):
            raise ValueError(
                "ANTIDISTILL_MASTER_KEY is a placeholder or shorter than "
                f"{MIN_SECRET_CHARS} characters; set a random secret (e.g. `openssl rand -hex 32`) "
                "or unset it to have one created in the data directory"
            )
        if self.admin_token is not None and self.env == "prod" and is_placeholder(self.admin_token.get_secret_value()):
            raise ValueError(
                "ANTIDISTILL_ADMIN_TOKEN is a placeholder or shorter than "
                f"{MIN_SECRET_CHARS} characters; set a random token (e.g. `openssl rand -hex 32`) "
                "or unset it to disable the admin API"
            )
        if self.accept_client_clock and self.env == "prod":
            raise ValueError(
                "ANTIDISTILL_ACCEPT_CLIENT_CLOCK lets clients set the audit log's timestamps; it is for simulations "
                "only and refused when ANTIDISTILL_ENV is prod (use dev or test)"
            )
        if self.monitor_mode == "stream" and not self.stream_url:
            raise ValueError(
                "ANTIDISTILL_MONITOR_MODE=stream needs a Redis: set ANTIDISTILL_MONITOR_STREAM_URL "
                "(or ANTIDISTILL_REDIS_URL), e.g. redis://127.0.0.1:6379/0"
            )
        if any(v is not None for v in self._watermark_params().values()):
            self.watermark_config()  # refused here, at startup, rather than at the first request
        return self

    @property
    def stream_url(self) -> str | None:
        """The Redis of the monitor's stream: ``monitor_stream_url``, else ``redis_url``."""
        return self.monitor_stream_url or self.redis_url

    def _watermark_params(self) -> dict[str, Any]:
        return {
            "scheme": self.watermark_scheme,
            "gamma": self.watermark_gamma,
            "delta": self.watermark_delta,
            "context_width": self.watermark_context_width,
            "provider_fraction": self.watermark_provider_fraction,
            "entropy_threshold": self.watermark_entropy_threshold,
            "layers": self.watermark_layers,
        }

    def watermark_config(self) -> WatermarkConfig:
        """The watermark configuration the settings name (``ANTIDISTILL_WATERMARK_*``).

        Raises:
            ValueError: the parameters do not make a valid configuration (the message names the variable).
        """
        # numpy and scipy come with the watermark package: loaded only when a configuration is asked for
        from antidistill.errors import InputError
        from antidistill.watermark.config import WatermarkConfig
        from antidistill.watermark.schemes import scheme_class, scheme_names

        params = {k: v for k, v in self._watermark_params().items() if v is not None}
        scheme = params.get("scheme")
        if scheme is not None and scheme not in scheme_names():
            raise ValueError(f"ANTIDISTILL_WATERMARK_SCHEME must be one of {', '.join(scheme_names())}, got {scheme!r}")
        if scheme is not None and not scheme_class(scheme).generates:
            raise ValueError(
                f"ANTIDISTILL_WATERMARK_SCHEME={scheme} is a read-only interoperability member: it detects another "
                "implementation's marks and cannot mark what this server serves"
            )
        if scheme is not None and "provider_fraction" not in params and scheme_class(scheme).single_key:
            params["provider_fraction"] = 0.0  # a single-key member: no provider/account split
        try:
            return WatermarkConfig(**params)
        except InputError as exc:
            raise ValueError(f"ANTIDISTILL_WATERMARK_* settings: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        msg = errors()[0]["msg"] if callable(errors) else str(exc)
        raise ConfigError(msg.removeprefix("Value error, ")) from None
