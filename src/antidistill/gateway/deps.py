"""What every route gets injected, as ``Annotated`` aliases: the gateway's parts, the caller's account, the admin.

``AccountDep`` resolves the bearer API key to its account: 401 for a missing, unknown or revoked key, 403 for a
disabled account. ``AdminDep`` checks the admin token in constant time; without a configured token the admin API
is off and answers 401 to everyone.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from antidistill.gateway.errors import APIError
from antidistill.gateway.limits import RateLimiter
from antidistill.gateway.metrics import GatewayMetrics
from antidistill.gateway.monitoring import Monitoring
from antidistill.gateway.verify import MarkVerifier
from antidistill.keys import KeyRing
from antidistill.models.base import Backend
from antidistill.settings import Settings
from antidistill.store.api import Account, ApiKeyInfo, Storage

#: longest bearer token looked up in the store (real keys are far shorter; longer ones are not hashed at all)
MAX_KEY_CHARS = 512
_T = TypeVar("_T")


def _started(part: _T | None, name: str) -> _T:
    if part is None:
        raise RuntimeError(f"the gateway's {name} is set when the app starts (its lifespan); it has not started")
    return part


class Gateway:
    """The parts of one gateway app.

    ``backend``, ``store``, ``limiter`` and ``keyring`` are the ones given to
    :func:`~antidistill.gateway.app.create_app`, or made by the app's lifespan when it starts; reading one that is
    not there yet raises ``RuntimeError`` (no request is served before the lifespan has run).

    Args:
        settings: the gateway's settings.
        metrics: its Prometheus metrics.
        backend, store, limiter, keyring: the parts given to ``create_app`` (``None``: made at start).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        *,
        backend: Backend | None = None,
        store: Storage | None = None,
        limiter: RateLimiter | None = None,
        keyring: KeyRing | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._backend = backend
        self._store = store
        self._limiter = limiter
        self._keyring = keyring
        self.started = 0
        #: tasks that must outlive the request that started them (audit records of abandoned streams)
        self.background: set[asyncio.Task[None]] = set()
        #: enforcement of the policy and the monitor worker; ``None`` when both are off
        self.monitoring: Monitoring | None = None
        #: the background check of a sample of the completions an engine marked (``--backend vllm``); else ``None``
        self.verifier: MarkVerifier | None = None

    def is_set(self, part: Literal["backend", "store", "limiter", "keyring"]) -> bool:
        """Whether ``part`` is there (given to ``create_app``, or made by the lifespan)."""
        return getattr(self, "_" + part) is not None

    @property
    def backend(self) -> Backend:
        return _started(self._backend, "backend")

    @backend.setter
    def backend(self, value: Backend) -> None:
        self._backend = value

    @property
    def store(self) -> Storage:
        return _started(self._store, "store")

    @store.setter
    def store(self, value: Storage) -> None:
        self._store = value

    @property
    def limiter(self) -> RateLimiter:
        return _started(self._limiter, "limiter")

    @limiter.setter
    def limiter(self, value: RateLimiter) -> None:
        self._limiter = value

    @property
    def keyring(self) -> KeyRing:
        return _started(self._keyring, "keyring")

    @keyring.setter
    def keyring(self, value: KeyRing) -> None:
        self._keyring = value


@dataclass(frozen=True)
class Principal:
    """The caller: an enabled account and the (unrevoked) API key it used."""

    account: Account
    key: ApiKeyInfo


def get_gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def get_settings(gw: GatewayDep) -> Settings:
    return gw.settings


def get_store(gw: GatewayDep) -> Storage:
    return gw.store


def get_backend(gw: GatewayDep) -> Backend:
    return gw.backend


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Storage, Depends(get_store)]
BackendDep = Annotated[Backend, Depends(get_backend)]

_api_key_scheme = HTTPBearer(auto_error=False, scheme_name="ApiKey", description="An antidistill API key.")
_admin_scheme = HTTPBearer(
    auto_error=False, scheme_name="AdminToken", description="The admin token (ANTIDISTILL_ADMIN_TOKEN)."
)


async def authenticate(
    gw: GatewayDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_api_key_scheme)]
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise APIError(
            401,
            "You didn't provide an API key. Send it in the Authorization header: 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    key = credentials.credentials
    found = None
    if len(key) <= MAX_KEY_CHARS and key.isascii() and key.isprintable():
        found = await run_in_threadpool(gw.store.authenticate, key)
    if found is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    account, info = found
    if info.revoked_at is not None:
        raise APIError(401, "This API key has been revoked.", code="invalid_api_key")
    if not account.enabled:
        raise APIError(403, "This account is disabled.", code="account_disabled")
    return Principal(account, info)


AuthDep = Annotated[Principal, Depends(authenticate)]


def current_account(principal: AuthDep) -> Account:
    return principal.account


AccountDep = Annotated[Account, Depends(current_account)]


AdminCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_scheme)]


def check_admin(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Raise :class:`APIError` 401 unless ``credentials`` carry the configured admin token."""
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else ""
    # Settings refuse a blank token; checked again here because an empty expected token would match an empty
    # header (b"" == b""), and nothing must ever open the admin API that way.
    if not token.strip():
        raise APIError(
            401, "The admin API is disabled: set ANTIDISTILL_ADMIN_TOKEN to enable it.", code="admin_disabled"
        )
    given = credentials.credentials if credentials is not None else ""
    # compare_digest on bytes: constant time in the length of the expected token, whatever was sent
    if not given or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode()):
        raise APIError(401, "Incorrect admin token provided.", code="invalid_admin_token")


async def require_admin(gw: GatewayDep, credentials: AdminCredentials) -> None:
    check_admin(gw.settings, credentials)


AdminDep = Annotated[None, Depends(require_admin)]
