"""The admin API: accounts and their API keys. Every route needs the admin token (``ANTIDISTILL_ADMIN_TOKEN``).

Accounts are not deleted (their audit records refer to them): disable one instead. A new API key is returned
once, in the response that creates it; afterwards only its id, prefix and dates are shown.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from antidistill.gateway.deps import AdminDep, StoreDep
from antidistill.gateway.errors import APIError
from antidistill.gateway.schemas import (
    AccountCreate,
    AccountCreated,
    AccountOut,
    AccountUpdate,
    ApiKeyOut,
    ErrorResponse,
    KeyCreated,
)
from antidistill.store.api import Account, AccountStore, ApiKeyInfo

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    responses={401: {"model": ErrorResponse, "description": "Missing or wrong admin token."}},
)
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "No such account."}}
MAX_ID_CHARS = 200


def account_out(a: Account) -> AccountOut:
    return AccountOut(
        id=a.id,
        name=a.name,
        enabled=a.enabled,
        rpm=a.rpm,
        tpm=a.tpm,
        tokens_per_day=a.tokens_per_day,
        metadata=dict(a.metadata or {}),
        created_at=a.created_at,
    )


def key_out(k: ApiKeyInfo) -> ApiKeyOut:
    return ApiKeyOut(
        id=k.id, account_id=k.account_id, prefix=k.prefix, created_at=k.created_at, revoked_at=k.revoked_at
    )


async def _account(store: AccountStore, account_id: str) -> Account:
    account: Account | None = None
    if len(account_id) <= MAX_ID_CHARS:
        account = await run_in_threadpool(store.get_account, account_id)
    if account is None:
        raise APIError(
            404, f"no account with id {account_id[:MAX_ID_CHARS]!r}", param="account_id", code="account_not_found"
        )
    return account


@router.post(
    "/accounts", status_code=201, response_model=AccountCreated, summary="Create an account and its first API key"
)
async def create_account(body: AccountCreate, _: AdminDep, store: StoreDep) -> AccountCreated:
    try:
        account, plaintext, info = await run_in_threadpool(
            store.create_account,
            body.name,
            rpm=body.rpm,
            tpm=body.tpm,
            tokens_per_day=body.tokens_per_day,
            metadata=body.metadata,
        )
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
    return AccountCreated(account=account_out(account), key=key_out(info), api_key=plaintext)


@router.get("/accounts", response_model=list[AccountOut], summary="List accounts")
async def list_accounts(_: AdminDep, store: StoreDep) -> list[AccountOut]:
    return [account_out(a) for a in await run_in_threadpool(store.list_accounts)]


@router.get("/accounts/{account_id}", response_model=AccountOut, responses=_NOT_FOUND, summary="Get an account")
async def get_account(account_id: str, _: AdminDep, store: StoreDep) -> AccountOut:
    return account_out(await _account(store, account_id))


async def _set_enabled(store: AccountStore, account_id: str, enabled: bool) -> AccountOut:
    await _account(store, account_id)
    await run_in_threadpool(store.set_enabled, account_id, enabled)
    return account_out(await _account(store, account_id))


@router.patch(
    "/accounts/{account_id}", response_model=AccountOut, responses=_NOT_FOUND, summary="Enable or disable an account"
)
async def update_account(account_id: str, body: AccountUpdate, _: AdminDep, store: StoreDep) -> AccountOut:
    return await _set_enabled(store, account_id, body.enabled)


@router.post(
    "/accounts/{account_id}/disable",
    response_model=AccountOut,
    responses=_NOT_FOUND,
    summary="Disable an account (its requests get 403)",
)
async def disable_account(account_id: str, _: AdminDep, store: StoreDep) -> AccountOut:
    return await _set_enabled(store, account_id, False)


@router.post(
    "/accounts/{account_id}/enable", response_model=AccountOut, responses=_NOT_FOUND, summary="Enable an account"
)
async def enable_account(account_id: str, _: AdminDep, store: StoreDep) -> AccountOut:
    return await _set_enabled(store, account_id, True)


@router.get(
    "/accounts/{account_id}/keys",
    response_model=list[ApiKeyOut],
    responses=_NOT_FOUND,
    summary="List an account's API keys",
)
async def list_keys(account_id: str, _: AdminDep, store: StoreDep) -> list[ApiKeyOut]:
    await _account(store, account_id)
    return [key_out(k) for k in await run_in_threadpool(store.list_keys, account_id)]


@router.post(
    "/accounts/{account_id}/keys",
    status_code=201,
    response_model=KeyCreated,
    responses=_NOT_FOUND,
    summary="Issue a new API key",
)
async def issue_key(account_id: str, _: AdminDep, store: StoreDep) -> KeyCreated:
    await _account(store, account_id)
    info, plaintext = await run_in_threadpool(store.issue_key, account_id)
    return KeyCreated(key=key_out(info), api_key=plaintext)


@router.delete(
    "/accounts/{account_id}/keys/{key_id}",
    response_model=ApiKeyOut,
    responses={404: {"model": ErrorResponse, "description": "No such account or key."}},
    summary="Revoke an API key",
)
async def revoke_key(account_id: str, key_id: str, _: AdminDep, store: StoreDep) -> ApiKeyOut:
    await _account(store, account_id)
    keys = await run_in_threadpool(store.list_keys, account_id)
    if not any(k.id == key_id for k in keys):
        raise APIError(
            404, f"account {account_id!r} has no key {key_id[:MAX_ID_CHARS]!r}", param="key_id", code="key_not_found"
        )
    await run_in_threadpool(store.revoke_key, key_id)
    keys = await run_in_threadpool(store.list_keys, account_id)
    return key_out(next(k for k in keys if k.id == key_id))
