"""``antidistill demo``: the helpers of stages 7 and 8 and stages 2-5 on a fake model (fast), stages 1-3 under
several master keys and the quick demo end to end (slow)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from rich.console import Console

from antidistill.demo import (
    DEMO_MIN_PAIRS,
    Check,
    demo_detector,
    demo_rows,
    detect_stage,
    regenerate_short,
    serve_stage,
)
from antidistill.demo_stages import (
    DemoSizes,
    action_history,
    action_points,
    escalated,
    first_status,
    max_levels,
    persona_rows,
    short_id,
    shorten,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FakeAlert:
    account_id: str
    level: str
    action: str
    created_at: datetime


def alerts(*items):
    return [FakeAlert(a, lv, act, T0 + timedelta(seconds=i)) for i, (a, lv, act) in enumerate(items)]


def test_sizes_quick_is_smaller_everywhere():
    full, quick = DemoSizes.for_mode(False), DemoSizes.for_mode(True)
    assert quick.quick and not full.quick
    for f in ("serve_tokens", "gateway_tokens", "harvest", "harvest_tokens", "customer_requests", "closed_prompts"):
        assert getattr(quick, f) <= getattr(full, f), f
    assert quick.harvest * quick.epochs < full.harvest * full.epochs
    assert quick.closed_prompts == 0 < full.closed_prompts
    assert DemoSizes.for_mode(False, max_tokens=64).serve_tokens == 64
    assert DemoSizes.for_mode(True, max_tokens=32).serve_tokens == 32


def test_action_history_and_levels_in_time_order():
    items = list(reversed(alerts(("a", "alert", "throttle"), ("a", "severe", "block"), ("b", "watch", "flag"),
                                 ("b", "alert", "none"))))
    assert action_history(items) == {"a": ["throttle", "block"], "b": ["flag"]}
    assert max_levels(items) == {"a": "severe", "b": "alert"}


def test_escalated_needs_the_order():
    assert escalated(["flag", "throttle", "block"])
    assert not escalated(["block", "throttle"])
    assert not escalated(["block"])
    assert not escalated([])


def test_first_status_counts_the_accounts_requests_only():
    reqs = [{"account_id": "a", "status": 200}, {"account_id": "b", "status": 429}, {"account_id": "a", "status": 200},
            {"account_id": "a", "status": 429}, {"account_id": "a", "status": 403}]
    assert first_status(reqs, "a", 429) == 3
    assert first_status(reqs, "a", 403) == 4
    assert first_status(reqs, "b", 403) is None


def test_action_points_count_exchanges_before_each_action():
    recs = [{"account_id": "a", "endpoint": "/v1/chat/completions"}] * 3 + [
        {"account_id": "a", "endpoint": "monitor:action", "request": {"action": "throttle"}},
        {"account_id": "b", "endpoint": "/v1/chat/completions"},
        {"account_id": "a", "endpoint": "/v1/completions"},
        {"account_id": "a", "endpoint": "monitor:action", "request": {"action": "block"}},
    ]
    assert action_points(recs) == {"a": [("throttle", 3), ("block", 4)]}


def test_persona_rows_aggregate_by_persona():
    labels = [{"account_id": "a1", "persona": "bulk_harvester", "role": "attacker"},
              {"account_id": "c1", "persona": "casual", "role": "benign"},
              {"account_id": "c2", "persona": "casual", "role": "benign"},
              {"account_id": "h1", "persona": "hydra", "role": "attacker"}]
    al = alerts(("a1", "alert", "throttle"), ("a1", "severe", "block"), ("c1", "watch", "flag"),
                ("h1", "alert", "review"))
    reqs = [{"account_id": "a1", "status": 429}, {"account_id": "a1", "status": 403},
            {"account_id": "a1", "status": 403}, {"account_id": "c1", "status": 200}]
    rows = {r.persona: r for r in persona_rows(labels, al, reqs)}
    assert [r.role for r in persona_rows(labels, al, reqs)] == ["benign", "attacker", "attacker"]
    b = rows["bulk_harvester"]
    assert (b.accounts, b.reached_alert, b.throttled, b.blocked, b.refused_429, b.refused_403) == (1, 1, 1, 1, 1, 2)
    c = rows["casual"]
    assert (c.accounts, c.reached_alert, c.throttled, c.blocked) == (2, 0, 0, 0)
    assert rows["hydra"].blocked == 1  # held for review refuses every request too


def test_text_helpers():
    assert short_id("acct_0123456789abcdef") == "acct_01234567…"
    assert short_id("short") == "short"
    assert shorten("a  b\n c") == "a b c"
    assert len(shorten("x" * 200, 20)) == 20


@pytest.mark.slow
def test_quick_demo_end_to_end(capsys, tmp_path, shared_cache_env):
    from antidistill.cli import main

    report = tmp_path / "report"
    try:
        main(["demo", "--quick", "--report-dir", str(report)])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    assert "checks passed" in out and "FAILED" not in out
    for stage in ("7. Watch", "8. Prove"):
        assert stage in out
    evidence = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert evidence["subject"]["kind"] == "account"
    assert (report / "report.html").is_file() and (report / "SHA256SUMS").is_file()


# ---- stages 2-5 on a fake model: a completion too short to test never aborts, and the checks still bite ---------
def test_regenerate_short_keeps_the_longest_try_and_stops_when_enough():
    items, counts = ["a0", "b0", "c0"], [10, 80, 30]
    tries = []

    def redo(indices, attempt):
        tries.append((list(indices), attempt))
        return [f"{'abc'[i]}{attempt}" for i in indices]

    got = {"a1": 5, "c1": 70, "a2": 40}
    again = regenerate_short(items, counts, [64, 64, 64], redo, lambda x: got[x])
    assert again == [0, 2]
    assert tries == [([0, 2], 1), ([0], 2)]  # c was long enough after one try; b was never redone
    assert items == ["a2", "b0", "c1"] and counts == [40, 80, 70]  # a keeps its longest try, still short
    assert regenerate_short(["x"], [99], [64], redo, len) == [] and len(tries) == 2


class WordTokenizer:
    """Text "t12 t7 …" <-> ids [12, 7, …]: the tokenizer interface TextDetector uses, without a model."""

    def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=False):
        ids, offs = [], []
        for t in texts:
            words = list(re.finditer(r"t(\d+)", t))
            ids.append([int(m.group(1)) for m in words])
            offs.append([m.span() for m in words])
        return {"input_ids": ids, "offset_mapping": offs}


@dataclass
class FakeCompletion:
    text: str
    token_ids: list


class FakeModel:
    """Samples like a language model over 512 tokens (tests/synthetic.py), marking each row with its keys.

    ``loops[prompt]``: how many tries of that prompt fall into a repetition loop (-1: every try);
    ``marks_work=False``: the watermark is silently not applied (what the checks must catch).
    """

    vocab_size = 512

    def __init__(self, loops=None, marks_work=True):
        from antidistill.watermark.marker import Watermark

        self.tokenizer = WordTokenizer()
        self.watermark = Watermark()
        self.loops = dict(loops or {})
        self.marks_work = marks_work
        self.calls = []

    def generate(self, prompts, marks, max_new_tokens, min_new_tokens=0, seed=None, **kwargs):
        from tests.synthetic import sample

        self.calls.append(len(prompts))
        out = []
        for i, (prompt, mark) in enumerate(zip(prompts, marks, strict=True)):
            if self.loops.get(prompt, 0) != 0:
                self.loops[prompt] -= 1
                ids = [7, 8, 9] * (max_new_tokens // 3)
            else:
                rng = np.random.default_rng([seed or 0, i, len(prompt)])
                use = mark if (mark is not None and self.marks_work) else None
                ids = sample(rng, self.watermark, use.account if use else None, use.provider if use else None,
                             max_new_tokens, self.vocab_size)[0].tolist()
            out.append(FakeCompletion(" ".join(f"t{t}" for t in ids), ids))
        return out


def run_early_stages(lm, ring, rows=None, max_tokens=160):
    console = Console(file=io.StringIO(), width=200)
    td = demo_detector(lm, ring)
    served = serve_stage(console, lm, ring, td, rows or demo_rows(2, 2), max_tokens, seed=7)
    checks = detect_stage(console, td, served)
    return served, checks, console.file.getvalue()


@pytest.fixture
def ring():
    from antidistill.keys import KeyRing, MasterKey

    return KeyRing(MasterKey(hashlib.sha256(b"demo-fake-model").digest()))


def failed(checks: list[Check]) -> list[str]:
    return [c.label for c in checks if not c.ok]


def test_early_stages_pass_on_a_working_watermark(ring):
    served, checks, out = run_early_stages(FakeModel(), ring)
    assert served.regenerated == [] and len(checks) >= 7
    assert failed(checks) == [], out
    assert "4 of 4 marked completions long enough to test" in out


def test_a_looping_completion_is_generated_again(ring):
    bob = demo_rows(2, 2)[2]
    assert bob[1] == "bob"
    lm = FakeModel(loops={bob[2]: 1})
    served, checks, out = run_early_stages(lm, ring)
    assert served.regenerated == [2] and served.pairs[2] >= DEMO_MIN_PAIRS
    assert lm.calls == [6, 1]  # the batch, then the one row again
    assert failed(checks) == [], out
    assert "generated again" in out


def test_a_completion_that_stays_too_short_is_counted_apart_not_an_abort(ring):
    bob = demo_rows(2, 2)[2]
    lm = FakeModel(loops={bob[2]: -1})
    served, checks, out = run_early_stages(lm, ring)  # the old demo raised InputError ("text too short") here
    assert served.pairs[2] < 16 and lm.calls == [6, 1, 1]
    assert failed(checks) == [], out
    assert "too short" in out and "not tested" in out
    assert "3 of 4 marked completions long enough to test" in out


def test_checks_fail_when_the_watermark_does_not_work(ring):
    _, checks, _ = run_early_stages(FakeModel(marks_work=False), ring)
    bad = failed(checks)
    assert sum(label.startswith(("alice:", "bob:")) for label in bad) == 4
    assert "most marked completions attributed" in bad


def test_checks_fail_when_most_marked_completions_cannot_be_tested(ring):
    rows = demo_rows(2, 2)
    lm = FakeModel(loops={p: -1 for _, a, p in rows if a})
    _, checks, out = run_early_stages(lm, ring)
    assert {"most marked completions long enough to test", "most marked completions attributed"} <= set(
        failed(checks)), out


def test_throwaway_settings_ignore_the_environments_gateway_settings(tmp_path, monkeypatch):
    # stage 6's gateway (and 7-8's) must mark, run no monitor and touch no Redis, whatever the environment says
    from antidistill.demo_stages import _demo_settings
    from antidistill.settings import get_settings

    for name, value in (("WATERMARK", "false"), ("MONITOR", "true"), ("REDIS_URL", "redis://127.0.0.1:1/0"),
                        ("DATABASE_URL", "sqlite:////nonexistent/x.db"), ("MASTER_KEY", "m" * 16 + "n" * 16)):
        monkeypatch.setenv(f"ANTIDISTILL_{name}", value)
    get_settings.cache_clear()
    s = _demo_settings(get_settings(), tmp_path, backend="local")
    assert s.watermark and not s.monitor and s.redis_url is None and s.master_key is None
    assert s.data_dir == tmp_path and s.database_url == f"sqlite:///{(tmp_path / 'antidistill.db').resolve()}"


# ---- stages 1-3 on the real model under several master keys (which completion loops depends on the key) --------
@pytest.mark.slow
@pytest.mark.parametrize("key", [2, 4, 6, 9])  # 9: alice's first try was too repetitive and is generated again
def test_early_stages_pass_under_several_master_keys(key, local_model, monkeypatch):
    from antidistill.keys import KeyRing
    from antidistill.settings import get_settings

    monkeypatch.setenv("ANTIDISTILL_MASTER_KEY", hashlib.sha256(f"demo-master-key-{key}".encode()).hexdigest())
    get_settings.cache_clear()
    ring = KeyRing.open(get_settings())  # the installation's keys, as `antidistill demo` opens them
    served, checks, out = run_early_stages(local_model, ring, demo_rows(1, 1))
    assert len(served.completions) == 3
    assert failed(checks) == [], out
    assert "2 of 2 marked completions long enough to test" in out
