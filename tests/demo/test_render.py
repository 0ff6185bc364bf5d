"""The renderer's text helpers."""

from __future__ import annotations

from antidistill.demo.render import short_id, shorten


def test_text_helpers():
    assert short_id("acct_0123456789abcdef") == "acct_01234567…"
    assert short_id("short") == "short"
    assert shorten("a  b\n c") == "a b c"
    assert len(shorten("x" * 200, 20)) == 20

