"""Stages 2-3 on a fake model (fast): a completion too short to test never aborts, and the checks still bite;
then on the real model under several master keys (slow)."""

from __future__ import annotations

import hashlib

import pytest

from antidistill.demo.checks import DEMO_MIN_PAIRS, Check, demo_detector
from antidistill.demo.context import SERVE_TOKENS
from antidistill.demo.stages.detection import detect_served
from antidistill.demo.stages.serve import PROMPTS, demo_rows, serve
from antidistill.keys import KeyRing
from antidistill.settings import get_settings
from tests.demo.fakes import FakeModel, fake_ring, make_ctx, output


def run_early_stages(lm, ring, work, rows=None, max_tokens=SERVE_TOKENS):
    ctx = make_ctx(work, max_tokens)
    td = demo_detector(lm, ring, PROMPTS)
    served = serve(ctx, lm, ring, td, rows or demo_rows(2, 2))
    checks = detect_served(ctx, td, served).checks
    return served, checks, output(ctx)


@pytest.fixture
def ring():
    return fake_ring()


def failed(checks: tuple[Check, ...]) -> list[str]:
    return [c.label for c in checks if not c.ok]


def test_early_stages_pass_on_a_working_watermark(ring, tmp_path):
    served, checks, out = run_early_stages(FakeModel(), ring, tmp_path)
    assert served.regenerated == [] and len(checks) >= 7
    assert failed(checks) == [], out
    assert "4 of 4 marked completions long enough to test" in out


def test_a_looping_completion_is_generated_again(ring, tmp_path):
    bob = demo_rows(2, 2)[2]
    assert bob[1] == "bob"
    lm = FakeModel(loops={bob[2]: 1})
    served, checks, out = run_early_stages(lm, ring, tmp_path)
    assert served.regenerated == [2] and served.pairs[2] >= DEMO_MIN_PAIRS
    assert lm.calls == [6, 1]  # the batch, then the one row again
    assert failed(checks) == [], out
    assert "generated again" in out


def test_a_completion_that_stays_too_short_is_counted_apart_not_an_abort(ring, tmp_path):
    bob = demo_rows(2, 2)[2]
    lm = FakeModel(loops={bob[2]: -1})
    served, checks, out = run_early_stages(lm, ring, tmp_path)  # the old demo raised InputError here
    assert served.pairs[2] < 16 and lm.calls == [6, 1, 1]
    assert failed(checks) == [], out
    assert "too short" in out and "not tested" in out
    assert "3 of 4 marked completions long enough to test" in out


def test_checks_fail_when_the_watermark_does_not_work(ring, tmp_path):
    _, checks, _ = run_early_stages(FakeModel(marks_work=False), ring, tmp_path)
    bad = failed(checks)
    assert {"alice: its 2 texts together attributed to it", "bob: its 2 texts together attributed to it"} <= set(bad)
    assert "most marked completions detected" in bad


def test_checks_fail_when_most_marked_completions_cannot_be_tested(ring, tmp_path):
    rows = demo_rows(2, 2)
    lm = FakeModel(loops={p: -1 for _, a, p in rows if a})
    _, checks, out = run_early_stages(lm, ring, tmp_path)
    assert "most marked completions long enough to test" in failed(checks), out


# ---- stages 1-3 on the real model under several master keys (which completion loops depends on the key) --------
@pytest.mark.slow
@pytest.mark.parametrize("key", [2, 4, 6, 9])  # 9: alice's first try was too repetitive and is generated again
def test_early_stages_pass_under_several_master_keys(key, local_model, monkeypatch, tmp_path):
    monkeypatch.setenv("ANTIDISTILL_MASTER_KEY", hashlib.sha256(f"demo-master-key-{key}".encode()).hexdigest())
    get_settings.cache_clear()
    ring = KeyRing.open(get_settings())  # the installation's keys, as `antidistill demo` opens them
    served, checks, out = run_early_stages(local_model, ring, tmp_path, demo_rows(2, 1))  # the quick demo's rows
    assert len(served.completions) == 5
    assert failed(checks) == [], out
    assert "4 of 4 marked completions long enough to test" in out
