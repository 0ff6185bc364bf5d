"""Stage 3, Detect and attribute: every completion of stage 2 tested for the watermark and attributed among the
candidate accounts; a text too short to test, or a marked text too short to test with power, is shown and counted
apart, not checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from antidistill.demo.checks import Check, pairs_needed, present
from antidistill.demo.context import DemoContext
from antidistill.demo.stages.serve import Served
from antidistill.detection.text import TextDetector

#: how a text was treated: too few pairs to test at all, marked with too few pairs for power, or tested and checked
Status = Literal["too short", "under-powered", "checked"]


@dataclass(frozen=True)
class Tested:
    """One completion of stage 3.

    Args:
        label: whom it was served to (``unwatermarked`` for a control).
        served_to: the account that marked it (``None``: served unmarked).
        pairs: its distinct (context, token) pairs.
        status: see :data:`Status`; the detection figures are ``None`` for a text too short to test.
        p_value, watermarked, account, p_corrected: the detector's answer (``account``: the attributed one).
        check: whether it was detected and never pinned on a wrong account (a control: not detected); only for
            a checked text.
    """

    label: str
    served_to: str | None
    pairs: int
    status: Status
    p_value: float | None = None
    watermarked: bool | None = None
    account: str | None = None
    p_corrected: float | None = None
    check: Check | None = None


@dataclass(frozen=True)
class Detection:
    """Stage 3's result.

    Args:
        candidates: candidate accounts of the attribution.
        texts: one entry per completion, in stage 2's order.
        marked, powered, attributed, wrong: marked completions; of them tested with power; attributed to the
            right account; to a wrong one.
        controls: unmarked completions tested; apart: completions reported, not checked.
        sample_label, sample: the first completion (whose, and its text on one line).
        long_enough, most_attributed, unmarked_tested: the stage's summary checks (``None`` when there was nothing
            of the kind to check).
    """

    candidates: int
    texts: tuple[Tested, ...]
    marked: int
    powered: int
    attributed: int
    wrong: int
    controls: int
    apart: int
    sample_label: str
    sample: str
    long_enough: Check | None
    most_attributed: Check | None
    unmarked_tested: Check | None

    @property
    def checks(self) -> tuple[Check, ...]:
        """One check per text tested with power, then the summary checks."""
        return present(*(t.check for t in self.texts), self.long_enough, self.most_attributed, self.unmarked_tested)


def detect_text(td: TextDetector, label: str, account: str | None, text: str, pairs: int) -> Tested:
    """Test one completion served to ``account`` (``None``: unmarked) with ``pairs`` distinct pairs."""
    if pairs < td.min_pairs:
        return Tested(label, account, pairs, "too short")
    r = td.detect(text)
    figures = (r.p_value, r.watermarked, r.account, r.p_value_corrected)
    if account is not None and pairs < pairs_needed(account, td.min_pairs):
        return Tested(label, account, pairs, "under-powered", *figures)
    # a marked text must be detected and never pinned on the wrong account; one that is detected but too short to
    # single out its account among the candidates is a lack of power, counted apart, not an error
    ok = (r.watermarked and r.account in (account, None)) if account else (not r.watermarked and r.account is None)
    return Tested(label, account, pairs, "checked", *figures, check=Check(f"{label}: {text[:30]!r}", bool(ok)))


def detect_served(ctx: DemoContext, td: TextDetector, served: Served) -> Detection:
    """Test every completion stage 2 served, then check that most marked ones were tested and attributed."""
    texts = tuple(
        detect_text(td, label, acct, c.text, n)
        for (label, acct, _), c, n in zip(served.rows, served.completions, served.pairs, strict=True)
    )
    marked = sum(t.served_to is not None for t in texts)
    checked = [t for t in texts if t.status == "checked"]
    powered = [t for t in checked if t.served_to is not None]
    attributed = sum(t.account == t.served_to for t in powered)
    wrong = sum(t.account not in (t.served_to, None) for t in powered)
    controls = len(checked) - len(powered)
    long_enough = most_attributed = unmarked_tested = None
    if marked:
        long_enough = Check("most marked completions long enough to test", 3 * len(powered) >= 2 * marked)
        most_attributed = Check(
            "most marked completions attributed", bool(powered) and 3 * attributed >= 2 * len(powered)
        )
    if any(a is None for _, a, _ in served.rows):
        unmarked_tested = Check("unmarked completions tested", controls > 0)
    sample = served.completions[0].text.strip().replace("\n", " ")
    result = Detection(
        len(td.candidates),
        texts,
        marked,
        len(powered),
        attributed,
        wrong,
        controls,
        len(texts) - len(checked),
        served.rows[0][0],
        sample,
        long_enough,
        most_attributed,
        unmarked_tested,
    )
    ctx.screen.show(result)
    return result
