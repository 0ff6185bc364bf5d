"""What the demo's checks share: :class:`Check`, the verdict words, the significance level, the decoy accounts,
the detector every check uses, and the rule for texts too short to test.

Texts too short to test: the embedded model sometimes falls into a repetition loop ("🔵🔵🔵…", "a tale, a tale,
…"): 160 tokens that hold ten distinct (context, token) pairs. Which completion does depends on the keys, so on the
master key of the installation. Such a text cannot be tested (fewer than ``min_pairs`` pairs: the detector refuses
it) or is tested with little power. The demo generates it again with another seed (:func:`regenerate_short`); what
stays short is reported and counted apart, never checked and never an abort. Only the pair count decides, never a
detection result, so every check that remains is as strict as before and still fails when the watermark does not
work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from antidistill.detection.detector import Detector
from antidistill.detection.text import TextDetector
from antidistill.keys import KeyRing
from antidistill.models.local import LocalModel

#: the significance level of every test the demo checks
DEMO_ALPHA = 1e-3
#: accounts that never sent a request: their keys are candidates too, so attribution has to single out the right
#: account among more than the few that took part (stages 3, 6 and 8)
DECOY_ACCOUNTS: tuple[str, ...] = tuple(f"customer-{i:04d}" for i in range(8))
#: Distinct pairs a marked text needs before the demo checks that it is detected. At the green fraction the
#: embedded model's marked answers reach (about 0.7 at delta 3, see ``watermark/config.py``) a 64-pair text is
#: detected at alpha 1e-3 with probability above 0.999 (provider test and attribution among the demo's ten
#: candidate keys, Fisher-combined; simulated); at 0.6, about 0.97; 32 pairs would give 0.90 and 0.54.
DEMO_MIN_PAIRS = 64
#: further tries, each with another seed, for a text with fewer distinct pairs than it needs
REGENERATE_ATTEMPTS = 2

T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    """One thing the demo verifies.

    Args:
        label: what was checked (the summary names the failed ones by it).
        ok: whether it held.
    """

    label: str
    ok: bool


class Checked(Protocol):
    """A stage's (or a step's) result: whatever figures it holds, the checks it made."""

    @property
    def checks(self) -> tuple[Check, ...]: ...


def verdict(ok: bool) -> str:
    """The verdict printed after a figure (rich markup): ``ok`` or ``FAILED``."""
    return "[green]ok[/]" if ok else "[bold red]FAILED[/]"


def failed(checks: Iterable[Check]) -> list[Check]:
    """The checks that did not hold, in order."""
    return [c for c in checks if not c.ok]


def present(*checks: Check | None) -> tuple[Check, ...]:
    """The checks that were made (``None``: a check the stage had no occasion to make)."""
    return tuple(c for c in checks if c is not None)


def pairs_needed(account: str | None, min_pairs: int) -> int:
    """Distinct pairs a demo text needs: a marked one enough for power, an unmarked control enough to be tested
    at all (a false positive must never happen, however short the text)."""
    return max(DEMO_MIN_PAIRS, min_pairs) if account else min_pairs


def regenerate_short(
    items: list[T],
    counts: list[int],
    need: Sequence[int],
    redo: Callable[[list[int], int], Sequence[T]],
    count: Callable[[T], int],
    attempts: int = REGENERATE_ATTEMPTS,
) -> list[int]:
    """Generate again every item with fewer distinct pairs than it needs, up to ``attempts`` times.

    ``redo(indices, attempt)`` returns new items for those indices (``attempt`` = 1, 2, … picks another seed);
    each index keeps the try with the most pairs. ``items`` and ``counts`` are updated in place. Returns the
    indices that were generated again.
    """
    weak = [i for i in range(len(items)) if counts[i] < need[i]]
    again = list(weak)
    for attempt in range(1, attempts + 1):
        if not weak:
            break
        for i, item in zip(weak, redo(weak, attempt), strict=True):
            n = count(item)
            if n > counts[i]:
                items[i], counts[i] = item, n
        weak = [i for i in weak if counts[i] < need[i]]
    return again


def demo_detector(lm: LocalModel, ring: KeyRing, accounts: Iterable[str]) -> TextDetector:
    """A detector with the provider keys and every key of ``accounts`` and of the decoy accounts as candidates."""
    candidates = [k for a in accounts for k in ring.account_keys(a)]
    candidates += [ring.account_key(a) for a in DECOY_ACCOUNTS]
    return TextDetector(
        lm.tokenizer,
        Detector(lm.watermark.config, vocab_size=lm.vocab_size),
        ring.provider_keys(),
        candidates,
        DEMO_ALPHA,
    )
