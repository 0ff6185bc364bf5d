"""One settings object for the whole product (environment prefix ``ANTIDISTILL_``).

Secrets are held as :class:`pydantic.SecretStr` so that they never appear in a ``repr``, a log line or an
exception. Outside the ``dev`` and ``test`` environments a placeholder master key is refused.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from antidistill.errors import ConfigError

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
        data_dir: where the master key file (and later the database) live.
        cache_dir: where converted model weights are cached.
        master_key: the master secret; if unset, a random key file is created in ``data_dir``.
        model: a local transformers model directory or GGUF file used instead of the embedded model.

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

    @field_validator("data_dir", "cache_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if (
            self.master_key is not None
            and self.env == "prod"
            and is_placeholder(self.master_key.get_secret_value())
        ):
            raise ValueError(
                "ANTIDISTILL_MASTER_KEY is a placeholder or shorter than "
                f"{MIN_SECRET_CHARS} characters; set a random secret (e.g. `openssl rand -hex 32`) "
                "or unset it to have one created in the data directory"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        msg = errors()[0]["msg"] if callable(errors) else str(exc)
        raise ConfigError(msg.removeprefix("Value error, ")) from None
