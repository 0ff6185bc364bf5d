"""Stage 2, Serve: one batch of completions, each row marked with its own account's key (or served unmarked); a
row too short to test is generated again with another seed (:func:`~antidistill.demo.checks.regenerate_short`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from antidistill.demo.checks import Check, pairs_needed, regenerate_short
from antidistill.demo.context import DemoContext
from antidistill.detection.text import TextDetector
from antidistill.keys import KeyRing
from antidistill.models.local import Completion, LocalModel
from antidistill.watermark.marker import MarkKeys

#: the accounts of stages 2-5 and what each asks
PROMPTS = {
    "alice": [
        "Explain in detail how a refrigerator keeps food cold.",
        "Write a long story about a lighthouse keeper who finds a message in a bottle.",
        "Write a letter from a young sailor to her brother about her first voyage.",
    ],
    "bob": [
        "Explain why the sky is blue, with examples.",
        "Tell the story of a small village that wakes up to find the river has vanished.",
        "Describe the history of the bicycle and how it changed cities.",
    ],
}

Row = tuple[str, str | None, str]  # (label, account or None for an unmarked completion, prompt)


def demo_rows(per_account: int, unmarked: int) -> list[Row]:
    """Stage 2's rows: ``per_account`` prompts of each account, then ``unmarked`` prompts served unmarked."""
    rows: list[Row] = []
    for acct, prompts in PROMPTS.items():
        rows += [(acct, acct, p) for p in prompts[:per_account]]
    plain = PROMPTS["alice"][:2] + PROMPTS["bob"]
    rows += [("unwatermarked", None, p) for p in plain[:unmarked]]
    return rows


@dataclass(frozen=True)
class Served:
    """What stage 2 served: one completion per row, and the distinct pairs of each (as the detector counts them).

    Args:
        rows: ``(label, account or None, prompt)``.
        completions: the completions, in row order (a regenerated row holds its longest try).
        pairs: distinct (context, token) pairs of each completion's text.
        regenerated: the rows generated again because they had fewer pairs than they need.
        tokens, seconds: tokens the first batch generated, and how long it took.
        first_pairs: distinct pairs of each row's first try.
        need: distinct pairs each row needs (:func:`~antidistill.demo.checks.pairs_needed`).
        checks: none; stage 3 checks what was served.
    """

    rows: list[Row]
    completions: list[Completion]
    pairs: list[int]
    regenerated: list[int]
    tokens: int
    seconds: float
    first_pairs: list[int]
    need: list[int]
    checks: tuple[Check, ...] = ()

    @property
    def unmarked(self) -> int:
        """Rows served unmarked."""
        return sum(1 for _, a, _ in self.rows if a is None)

    @property
    def still_short(self) -> int:
        """Rows generated again that still have fewer pairs than they need."""
        return sum(1 for i in self.regenerated if self.pairs[i] < self.need[i])


def serve(ctx: DemoContext, lm: LocalModel, ring: KeyRing, td: TextDetector, rows: Sequence[Row]) -> Served:
    """Generate ``rows`` in one batch of ``ctx.sizes.serve_tokens`` tokens each, then again the rows too short."""
    rows = list(rows)
    marks = [MarkKeys(ring.account_key(a), ring.provider_key()) if a else None for _, a, _ in rows]
    tokens = ctx.sizes.serve_tokens
    t0 = time.perf_counter()
    with ctx.screen.busy(f"Stage 2: generating {len(rows)} completions in one batch…"):
        completions = lm.generate(
            [p for _, _, p in rows], marks, max_new_tokens=tokens, min_new_tokens=tokens, seed=ctx.seed
        )
    dt = time.perf_counter() - t0

    def redo(indices: list[int], attempt: int) -> list[Completion]:
        with ctx.screen.busy(f"Stage 2: generating {len(indices)} completion(s) again…"):
            return lm.generate(
                [rows[i][2] for i in indices],
                [marks[i] for i in indices],
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                seed=ctx.seed + attempt,
            )

    n_tok = sum(len(c.token_ids) for c in completions)
    pairs = [td.pair_count(c.text) for c in completions]
    first = list(pairs)
    need = [pairs_needed(a, td.min_pairs) for _, a, _ in rows]
    again = regenerate_short(completions, pairs, need, redo, lambda c: td.pair_count(c.text))
    served = Served(rows, completions, pairs, again, n_tok, dt, first, need)
    ctx.screen.show(served)
    return served
