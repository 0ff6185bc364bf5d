"""Stages 4-5 on a fake model: the human-text controls pass on unmarked text and fail on marked text; a marked
completion hidden between two unmarked texts is found where it is."""

from __future__ import annotations

import pytest

from antidistill.demo.checks import demo_detector
from antidistill.demo.stages import controls
from antidistill.demo.stages.controls import human_controls
from antidistill.demo.stages.mixed import mixed_text
from antidistill.demo.stages.serve import PROMPTS, demo_rows, serve
from antidistill.watermark.marker import MarkKeys
from tests.demo.fakes import FakeModel, fake_ring, make_ctx, output

PLAIN = [f"prompt number {i}" + "." * i for i in range(8)]


def texts(lm, ring, marked: bool) -> list[str]:
    marks = [MarkKeys(ring.account_key("alice"), ring.provider_key()) if marked else None] * len(PLAIN)
    return [c.text for c in lm.generate(PLAIN, marks, max_new_tokens=160, seed=3)]


@pytest.fixture
def setup(tmp_path):
    lm, ring = FakeModel(), fake_ring()
    return make_ctx(tmp_path), lm, ring, demo_detector(lm, ring, PROMPTS)


def test_unmarked_text_passes_the_controls_and_a_hidden_marked_passage_is_found(setup, monkeypatch):
    ctx, lm, ring, td = setup
    monkeypatch.setattr(controls, "human_samples", lambda n, seed: texts(lm, ring, marked=False)[:n])
    humans = human_controls(ctx, td)
    assert humans.tested == 8 and humans.flagged == 0 and all(c.ok for c in humans.checks), output(ctx)
    served = serve(ctx, lm, ring, td, demo_rows(1, 0))
    mixed = mixed_text(ctx, td, served, humans.humans)
    # the marked completion with the most distinct pairs is the one hidden
    longest = max((n, -i) for i, ((_, a, _), n) in enumerate(zip(served.rows, served.pairs, strict=True)) if a)
    assert mixed.who == served.rows[-longest[1]][0] and mixed.found.ok, output(ctx)
    assert mixed.span_start < mixed.end and mixed.span_end > mixed.start
    assert "4. Controls" in output(ctx) and "5. Mixed text" in output(ctx)


def test_the_controls_fail_on_marked_text(setup, monkeypatch):
    ctx, lm, ring, td = setup
    monkeypatch.setattr(controls, "human_samples", lambda n, seed: texts(lm, ring, marked=True)[:n])
    humans = human_controls(ctx, td)
    assert humans.flagged == 8
    assert [c.label for c in humans.checks if not c.ok] == ["human text", "repeated human text"]
    assert "FAILED" in output(ctx)


def test_no_marked_completion_long_enough_fails_the_mixed_text_check(setup):
    ctx, lm, ring, td = setup
    served = serve(ctx, lm, ring, td, demo_rows(0, 1))  # one unmarked completion only
    mixed = mixed_text(ctx, td, served, ["t1 t2", "t3 t4", "t5 t6"])
    assert mixed.who is None and not mixed.found.ok


def test_no_corpus_skips_the_controls(setup, monkeypatch):
    ctx, _, _, td = setup

    def none(n, seed):
        raise FileNotFoundError("no manual pages here")

    monkeypatch.setattr(controls, "human_samples", none)
    humans = human_controls(ctx, td)
    assert humans.skipped == "no manual pages here" and humans.checks == () and humans.humans == ()
    assert "4. Human text: skipped (no manual pages here)" in output(ctx)
