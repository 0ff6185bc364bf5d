"""Sending a plan through a running gateway with the ``openai`` SDK, and writing the ground truth beside it.

Many worker threads, each with its own SDK client (connection reuse), take requests from one queue in the
plan's order, so the traffic reaches the gateway in roughly virtual-time order. Each request carries:

* the account's API key (``Authorization``),
* its virtual time in ``X-Antidistill-Clock`` (the gateway writes it into the audit record when
  ``ANTIDISTILL_ACCEPT_CLIENT_CLOCK`` is on),
* its client address in ``X-Forwarded-For`` (recorded when ``ANTIDISTILL_TRUST_FORWARDED_FOR`` is on),
* its user agent.

A later turn of a conversation waits for the answer to the turn before and carries it, as a chat client would.

Example:
    >>> from antidistill.simulate.scenario import Scenario
    >>> plan = Scenario.from_scale("small", seed=0).build()
    >>> result = drive(plan, "http://127.0.0.1:8000", keys)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import ssl
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

from antidistill.errors import AntidistillError, InputError
from antidistill.simulate.personas import CHAT, AccountPlan, PlannedRequest
from antidistill.simulate.scenario import Plan
from antidistill.store.api import AccountStore

log = logging.getLogger(__name__)

CLOCK_HEADER = "X-Antidistill-Clock"
#: answer carried in a later turn when the earlier turn got none (it failed)
NO_ANSWER = "(no answer)"


class SimulationError(AntidistillError):
    """The simulation cannot go on (the gateway is unreachable, refuses the accounts, …)."""


@dataclass(frozen=True)
class SentRequest:
    """What happened to one planned request."""

    index: int
    account: str
    status: int
    response_id: str | None
    error: str | None = None


@dataclass
class DriveResult:
    """The outcome of :func:`drive`.

    Args:
        sent: one entry per planned request, in plan order.
        wall_s: seconds the sending took.
    """

    sent: list[SentRequest]
    wall_s: float
    status_counts: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.status_counts.get(200, 0)

    @property
    def failed(self) -> int:
        return len(self.sent) - self.ok

    @property
    def requests_per_s(self) -> float:
        return len(self.sent) / self.wall_s if self.wall_s > 0 else 0.0


class _Conversations:
    """Answers of earlier turns, for the later turns that carry them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, int], str] = {}
        self._events: dict[tuple[str, int], threading.Event] = {}

    def _event(self, key: tuple[str, int]) -> threading.Event:
        with self._lock:
            return self._events.setdefault(key, threading.Event())

    def put(self, conv: str, turn: int, answer: str | None) -> None:
        key = (conv, turn)
        with self._lock:
            self._answers[key] = answer if answer else NO_ANSWER
        self._event(key).set()

    def history(self, conv: str, turns: int, timeout: float) -> list[str]:
        out = []
        for k in range(turns):
            self._event((conv, k)).wait(timeout)
            with self._lock:
                out.append(self._answers.get((conv, k), NO_ANSWER))
        return out


def _messages(req: PlannedRequest, convs: _Conversations, timeout: float) -> list[dict[str, Any]]:
    msgs = [dict(m) for m in req.messages or ()]
    pending = [m for m in msgs if m["role"] == "assistant" and m.get("content") is None]
    if pending and req.conversation:
        for m, answer in zip(pending, convs.history(req.conversation, len(pending), timeout), strict=True):
            m["content"] = answer
    for m in pending:
        if m.get("content") is None:
            m["content"] = NO_ANSWER
    return msgs


def _send(
    client: Any, req: PlannedRequest, api_key: str, convs: _Conversations, timeout: float
) -> tuple[int, str | None, str | None]:
    """Send one request; ``(status, response_id, answer_text)``.

    An answer with an error status is recorded as it is, never retried (a throttle's 429 must not stall the
    virtual clock in real time, and the plan is the truth); a failed connection is tried twice more.
    """

    for attempt in range(3):
        try:
            return _send_once(client, req, api_key, convs, timeout)
        except openai.APIStatusError as exc:
            return exc.status_code, None, None
        except openai.APIConnectionError:
            if attempt == 2:
                return 0, None, None
            time.sleep(0.2 * (attempt + 1))
    return 0, None, None


def _send_once(
    client: Any, req: PlannedRequest, api_key: str, convs: _Conversations, timeout: float
) -> tuple[int, str | None, str | None]:
    headers = {
        "Authorization": f"Bearer {api_key}",
        "User-Agent": req.user_agent,
        "X-Forwarded-For": req.client_addr,
        CLOCK_HEADER: f"{req.t:.3f}",
    }
    kw: dict[str, Any] = {"model": req.model, "extra_headers": headers}
    if req.max_tokens is not None:
        kw["max_tokens"] = req.max_tokens
    if req.temperature is not None:
        kw["temperature"] = req.temperature
    if req.endpoint == CHAT:
        kw["messages"] = _messages(req, convs, timeout)
        if req.stream:
            parts: list[str] = []
            rid = None
            with client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw) as s:
                for chunk in s:
                    rid = rid or chunk.id
                    for c in chunk.choices:
                        if c.delta.content:
                            parts.append(c.delta.content)
            return 200, rid, "".join(parts)
        r = client.chat.completions.create(**kw)
        return 200, r.id, r.choices[0].message.content if r.choices else None
    r = client.completions.create(prompt=req.prompt or "", **kw)
    return 200, r.id, r.choices[0].text if r.choices else None


#: connection failures in a row after which a run stops (the gateway is gone)
MAX_CONNECTION_FAILURES = 25


def _drive_threads(
    items: list[tuple[int, PlannedRequest]],
    base: str,
    api_keys: Mapping[str, str],
    concurrency: int,
    timeout: float,
    on_done: Callable[[], None],
) -> dict[int, SentRequest]:
    """Send ``(plan index, request)`` items in their order from ``concurrency`` threads; results by index.

    Raises:
        SimulationError: the gateway stopped answering.
    """

    results: dict[int, SentRequest] = {}
    todo: queue.Queue[tuple[int, PlannedRequest] | None] = queue.Queue(maxsize=concurrency * 4)
    convs = _Conversations()
    lock = threading.Lock()
    stop = threading.Event()
    conn_failures = 0
    # one TLS context for every worker (loading the CA bundle costs ~0.5 s of CPU each time); none for http://
    verify: Any = ssl.create_default_context() if base.startswith("https://") else False

    def worker() -> None:
        nonlocal conn_failures
        http = openai.DefaultHttpxClient(timeout=timeout, verify=verify)
        client = openai.OpenAI(
            api_key="sk-simulator-placeholder", base_url=base, http_client=http, max_retries=0, timeout=timeout
        )
        try:
            while True:
                item = todo.get()
                if item is None:
                    return
                i, req = item
                if stop.is_set():
                    results[i] = SentRequest(i, req.account, 0, None, "not sent")
                    continue
                error = None
                try:
                    status, rid, answer = _send(client, req, api_keys[req.account], convs, timeout)
                except Exception as exc:  # a response the SDK could not read: count it, keep the run going
                    log.warning("request %d failed in the client: %s", i, type(exc).__name__)
                    status, rid, answer, error = -1, None, None, f"{type(exc).__name__}: {exc}"[:200]
                if req.conversation:
                    convs.put(req.conversation, req.turn, answer)
                results[i] = SentRequest(i, req.account, status, rid, error)
                with lock:
                    conn_failures = conn_failures + 1 if status == 0 else 0
                    if conn_failures >= MAX_CONNECTION_FAILURES:
                        stop.set()
                on_done()
        finally:
            client.close()

    threads = [threading.Thread(target=worker, name=f"sim-driver-{k}", daemon=True) for k in range(concurrency)]
    for th in threads:
        th.start()
    try:
        for item in items:
            if stop.is_set():
                results[item[0]] = SentRequest(item[0], item[1].account, 0, None, "not sent")
                continue
            todo.put(item)
    finally:
        for _ in threads:
            todo.put(None)
        for th in threads:
            th.join()
    if stop.is_set():
        raise SimulationError(
            f"the gateway at {base} stopped answering ({MAX_CONNECTION_FAILURES} connection failures in a row)"
        )
    return results


_child_counter: Any = None


def _child_init(counter: Any) -> None:
    global _child_counter
    _child_counter = counter


def _child_count() -> None:
    with _child_counter.get_lock():
        _child_counter.value += 1


def _child_drive(
    items: list[tuple[int, PlannedRequest]], base: str, api_keys: dict[str, str], concurrency: int, timeout: float
) -> dict[int, SentRequest]:
    """One driver process's share (whole accounts, so conversations stay together)."""
    return _drive_threads(items, base, api_keys, concurrency, timeout, _child_count)


def drive(
    plan: Plan,
    base_url: str,
    api_keys: Mapping[str, str],
    *,
    concurrency: int = 16,
    processes: int = 0,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 60.0,
) -> DriveResult:
    """Send every request of ``plan`` to the gateway at ``base_url``.

    Args:
        plan: the built scenario.
        base_url: the gateway (``http://host:port``; ``/v1`` is added).
        api_keys: the API key of every account, by :attr:`AccountPlan.key`.
        concurrency: client threads in all (each with its own SDK client).
        processes: 0 sends from threads of this process; more spreads the accounts over that many driver
            processes, so that the SDK's work does not compete with an in-process gateway for one interpreter.
        progress: called with ``(done, total)`` now and then.
        timeout: seconds one request may take.

    Raises:
        SimulationError: an account has no key, or the gateway stopped answering.
    """
    if not 1 <= concurrency <= 512:
        raise InputError(f"concurrency must be in [1, 512], got {concurrency}")
    if not 0 <= processes <= 64:
        raise InputError(f"processes must be in [0, 64], got {processes}")
    missing = {r.account for r in plan.requests} - set(api_keys)
    if missing:
        raise SimulationError(f"no API key for {len(missing)} planned account(s), e.g. {sorted(missing)[0]}")
    base = base_url.rstrip("/") + "/v1"
    total = len(plan.requests)
    items = list(enumerate(plan.requests))
    t0 = time.perf_counter()
    if processes == 0:
        done = 0
        lock = threading.Lock()
        last = [0.0]

        def tick() -> None:
            nonlocal done
            with lock:
                done += 1
                if progress is not None and time.perf_counter() - last[0] > 0.2:
                    last[0] = time.perf_counter()
                    progress(done, total)

        results = _drive_threads(items, base, api_keys, concurrency, timeout, tick)
    else:
        results = _drive_processes(items, base, api_keys, concurrency, processes, timeout, progress)
    wall = time.perf_counter() - t0
    if progress is not None:
        progress(total, total)
    sent = [results.get(i) or SentRequest(i, r.account, 0, None, "not sent") for i, r in items]
    return DriveResult(sent, wall, dict(Counter(s.status for s in sent)))


def _drive_processes(
    items: list[tuple[int, PlannedRequest]],
    base: str,
    api_keys: Mapping[str, str],
    concurrency: int,
    processes: int,
    timeout: float,
    progress: Callable[[int, int], None] | None,
) -> dict[int, SentRequest]:

    parts: list[list[tuple[int, PlannedRequest]]] = [[] for _ in range(processes)]
    for i, r in items:
        parts[zlib.crc32(r.account.encode()) % processes].append((i, r))
    parts = [p for p in parts if p]
    threads = max(2, -(-concurrency // max(1, len(parts))))
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs a server thread
    counter = ctx.Value("q", 0)
    results: dict[int, SentRequest] = {}
    with ProcessPoolExecutor(len(parts), mp_context=ctx, initializer=_child_init, initargs=(counter,)) as pool:
        futures = [
            pool.submit(_child_drive, part, base, {r.account: api_keys[r.account] for _, r in part}, threads, timeout)
            for part in parts
        ]
        pending = set(futures)
        while pending:
            done_now, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
            if progress is not None:
                progress(counter.value, len(items))
            for f in done_now:
                if f.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise f.exception()  # type: ignore[misc]
        for f in futures:
            results.update(f.result())
    return results


# ---- accounts -------------------------------------------------------------------------------------------------
def account_metadata(a: AccountPlan) -> dict[str, Any]:
    """What the store keeps about an account: its metadata, never its persona or role."""
    return {k: v for k, v in a.metadata.items() if v is not None}


def create_accounts_in_store(store: AccountStore, accounts: list[AccountPlan]) -> dict[str, tuple[str, str]]:
    """Create the plan's accounts (unlimited: the personas keep their own virtual limits) in a store.

    Returns:
        ``{plan key: (account id, api key)}``.
    """
    out = {}
    for a in accounts:
        account, api_key, _ = store.create_account(a.name, metadata=account_metadata(a))
        out[a.key] = (account.id, api_key)
    return out


def create_accounts_via_admin(
    base_url: str, admin_token: str, accounts: list[AccountPlan], timeout: float = 30.0
) -> dict[str, tuple[str, str]]:
    """Create the plan's accounts through a gateway's admin API (``POST /admin/accounts``).

    Raises:
        SimulationError: the gateway is unreachable or refuses (wrong admin token, …).
    """

    out = {}
    headers = {"Authorization": f"Bearer {admin_token}"}
    try:
        with httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout) as http:
            for a in accounts:
                r = http.post("/admin/accounts", json={"name": a.name, "metadata": account_metadata(a)})
                if r.status_code != 201:
                    try:
                        msg = r.json()["error"]["message"]
                    except (ValueError, KeyError, TypeError):
                        msg = r.text[:200]
                    raise SimulationError(f"the gateway refused to create an account ({r.status_code}): {msg}")
                body = r.json()
                out[a.key] = (body["account"]["id"], body["api_key"])
    except httpx.HTTPError as exc:
        raise SimulationError(f"cannot reach the gateway's admin API at {base_url}: {type(exc).__name__}") from None
    return out


# ---- ground truth --------------------------------------------------------------------------------------------
def labels(plan: Plan, ids: Mapping[str, tuple[str, str]], result: DriveResult | None = None) -> list[dict[str, Any]]:
    """One label per account: who it really is (persona, role, campaign), its drawn parameters and its counts."""
    planned = plan.requests_per_account()
    sent = Counter(s.account for s in result.sent) if result else Counter()
    ok = Counter(s.account for s in result.sent if s.status == 200) if result else Counter()
    purposes: dict[str, Counter[str]] = {}
    for r in plan.requests:
        purposes.setdefault(r.account, Counter())[r.purpose] += 1
    out = []
    for a in plan.accounts:
        out.append(
            {
                "account_id": ids[a.key][0] if a.key in ids else None,
                "account_key": a.key,
                "name": a.name,
                "persona": a.persona,
                "role": a.role,
                "campaign": a.campaign,
                "tier": a.tier,
                "limits": a.limits.to_dict(),
                "metadata": a.metadata,
                "params": _jsonable(a.params),
                "requests": planned.get(a.key, 0),
                "sent": sent.get(a.key, 0),
                "ok": ok.get(a.key, 0),
                "purposes": dict(purposes.get(a.key, {})),
            }
        )
    return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def write_outputs(
    out_dir: Path,
    plan: Plan,
    account_labels: list[dict[str, Any]],
    result: DriveResult | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Write ``labels.jsonl``, ``requests.jsonl`` and ``scenario.json`` into ``out_dir``; returns the scenario
    dict. ``requests.jsonl`` ties every planned request (virtual time, account, purpose) to the response id the
    gateway gave it, so the audit log can be joined with the ground truth per exchange."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "labels.jsonl").open("w", encoding="utf-8") as f:
        for row in account_labels:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    ids = {row["account_key"]: row["account_id"] for row in account_labels}
    with (out_dir / "requests.jsonl").open("w", encoding="utf-8") as f:
        for i, r in enumerate(plan.requests):
            s = result.sent[i] if result else None
            f.write(
                json.dumps(
                    {
                        "index": i,
                        "t": r.t,
                        "account_id": ids.get(r.account),
                        "account_key": r.account,
                        "purpose": r.purpose,
                        "model": r.model,
                        "endpoint": r.endpoint,
                        "status": s.status if s else None,
                        "response_id": s.response_id if s else None,
                        "error": s.error if s else None,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    scenario = {**plan.scenario_dict(), **extra}
    (out_dir / "scenario.json").write_text(
        json.dumps(_jsonable(scenario), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return scenario
