"""The admin API of the monitor: alerts, and each account's enforcement state. Every route needs the admin token.

Clearing an account's enforcement is itself an audit record (``monitor:action``, ``set_by: admin``), and takes
effect on this replica at once and on the others within ``ANTIDISTILL_ENFORCEMENT_TTL`` seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from antidistill.gateway.deps import AdminDep, GatewayDep, StoreDep
from antidistill.gateway.errors import APIError
from antidistill.gateway.routes.admin import MAX_ID_CHARS
from antidistill.gateway.schemas import ErrorResponse
from antidistill.monitor.actions import Enforcer
from antidistill.monitor.policy import Policy
from antidistill.store.api import AccountStore, Alert, Enforcement

router = APIRouter(
    prefix="/admin",
    tags=["monitor"],
    responses={401: {"model": ErrorResponse, "description": "Missing or wrong admin token."}},
)
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "No such account."}}
MAX_ALERTS = 10_000


# Response bodies of these routes (kept with them: nothing here can carry a secret, and they are the monitor's).
class AlertOut(BaseModel):
    id: str
    account_id: str
    cluster_id: str | None
    risk: float
    level: str
    reasons: list[str]
    scores: dict[str, float]
    at: datetime
    action: str
    clause: str | None
    created_at: datetime
    audit_seq: int | None


class EnforcementOut(BaseModel):
    account_id: str
    action: str
    active: bool
    level: str | None = None
    clause: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    rpm: int | None = None
    tpm: int | None = None
    reason: str | None = None
    set_by: str | None = None
    alert_id: str | None = None


def alert_out(a: Alert) -> AlertOut:
    return AlertOut(
        id=a.id,
        account_id=a.account_id,
        cluster_id=a.cluster_id,
        risk=a.risk,
        level=a.level,
        reasons=list(a.reasons),
        scores=dict(a.scores),
        at=a.at,
        action=a.action,
        clause=a.clause,
        created_at=a.created_at,
        audit_seq=a.audit_seq,
    )


def enforcement_out(account_id: str, e: Enforcement | None) -> EnforcementOut:
    if e is None:
        return EnforcementOut(account_id=account_id, action="none", active=False)
    return EnforcementOut(
        account_id=e.account_id,
        action=e.action,
        active=e.active(datetime.now(UTC)),
        level=e.level,
        clause=e.clause,
        since=e.since,
        until=e.until,
        rpm=e.rpm,
        tpm=e.tpm,
        reason=e.reason,
        set_by=e.set_by,
        alert_id=e.alert_id,
    )


async def _known_account(store: AccountStore, account_id: str) -> None:
    if len(account_id) > MAX_ID_CHARS or await run_in_threadpool(store.get_account, account_id) is None:
        raise APIError(
            404, f"no account with id {account_id[:MAX_ID_CHARS]!r}", param="account_id", code="account_not_found"
        )


@router.get("/alerts", response_model=list[AlertOut], summary="List the monitor's alerts (oldest first)")
async def list_alerts(
    _: AdminDep,
    store: StoreDep,
    account_id: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ALERTS)] = 1000,
) -> list[AlertOut]:
    """Alerts with the action taken on each; ``limit`` keeps the newest."""
    items = await run_in_threadpool(store.list_alerts, account_id, since, limit)
    return [alert_out(a) for a in items]


@router.get("/enforcements", response_model=list[EnforcementOut], summary="List the accounts under an action")
async def list_enforcements(_: AdminDep, store: StoreDep, all: bool = False) -> list[EnforcementOut]:
    """Accounts that are flagged, throttled, under review or blocked (``all``: cleared and lapsed ones too)."""
    items = await run_in_threadpool(store.list_enforcements, not all)
    return [enforcement_out(e.account_id, e) for e in items]


@router.get(
    "/accounts/{account_id}/enforcement",
    response_model=EnforcementOut,
    responses=_NOT_FOUND,
    summary="An account's enforcement state",
)
async def get_enforcement(account_id: str, _: AdminDep, store: StoreDep) -> EnforcementOut:
    await _known_account(store, account_id)
    return enforcement_out(account_id, await run_in_threadpool(store.get_enforcement, account_id))


@router.post(
    "/accounts/{account_id}/enforcement/clear",
    response_model=EnforcementOut,
    responses=_NOT_FOUND,
    summary="Clear an account's enforcement (restores access; recorded in the audit log)",
)
async def clear_enforcement(account_id: str, _: AdminDep, store: StoreDep, gw: GatewayDep) -> EnforcementOut:
    await _known_account(store, account_id)
    if gw.monitoring is not None:
        await run_in_threadpool(gw.monitoring.clear, account_id, "admin")
    else:  # enforcement is off on this replica; the state is still the one others enforce
        policy = await run_in_threadpool(Policy.load, gw.settings.policy_file)
        await run_in_threadpool(Enforcer(store, policy).clear, account_id, "admin")
    return enforcement_out(account_id, await run_in_threadpool(store.get_enforcement, account_id))
