"""``antidistill accounts …`` and ``antidistill audit …``: typer sub-apps registered by :mod:`antidistill.cli`.

Errors are raised as :class:`~antidistill.errors.AntidistillError` (one line, exit 2 from the main CLI); a
failed ``audit verify`` prints what is wrong and exits 1. SQLAlchemy is imported only when a command runs, so
``antidistill --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Column, Table

from antidistill.errors import InputError

if TYPE_CHECKING:
    from antidistill.store.api import Account, ApiKeyInfo
    from antidistill.store.sql import Store

accounts_app = typer.Typer(help="Customer accounts and their API keys.", no_args_is_help=True)
account_keys_app = typer.Typer(help="Issue, revoke and list an account's API keys.", no_args_is_help=True)
accounts_app.add_typer(account_keys_app, name="keys")
audit_app = typer.Typer(help="The tamper-evident audit log: verify and export.", no_args_is_help=True)

out = Console(highlight=False, soft_wrap=True)  # ids and hashes must stay whole on one line

DbOpt = Annotated[
    str | None,
    typer.Option("--database-url", help="Database URL (default: ANTIDISTILL_DATABASE_URL, else the SQLite file "
                                        "in the data directory).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def _open(database_url: str | None) -> Store:
    from antidistill.settings import get_settings
    from antidistill.store.sql import Store

    return Store.open(database_url, get_settings())


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")


def _account_dict(a: Account) -> dict[str, Any]:
    return {"id": a.id, "name": a.name, "enabled": a.enabled, "rpm": a.rpm, "tpm": a.tpm,
            "tokens_per_day": a.tokens_per_day, "metadata": a.metadata, "created_at": a.created_at.isoformat()}


def _key_dict(k: ApiKeyInfo) -> dict[str, Any]:
    return {"id": k.id, "account_id": k.account_id, "prefix": k.prefix, "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}


def _limit(v: int | None) -> str:
    return "-" if v is None else str(v)


# ---- accounts -------------------------------------------------------------------------------------------
@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument(help="Display name of the account.")],
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute (default: unlimited).")
                   ] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute (default: unlimited).")] = None,
    tokens_per_day: Annotated[int | None, typer.Option("--tokens-per-day", min=1,
                                                       help="Tokens per day (default: unlimited).")] = None,
    org: Annotated[str | None, typer.Option("--org", help="Organisation (the monitor links accounts on it).")
                   ] = None,
    payment_fingerprint: Annotated[str | None, typer.Option("--payment-fingerprint",
                                                            help="Payment method fingerprint.")] = None,
    signup_source: Annotated[str | None, typer.Option("--signup-source", help="Where the account signed up.")
                             ] = None,
    as_json: JsonOpt = False,
    database_url: DbOpt = None,
) -> None:
    """Create an account and print its id and a new API key (shown only this once)."""
    metadata = {k: v for k, v in (("organisation", org), ("payment_fingerprint", payment_fingerprint),
                                  ("signup_source", signup_source)) if v is not None}
    with _open(database_url) as store:
        try:
            account, api_key, key = store.create_account(name, rpm=rpm, tpm=tpm, tokens_per_day=tokens_per_day,
                                                         metadata=metadata)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    if as_json:
        _print_json({"account_id": account.id, "api_key": api_key, "key_id": key.id})
        return
    out.print(f"account: {account.id}", markup=False)
    out.print(f"api key: {api_key}", markup=False)
    out.print("the API key is shown only once; store it now", style="yellow")


@accounts_app.command("list")
def accounts_list(as_json: JsonOpt = False, database_url: DbOpt = None) -> None:
    """Every account with its limits."""
    with _open(database_url) as store:
        items = store.list_accounts()
    if as_json:
        _print_json([_account_dict(a) for a in items])
        return
    if not items:
        out.print("no accounts")
        return
    # Nothing is cut off (fold, never "…"): ids and limits are copied from here.
    table = Table(Column("id", no_wrap=True, min_width=29), Column("name", overflow="fold"), "enabled",
                  Column("rpm/tpm/day", overflow="fold"), Column("organisation", overflow="fold"), box=box.SIMPLE_HEAD)
    for a in items:
        limits = "/".join(_limit(v) for v in (a.rpm, a.tpm, a.tokens_per_day))
        table.add_row(a.id, a.name, "yes" if a.enabled else "no", limits, str(a.metadata.get("organisation", "")))
    out.print(table)


def _set_enabled(account_id: str, enabled: bool, database_url: str | None) -> None:
    with _open(database_url) as store:
        account = store.set_enabled(account_id, enabled)
    out.print(f"account {account.id} {'enabled' if account.enabled else 'disabled'}", markup=False)


@accounts_app.command("disable")
def accounts_disable(account_id: Annotated[str, typer.Argument(help="Account id (acct_…).")],
                     database_url: DbOpt = None) -> None:
    """Disable an account: its requests are refused (403) until it is enabled again."""
    _set_enabled(account_id, False, database_url)


@accounts_app.command("enable")
def accounts_enable(account_id: Annotated[str, typer.Argument(help="Account id (acct_…).")],
                    database_url: DbOpt = None) -> None:
    """Enable a disabled account."""
    _set_enabled(account_id, True, database_url)


@account_keys_app.command("issue")
def keys_issue(account_id: Annotated[str, typer.Argument(help="Account id (acct_…).")], as_json: JsonOpt = False,
               database_url: DbOpt = None) -> None:
    """Issue a new API key for an account (shown only this once)."""
    with _open(database_url) as store:
        key, api_key = store.issue_key(account_id)
    if as_json:
        _print_json({"account_id": key.account_id, "key_id": key.id, "api_key": api_key})
        return
    out.print(f"key id: {key.id}", markup=False)
    out.print(f"api key: {api_key}", markup=False)
    out.print("the API key is shown only once; store it now", style="yellow")


@account_keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="API key id (key_…).")],
                database_url: DbOpt = None) -> None:
    """Revoke an API key: requests with it are refused (401)."""
    with _open(database_url) as store:
        key = store.revoke_key(key_id)
    out.print(f"key {key.id} revoked", markup=False)


@account_keys_app.command("list")
def keys_list(account_id: Annotated[str, typer.Argument(help="Account id (acct_…).")], as_json: JsonOpt = False,
              database_url: DbOpt = None) -> None:
    """An account's API keys (ids and display prefixes; the keys themselves are never stored)."""
    with _open(database_url) as store:
        keys = store.list_keys(account_id)
    if as_json:
        _print_json([_key_dict(k) for k in keys])
        return
    table = Table(Column("id", no_wrap=True, min_width=28), Column("prefix", no_wrap=True), "created", "revoked",
                  box=box.SIMPLE_HEAD)
    for k in keys:
        table.add_row(k.id, k.prefix + "…", k.created_at.strftime("%Y-%m-%d %H:%M"),
                      k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "")
    out.print(table)


# ---- audit --------------------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(as_json: JsonOpt = False, database_url: DbOpt = None) -> None:
    """Recompute the hash chain and check every signed checkpoint.

    Exit 0 with a summary if the history is intact; exit 1 naming the first record where it was edited,
    deleted, inserted or reordered.
    """
    with _open(database_url) as store:
        result = store.verify_audit()
    if as_json:
        _print_json({"ok": result.ok, "records": result.records, "checkpoints": result.checkpoints,
                     "first_bad_seq": result.first_bad_seq, "first_bad_response_id": result.first_bad_response_id,
                     "problem": result.problem, "details": result.details})
    elif result.ok:
        d = result.details
        signer = d.get("public_key") or "-"
        checked = "this installation's key" if d.get("public_key_checked") else "not compared: no master key here"
        out.print(f"audit log OK: {result.records} records, {result.checkpoints} signed checkpoints, "
                  f"{d.get('unsigned_tail', 0)} records after the last checkpoint", markup=False)
        out.print(f"head: seq {d.get('head_seq')} hash {d.get('head_hash')}", markup=False)
        out.print(f"signer: {signer} ({checked})", markup=False)
    else:
        rid = f" (response {result.first_bad_response_id})" if result.first_bad_response_id else ""
        out.print(f"audit log FAILED at record {result.first_bad_seq}{rid}: {result.problem}", markup=False)
        out.print(f"{result.records} records and {result.checkpoints} checkpoints verified before it", markup=False)
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.", dir_okay=False)],
    fmt: Annotated[str, typer.Option("--format", help="jsonl (exact, re-hashable) or parquet (analysis).")
                   ] = "jsonl",
    database_url: DbOpt = None,
) -> None:
    """Write the whole audit log to a file, streaming."""
    if fmt not in ("jsonl", "parquet"):
        raise InputError(f"--format must be jsonl or parquet, got {fmt!r}")
    if not output.parent.is_dir():
        raise InputError(f"directory not found: {output.parent}")
    with _open(database_url) as store:
        try:
            n = store.export_audit(output, fmt)  # type: ignore[arg-type]
        except OSError as exc:
            raise InputError(f"cannot write {output}: {exc.strerror}") from None
    print_err = Console(stderr=True, highlight=False)
    print_err.print(f"{n} records written to {output}", markup=False)
