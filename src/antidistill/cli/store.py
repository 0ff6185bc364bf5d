"""``antidistill accounts …`` and ``antidistill audit …``: typer sub-apps registered by :mod:`antidistill.cli`.

Errors are raised as :class:`~antidistill.errors.AntidistillError` (one line, exit 2 from the main CLI); a
failed ``audit verify`` prints what is wrong and exits 1. SQLAlchemy is imported only when a command runs, so
``antidistill --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Column, Table

from antidistill.cli.options import DbOpt, JsonOpt, print_json
from antidistill.errors import InputError

if TYPE_CHECKING:
    from antidistill.store.api import Account, ApiKeyInfo
    from antidistill.store.chain import SignedHead
    from antidistill.store.sql import Store

accounts_app = typer.Typer(help="Customer accounts and their API keys.", no_args_is_help=True)
account_keys_app = typer.Typer(help="Issue, revoke and list an account's API keys.", no_args_is_help=True)
accounts_app.add_typer(account_keys_app, name="keys")
audit_app = typer.Typer(help="The tamper-evident audit log: verify, anchor and export.", no_args_is_help=True)

out = Console(highlight=False, soft_wrap=True)  # ids and hashes must stay whole on one line


def _open(database_url: str | None) -> Store:
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.settings import get_settings
    from antidistill.store.sql import Store

    return Store.open(database_url, get_settings())


def _account_dict(a: Account) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "enabled": a.enabled,
        "rpm": a.rpm,
        "tpm": a.tpm,
        "tokens_per_day": a.tokens_per_day,
        "metadata": a.metadata,
        "created_at": a.created_at.isoformat(),
    }


def _key_dict(k: ApiKeyInfo) -> dict[str, Any]:
    return {
        "id": k.id,
        "account_id": k.account_id,
        "prefix": k.prefix,
        "created_at": k.created_at.isoformat(),
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
    }


def _limit(v: int | None) -> str:
    return "-" if v is None else str(v)


# ---- accounts -------------------------------------------------------------------------------------------
@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument(help="Display name of the account.")],
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute (default: unlimited).")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute (default: unlimited).")] = None,
    tokens_per_day: Annotated[
        int | None, typer.Option("--tokens-per-day", min=1, help="Tokens per day (default: unlimited).")
    ] = None,
    org: Annotated[str | None, typer.Option("--org", help="Organisation (the monitor links accounts on it).")] = None,
    payment_fingerprint: Annotated[
        str | None, typer.Option("--payment-fingerprint", help="Payment method fingerprint.")
    ] = None,
    signup_source: Annotated[str | None, typer.Option("--signup-source", help="Where the account signed up.")] = None,
    as_json: JsonOpt = False,
    database_url: DbOpt = None,
) -> None:
    """Create an account and print its id and a new API key (shown only this once)."""
    metadata = {
        k: v
        for k, v in (
            ("organisation", org),
            ("payment_fingerprint", payment_fingerprint),
            ("signup_source", signup_source),
        )
        if v is not None
    }
    with _open(database_url) as store:
        try:
            account, api_key, key = store.create_account(
                name, rpm=rpm, tpm=tpm, tokens_per_day=tokens_per_day, metadata=metadata
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None
    if as_json:
        print_json({"account_id": account.id, "api_key": api_key, "key_id": key.id})
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
        print_json([_account_dict(a) for a in items])
        return
    if not items:
        out.print("no accounts")
        return
    # Nothing is cut off (fold, never "…"): ids and limits are copied from here.
    table = Table(
        Column("id", no_wrap=True, min_width=29),
        Column("name", overflow="fold"),
        "enabled",
        Column("rpm/tpm/day", overflow="fold"),
        Column("organisation", overflow="fold"),
        box=box.SIMPLE_HEAD,
    )
    for a in items:
        limits = "/".join(_limit(v) for v in (a.rpm, a.tpm, a.tokens_per_day))
        table.add_row(a.id, a.name, "yes" if a.enabled else "no", limits, str(a.metadata.get("organisation", "")))
    out.print(table)


def _set_enabled(account_id: str, enabled: bool, database_url: str | None) -> None:
    with _open(database_url) as store:
        account = store.set_enabled(account_id, enabled)
    out.print(f"account {account.id} {'enabled' if account.enabled else 'disabled'}", markup=False)


@accounts_app.command("disable")
def accounts_disable(
    account_id: Annotated[str, typer.Argument(help="Account id (acct_…).")], database_url: DbOpt = None
) -> None:
    """Disable an account: its requests are refused (403) until it is enabled again."""
    _set_enabled(account_id, False, database_url)


@accounts_app.command("enable")
def accounts_enable(
    account_id: Annotated[str, typer.Argument(help="Account id (acct_…).")], database_url: DbOpt = None
) -> None:
    """Enable a disabled account."""
    _set_enabled(account_id, True, database_url)


@account_keys_app.command("issue")
def keys_issue(
    account_id: Annotated[str, typer.Argument(help="Account id (acct_…).")],
    as_json: JsonOpt = False,
    database_url: DbOpt = None,
) -> None:
    """Issue a new API key for an account (shown only this once)."""
    with _open(database_url) as store:
        key, api_key = store.issue_key(account_id)
    if as_json:
        print_json({"account_id": key.account_id, "key_id": key.id, "api_key": api_key})
        return
    out.print(f"key id: {key.id}", markup=False)
    out.print(f"api key: {api_key}", markup=False)
    out.print("the API key is shown only once; store it now", style="yellow")


@account_keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="API key id (key_…).")], database_url: DbOpt = None) -> None:
    """Revoke an API key: requests with it are refused (401)."""
    with _open(database_url) as store:
        key = store.revoke_key(key_id)
    out.print(f"key {key.id} revoked", markup=False)


@account_keys_app.command("list")
def keys_list(
    account_id: Annotated[str, typer.Argument(help="Account id (acct_…).")],
    as_json: JsonOpt = False,
    database_url: DbOpt = None,
) -> None:
    """An account's API keys (ids and display prefixes; the keys themselves are never stored)."""
    with _open(database_url) as store:
        keys = store.list_keys(account_id)
    if as_json:
        print_json([_key_dict(k) for k in keys])
        return
    table = Table(
        Column("id", no_wrap=True, min_width=28),
        Column("prefix", no_wrap=True),
        "created",
        "revoked",
        box=box.SIMPLE_HEAD,
    )
    for k in keys:
        table.add_row(
            k.id,
            k.prefix + "…",
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
        )
    out.print(table)


# ---- audit --------------------------------------------------------------------------------------------
#: longest anchor read from a file, standard input or a URL (a real one is about 400 bytes)
MAX_ANCHOR_BYTES = 64 * 1024


def _is_url(where: str) -> bool:
    return where.startswith(("http://", "https://"))


def _read_anchor(where: str) -> SignedHead:
    """An anchor from a file, ``-`` (standard input) or an http(s) URL; one plain line if it cannot be had."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.store.chain import SignedHead

    if where == "-":
        data = sys.stdin.buffer.read(MAX_ANCHOR_BYTES + 1)
    elif _is_url(where):
        import httpx

        try:
            r = httpx.get(where, timeout=30, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise InputError(f"cannot fetch the anchor from {where}: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise InputError(f"cannot fetch the anchor from {where}: HTTP {r.status_code}")
        data = r.content
    else:
        path = Path(where)
        if not path.is_file():
            raise InputError(f"anchor file not found: {where}")
        with path.open("rb") as f:
            data = f.read(MAX_ANCHOR_BYTES + 1)
    if len(data) > MAX_ANCHOR_BYTES:
        raise InputError(f"{where} is too large to be an anchor")
    try:
        return SignedHead.from_json(json.loads(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{where} is not a valid audit anchor: {exc}") from None


def _write_anchor(where: str, anchor: SignedHead) -> None:
    text_ = json.dumps(anchor.to_json(), sort_keys=True) + "\n"
    if where == "-":
        sys.stdout.write(text_)
        return
    if _is_url(where):
        # the parts load when the command runs, not for --help (see antidistill.cli)
        import httpx

        try:
            r = httpx.post(
                where, content=text_.encode("utf-8"), timeout=30, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise InputError(f"cannot send the anchor to {where}: {type(exc).__name__}") from None
        if not 200 <= r.status_code < 300:
            raise InputError(f"cannot send the anchor to {where}: HTTP {r.status_code}")
        return
    path = Path(where)
    if not path.parent.is_dir():
        raise InputError(f"directory not found: {path.parent}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:  # written beside, then renamed: a reader never sees half an anchor
        tmp.write_text(text_, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {where}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


@audit_app.command("anchor")
def audit_anchor(
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="Where the signed head goes: a file (checked "
            "against the anchor already there, then replaced), "
            "- for standard output, or an http(s) URL (POSTed).",
        ),
    ],
    database_url: DbOpt = None,
) -> None:
    """Copy the log's signed head out of the database, as a witness would (run it on a schedule).

    `antidistill audit verify --anchor FILE` later fails if the log is shorter than, or disagrees with, the
    anchored head. When FILE already holds an anchor, the log must extend it (checked over the records since it,
    exit 1 otherwise, and the file is left as it was).
    """
    with _open(database_url) as store:
        head = store.audit_head()
        signed = head.signed
        if signed is None or head.seq == 0:
            raise InputError("the audit log is empty: there is no signed head to anchor yet")
        expected = store.expected_public_key()
        if (
            not signed.valid()
            or (signed.seq, signed.hash) != (head.seq, head.hash)
            or (expected is not None and signed.public_key != expected)
        ):
            out.print(
                f"audit anchor FAILED: the head (record {head.seq}) does not carry a valid signature of this "
                "log's key; run `antidistill audit verify`",
                markup=False,
            )
            raise typer.Exit(1)
        previous = None
        if output != "-" and not _is_url(output) and Path(output).is_file():
            previous = _read_anchor(output)
            problem = store.audit_extends(previous)
            if problem is not None:
                out.print(
                    f"audit anchor FAILED: the log does not extend the anchor in {output} (record "
                    f"{previous.seq}): {problem}",
                    markup=False,
                )
                raise typer.Exit(1)
    _write_anchor(output, signed)
    if output != "-":
        since = f", {signed.seq - previous.seq} records since the last anchor" if previous is not None else ""
        Console(stderr=True, highlight=False).print(
            f"anchored record {signed.seq} (hash {signed.hash}){since}", markup=False
        )


@audit_app.command("seal")
def audit_seal(database_url: DbOpt = None) -> None:
    """Sign the head of a log last written before signed heads (once, after an upgrade).

    This trusts the log as it stands: run `antidistill audit verify` first and read what it says. A log whose
    head is signed already is left as it is.
    """
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.store.api import AuditIntegrityError

    with _open(database_url) as store:
        try:
            head = store.seal_unsigned_head()
        except AuditIntegrityError as exc:
            out.print(f"audit seal FAILED: {exc}", markup=False)
            raise typer.Exit(1) from None
    out.print(f"audit log head: record {head.seq}, signed", markup=False)


@audit_app.command("verify")
def audit_verify(
    as_json: JsonOpt = False,
    database_url: DbOpt = None,
    anchor: Annotated[
        str | None,
        typer.Option(
            "--anchor",
            help="An anchor written by `audit anchor` (a file, - "
            "or an http(s) URL): the log must still hold the "
            "history it saw.",
        ),
    ] = None,
) -> None:
    """Recompute the hash chain and check every signature (checkpoints, the signed head, an anchor).

    Exit 0 with a summary if the history is intact; exit 1 naming the first record where it was edited,
    deleted, inserted or reordered, or where it falls short of the anchor.
    """
    anchored = _read_anchor(anchor) if anchor is not None else None
    with _open(database_url) as store:
        result = store.verify_audit(anchor=anchored)
    if as_json:
        print_json(
            {
                "ok": result.ok,
                "records": result.records,
                "checkpoints": result.checkpoints,
                "first_bad_seq": result.first_bad_seq,
                "first_bad_response_id": result.first_bad_response_id,
                "problem": result.problem,
                "details": result.details,
            }
        )
    elif result.ok:
        d = result.details
        signer = d.get("public_key") or "-"
        checked = "this installation's key" if d.get("public_key_checked") else "not compared: no master key here"
        out.print(
            f"audit log OK: {result.records} records, {result.checkpoints} signed checkpoints, "
            f"{d.get('since_checkpoint', 0)} records after the last checkpoint",
            markup=False,
        )
        signed = f", signed {d['head_signed_at']}" if d.get("head_signed_at") else ""
        out.print(f"head: seq {d.get('head_seq')} hash {d.get('head_hash')}{signed}", markup=False)
        if anchored is not None:
            out.print(f"anchor: record {anchored.seq} (signed {d['anchor']['signed_at']}) is in the log", markup=False)
        elif result.records == 0:
            out.print("note: an empty log; only an anchor can tell a new log from one that was reset", markup=False)
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
    fmt: Annotated[str, typer.Option("--format", help="jsonl (exact, re-hashable) or parquet (analysis).")] = "jsonl",
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
