"""The demo's sizes: quick shrinks every stage."""

from __future__ import annotations

from antidistill.demo.context import DemoSizes


def test_sizes_quick_is_smaller_everywhere():
    full, quick = DemoSizes.for_mode(False), DemoSizes.for_mode(True)
    assert quick.quick and not full.quick
    for f in ("serve_tokens", "gateway_tokens", "harvest", "harvest_tokens", "customer_requests", "closed_prompts"):
        assert getattr(quick, f) <= getattr(full, f), f
    assert quick.harvest * quick.epochs < full.harvest * full.epochs
    assert quick.closed_prompts == 0 < full.closed_prompts
    assert DemoSizes.for_mode(False, max_tokens=64).serve_tokens == 64
    assert DemoSizes.for_mode(True, max_tokens=32).serve_tokens == 32
