"""Embeddings: the packaged all-MiniLM-L6-v2 loads offline and feeds the topic features (slow: loads a model)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from antidistill.monitor.api import ExchangeEvent
from antidistill.monitor.features import INDEX
from antidistill.monitor.pipeline import Monitor
from antidistill.monitor.score import Scorer

pytestmark = pytest.mark.slow


def test_embeddings_feed_spread_and_coverage():
    from antidistill.monitor.embed import Embedder

    emb = Embedder(threads=1)
    mon = Monitor(Scorer.rules_only(), embedder=emb)
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    topics = ["black holes", "sourdough bread", "tax law", "knitting", "Rust lifetimes", "the Cold War"]
    for i in range(12):
        mon.observe(ExchangeEvent("same", t0 + timedelta(seconds=i), prompt="Tell me about black holes, please"))
        mon.observe(ExchangeEvent("varied", t0 + timedelta(seconds=i), prompt=f"Tell me about {topics[i % 6]}"))
    mon.flush()
    same = mon._features(mon.tracker.accounts["same"].window, 12, mon.tracker.accounts["same"])
    varied = mon._features(mon.tracker.accounts["varied"].window, 12, mon.tracker.accounts["varied"])
    assert len(mon.tracker.accounts["same"].embeddings) == 12
    assert same[INDEX["emb_spread"]] < 0.01 < varied[INDEX["emb_spread"]]
    assert same[INDEX["emb_coverage"]] < varied[INDEX["emb_coverage"]]
    v = emb.embed(["", "x" * 100_000])
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
