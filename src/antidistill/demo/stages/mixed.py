"""Stage 5, Mixed text: an account's marked completions, pasted one after the other between two human-written
passages, are found by the windowed scan, at the right place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from antidistill.demo.checks import Check, pairs_needed
from antidistill.demo.context import DemoContext
from antidistill.demo.stages.serve import Served
from antidistill.detection.text import TextDetector


@dataclass(frozen=True)
class MixedText:
    """Stage 5's result.

    Args:
        who: whose marked completion was hidden (``None``: none was long enough to test with power).
        length: characters of the mixed text; start, end: where the marked passage really is.
        span: whether the scan returned a span; span_start, span_end, p_corrected: where it says the marked
            passage is, and its corrected p-value.
        found: the check: a marked span that overlaps the true passage.
    """

    who: str | None
    found: Check
    length: int = 0
    start: int = 0
    end: int = 0
    span: bool = False
    span_start: int | None = None
    span_end: int | None = None
    p_corrected: float | None = None

    @property
    def checks(self) -> tuple[Check, ...]:
        return (self.found,)


def mixed_text(ctx: DemoContext, td: TextDetector, served: Served, humans: Sequence[str]) -> MixedText:
    """Hide the marked completions of one account (those long enough to test with power, in serving order, blank
    lines between them) between ``humans[1]`` and ``humans[2]`` and look for them: the account whose completions hold
    the most distinct pairs, the first of equals. The pick counts pairs only, never a key. One 160-token completion
    of the default member (gumbel-dual) is a weak passage for a scan corrected for every window and key it tries
    (corrected p 1.7e-4 at alpha 1e-3 in one quick demo); an account's answers pasted together, as a user pastes
    a long generated passage, give it the power it needs."""
    by_account: dict[str, tuple[str, int, list[str]]] = {}
    for (label, acct, _), c, n in zip(served.rows, served.completions, served.pairs, strict=True):
        if acct is not None and n >= pairs_needed(acct, td.min_pairs):
            _, total, texts = by_account.get(acct, (label, 0, []))
            by_account[acct] = (label, total + n, [*texts, c.text.strip()])
    best = max(by_account.values(), key=lambda r: r[1], default=None)  # max keeps the first of equals
    if best is None:
        result = MixedText(None, Check("marked span in human text", False))
        ctx.screen.show(result)
        return result
    who, _, texts = best
    marked = "\n\n".join(texts)
    before, after = humans[1], humans[2]
    mixed = f"{before}\n\n{marked}\n\n{after}"
    start = len(before) + 2
    end = start + len(marked)
    span = td.detect(mixed).span
    found = bool(
        span
        and span.watermarked
        and span.start_char is not None
        and span.end_char is not None
        and span.start_char < end
        and span.end_char > start
    )
    result = MixedText(
        who,
        Check("marked span in human text", found),
        len(mixed),
        start,
        end,
        span is not None,
        span.start_char if span else None,
        span.end_char if span else None,
        span.p_value_corrected if span else None,
    )
    ctx.screen.show(result)
    return result
