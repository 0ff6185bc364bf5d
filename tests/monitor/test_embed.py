"""Embeddings: the packaged all-MiniLM-L6-v2 loads offline and feeds the topic features (slow: loads a model)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from antidistill.monitor.api import ExchangeEvent
from antidistill.monitor.features import EMBED_EVERY, EMBED_WINDOW, INDEX
from antidistill.monitor.pipeline import Monitor
from antidistill.monitor.score import Scorer

pytestmark = pytest.mark.slow


def test_embeddings_feed_spread_and_coverage():
    from antidistill.monitor.embed import Embedder

    emb = Embedder(threads=1)
    mon = Monitor(Scorer.rules_only(), embedder=emb)
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    topics = ["black holes", "sourdough bread", "tax law", "knitting", "Rust lifetimes", "the Cold War"]
    n = EMBED_EVERY * 12
    for i in range(n):
        mon.observe(ExchangeEvent("same", t0 + timedelta(seconds=i), prompt="Tell me about black holes, please"))
        topic = topics[(i // EMBED_EVERY) % 6]
        mon.observe(ExchangeEvent("varied", t0 + timedelta(seconds=i), prompt=f"Tell me about {topic}"))
    mon.flush()
    same = mon._features(mon.tracker.accounts["same"].window, n, mon.tracker.accounts["same"])
    varied = mon._features(mon.tracker.accounts["varied"].window, n, mon.tracker.accounts["varied"])
    # a systematic sample: every EMBED_EVERY-th prompt, the last EMBED_WINDOW of them
    assert len(mon.tracker.accounts["same"].embeddings) == min(12, EMBED_WINDOW)
    assert same[INDEX["emb_spread"]] < 0.01 < varied[INDEX["emb_spread"]]
    assert same[INDEX["emb_coverage"]] < varied[INDEX["emb_coverage"]]
    # seven distinct prompts went through the model; the rest came from the cache
    assert emb.computed == 7
    v = emb.embed(["", "x" * 100_000])
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)


def test_cached_embeddings_equal_computed_ones():
    from antidistill.monitor.embed import Embedder

    texts = ["Explain photosynthesis step by step", "hello", "a longer prompt about the history of tax law", "hello"]
    fresh = Embedder(threads=1, cache_size=0).embed(texts)
    cached = Embedder(threads=1)
    cached.embed(texts[1:3])
    got = cached.embed(texts)
    assert cached.computed == 3  # two the first time, one new the second
    np.testing.assert_allclose(got, fresh, atol=1e-5)
    np.testing.assert_array_equal(got[1], got[3])
