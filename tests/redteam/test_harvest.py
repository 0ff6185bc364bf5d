"""Harvesting through the real gateway (uvicorn, fake backend, SQLite store) with the openai SDK."""

from __future__ import annotations

import json

import pytest

from antidistill.errors import InputError
from antidistill.redteam.harvest import Harvester, done_prompts, generate_prompts, harvest, load_prompts

from .conftest import make_gateway_app, run_cli

FIELDS = {"prompt", "response", "model", "response_id", "usage", "finish_reason"}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_generated_prompts_are_distinct_and_seeded():
    a = generate_prompts(300, seed=1)
    assert len(set(a)) == 300
    assert a == generate_prompts(300, seed=1) and a != generate_prompts(300, seed=2)
    assert generate_prompts(10, seed=1) == a[:10]  # a prefix of the same order
    with pytest.raises(ValueError, match="n must be in"):
        generate_prompts(10**6)


def test_load_prompts_txt_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first\n\nsecond\nfirst\n", encoding="utf-8")
    assert load_prompts(txt) == ["first", "second"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('"a"\n{"prompt": "b", "x": 1}\n', encoding="utf-8")
    assert load_prompts(jl) == ["a", "b"]
    jl.write_text('{"prompt": 3}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 1"):
        load_prompts(jl)


def test_harvest_writes_records_the_gateway_audited(gateway, tmp_path):
    prompts = generate_prompts(12, seed=3)
    out = tmp_path / "pairs.jsonl"
    res = harvest(prompts, out, base_url=gateway.v1, api_key=gateway.api_key, max_tokens=24, concurrency=3)
    assert (res.requested, res.skipped, res.written, res.failed) == (12, 0, 12, 0)
    assert res.model == "antidistill-fake"
    recs = read_jsonl(out)
    assert sorted(r["prompt"] for r in recs) == sorted(prompts)
    assert all(set(r) == FIELDS for r in recs)
    assert all(r["response"] and r["finish_reason"] in ("stop", "length") for r in recs)
    assert res.completion_tokens == sum(r["usage"]["completion_tokens"] for r in recs) > 0
    # every record is an exchange of the attacker's account in the gateway's audit log
    audit = {row["response_id"]: row for row in gateway.store.iter_audit()}
    for r in recs:
        row = audit[r["response_id"]]
        assert row["account_id"] == gateway.account_id
        assert row["completion"] == [r["response"]]
        assert row["request"]["messages"] == [{"role": "user", "content": r["prompt"]}]
        assert row["request"]["max_tokens"] == 24


def test_resume_after_interruption_and_a_torn_last_line(gateway, tmp_path):
    prompts = generate_prompts(15, seed=4)
    out = tmp_path / "pairs.jsonl"

    def interrupt(done, total):
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        harvest(prompts, out, base_url=gateway.v1, api_key=gateway.api_key, concurrency=2, on_progress=interrupt)
    first = read_jsonl(out)  # every line written is complete (fsynced before the interrupt propagated)
    assert len(first) == 5
    with open(out, "a", encoding="utf-8") as f:  # a crash in the middle of a write
        f.write('{"prompt": "torn", "respo')
    asked_before = len(gateway.backend.requests)
    res = harvest(prompts, out, base_url=gateway.v1, api_key=gateway.api_key, concurrency=2)
    assert (res.skipped, res.written) == (5, 10)
    assert len(gateway.backend.requests) - asked_before == 10  # nothing answered twice
    recs = read_jsonl(out)
    assert sorted(r["prompt"] for r in recs) == sorted(prompts)
    assert recs[:5] == first
    again = harvest(prompts, out, base_url=gateway.v1, api_key=gateway.api_key)
    assert (again.skipped, again.written) == (15, 0)
    assert done_prompts(out) == set(prompts)


def test_a_foreign_file_is_not_appended_to(gateway, tmp_path):
    out = tmp_path / "other.jsonl"
    out.write_text('{"text": "not ours"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 1 is not a harvest record"):
        harvest(["hi"], out, base_url=gateway.v1, api_key=gateway.api_key)


class FlakyFront:
    """ASGI middleware in front of the real gateway: the first ``n`` chat requests get ``status`` (with the given
    headers) instead of reaching it."""

    def __init__(self, app, n: int, status: int, headers: dict[str, str]):
        self.app, self.left, self.status, self.headers = app, n, status, headers
        self.refused = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions") and self.left > 0:
            self.left -= 1
            self.refused += 1
            body = json.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}}).encode()
            headers = [(b"content-type", b"application/json")]
            headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
            await send({"type": "http.response.start", "status": self.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


@pytest.mark.parametrize(
    ("status", "headers", "expected_wait"),
    [
        (429, {"Retry-After": "7"}, 7.0),
        (429, {"Retry-After": "120"}, 60.0),  # capped at max_wait
        (503, {}, None),  # no Retry-After: exponential backoff
    ],
)
def test_retries_honour_retry_after(tmp_path, status, headers, expected_wait):
    from antidistill.gateway.server import BackgroundServer

    app, store, _backend, api_key, _ = make_gateway_app(tmp_path / "gw")
    front = FlakyFront(app, 3, status, headers)
    waits: list[float] = []
    try:
        with (
            BackgroundServer(front) as srv,
            Harvester(srv.url + "/v1", api_key, model="antidistill-fake", sleep=waits.append) as h,
        ):
            res = h.run(["one", "two"], tmp_path / "out.jsonl", concurrency=1)
    finally:
        store.close()
    assert front.refused == 3
    assert (res.written, res.failed, res.retries) == (2, 0, 3)
    assert len(waits) == 3
    if expected_wait is None:
        assert all(0 < w <= 4 for w in waits)
    else:
        assert waits == [expected_wait] * 3
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 2


def test_real_rate_limit_gives_up_after_max_retries(tmp_path):
    """The gateway's own limiter (2 requests a minute): its Retry-After is honoured, and a prompt still refused
    after the retries is counted as failed, not written (a later run asks it again)."""
    from antidistill.gateway.server import BackgroundServer

    app, store, _backend, api_key, _ = make_gateway_app(tmp_path / "gw", rpm=2)
    waits: list[float] = []
    try:
        with (
            BackgroundServer(app) as srv,
            Harvester(srv.url + "/v1", api_key, model="antidistill-fake", max_retries=2, sleep=waits.append) as h,
        ):
            res = h.run(["a", "b", "c"], tmp_path / "out.jsonl", concurrency=1)
    finally:
        store.close()
    assert (res.written, res.failed, res.retries) == (2, 1, 2)
    assert len(waits) == 2 and all(1 <= w <= 60 for w in waits)
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 2


def test_refused_key_is_one_clear_error(gateway, tmp_path, capsys):
    with pytest.raises(InputError, match=r"refused the API key \(401\)"):
        harvest(["hi"], tmp_path / "x.jsonl", base_url=gateway.v1, api_key="sk-wrong")
    code, _out, err = run_cli(
        capsys,
        "distill",
        "harvest",
        "--base-url",
        gateway.v1,
        "--api-key",
        "sk-wrong",
        "--generate",
        "3",
        "--out",
        str(tmp_path / "x.jsonl"),
    )
    assert code == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "refused the API key (401)" in lines[0]


def test_cli_harvest_json(gateway, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    argv = [
        "distill",
        "harvest",
        "--base-url",
        gateway.v1,
        "--api-key",
        gateway.api_key,
        "--generate",
        "6",
        "--out",
        str(out),
        "--max-tokens",
        "16",
        "--concurrency",
        "2",
        "--json",
    ]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["written"], summary["skipped"], summary["failed"]) == (6, 0, 0)
    assert len(read_jsonl(out)) == 6
    code, stdout, _ = run_cli(capsys, *argv)
    assert code == 0 and json.loads(stdout)["skipped"] == 6
    code, _, err = run_cli(capsys, "distill", "harvest", "--base-url", gateway.v1, "--api-key", "k", "--out", str(out))
    assert code == 2 and "exactly one of --prompts" in err


def test_cli_harvest_progress_on_a_terminal(gateway, tmp_path, capsys, monkeypatch):
    import io

    from rich.console import Console

    from antidistill.cli import distill as redteam_cli

    screen = io.StringIO()
    monkeypatch.setattr(redteam_cli, "err", Console(file=screen, force_terminal=True, highlight=False, width=200))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\nthree\n", encoding="utf-8")
    code, _, err = run_cli(
        capsys,
        "distill",
        "harvest",
        "--base-url",
        gateway.v1,
        "--api-key",
        gateway.api_key,
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "pairs.jsonl"),
    )
    assert code == 0, err
    assert "harvesting" in screen.getvalue()  # the progress bar
    assert "3 new pairs (0 already there, 0 failed, 0 retries)" in screen.getvalue()
    assert len(read_jsonl(tmp_path / "pairs.jsonl")) == 3
