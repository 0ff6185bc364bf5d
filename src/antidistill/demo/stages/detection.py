"""Stage 3, Detect and attribute: every completion of stage 2 tested for the watermark and attributed among the
candidate accounts; a text too short to test, or a marked text too short to test with power, is shown and counted
apart, not checked. Each account's completions are then attributed together (:func:`attribute_pooled`): a
claim about an account rests on its texts together, and a low-distortion mark carries too few bits in one
160-token text to single out one account among ten, though it is detected."""

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
        check: a marked text: never pinned on a wrong account (whether it was detected is counted in the stage's
            summary: a low-distortion mark detects most 160-token texts, not every one); a control: not detected
            and pinned on nobody; only for a checked text.
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
class Pooled:
    """One account's marked completions attributed together.

    Args:
        label: the account as the stage names it; served_to: the account that marked them.
        texts: its completions pooled (every one long enough to test at all); pairs: their distinct pairs.
        account: the attributed account (``None``: not significant); p_corrected: Bonferroni-corrected p.
        attributed_name: how the stage names the attributed account (``-``: none).
        check: attributed to the account that marked them (never to another, never to none).
    """

    label: str
    served_to: str
    texts: int
    pairs: int
    account: str | None
    p_corrected: float
    attributed_name: str
    check: Check


def attribute_pooled(
    td: TextDetector, label: str, account: str, texts: list[str], names: dict[str, str] | None = None
) -> Pooled:
    """Attribute ``texts`` (all served to ``account``) together among ``td``'s candidates (``names``: account id ->
    the name the stage shows)."""
    r = td.attribute_texts(texts)
    pairs = r.best.tokens_scored if r.best is not None else 0
    name = (names or {}).get(r.account or "", r.account or "-")
    check = Check(f"{label}: its {len(texts)} texts together attributed to it", r.account == account)
    return Pooled(label, account, len(texts), pairs, r.account, r.p_value_corrected, name, check)


@dataclass(frozen=True)
class Detection:
    """Stage 3's result.

    Args:
        candidates: candidate accounts of the attribution.
        texts: one entry per completion, in stage 2's order.
        marked, powered, detected, attributed, wrong: marked completions; of them tested with power; detected;
            attributed to the right account text by text; to a wrong one.
        pooled: each account's completions attributed together, in the order of the accounts' first rows.
        controls: unmarked completions tested; apart: completions reported, not checked.
        sample_label, sample: the first completion (whose, and its text on one line).
        long_enough, most_detected, unmarked_tested: the stage's summary checks (``None`` when there was nothing
            of the kind to check).
    """

    candidates: int
    texts: tuple[Tested, ...]
    marked: int
    powered: int
    detected: int
    attributed: int
    wrong: int
    controls: int
    apart: int
    pooled: tuple[Pooled, ...]
    sample_label: str
    sample: str
    long_enough: Check | None
    most_detected: Check | None
    unmarked_tested: Check | None

    @property
    def checks(self) -> tuple[Check, ...]:
        """One check per text tested with power, one per account's pooled completions, then the summary checks."""
        per_text = (t.check for t in self.texts)
        summary = (self.long_enough, self.most_detected, self.unmarked_tested)
        return present(*per_text, *(p.check for p in self.pooled), *summary)


def detect_text(td: TextDetector, label: str, account: str | None, text: str, pairs: int) -> Tested:
    """Test one completion served to ``account`` (``None``: unmarked) with ``pairs`` distinct pairs."""
    if pairs < td.min_pairs:
        return Tested(label, account, pairs, "too short")
    r = td.detect(text)
    figures = (r.p_value, r.watermarked, r.account, r.p_value_corrected)
    if account is not None and pairs < pairs_needed(account, td.min_pairs):
        return Tested(label, account, pairs, "under-powered", *figures)
    # a marked text must never be pinned on the wrong account; one not detected, or detected but not singled out
    # among the candidates, is a lack of power, counted in the summary (most must be detected) and made up for by
    # the account's texts together; a control must be neither detected nor pinned on anyone
    ok = r.account in (account, None) if account else (not r.watermarked and r.account is None)
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
    detected = sum(bool(t.watermarked) for t in powered)
    attributed = sum(t.account == t.served_to for t in powered)
    wrong = sum(t.account not in (t.served_to, None) for t in powered)
    controls = len(checked) - len(powered)
    # every completion of an account that can be tested at all joins its pool (an under-powered one adds pairs)
    own: dict[str, tuple[str, list[str]]] = {}
    for t, c in zip(texts, served.completions, strict=True):
        if t.served_to is not None and t.status != "too short":
            own.setdefault(t.served_to, (t.label, []))[1].append(c.text)
    pooled = tuple(attribute_pooled(td, label, acct, ts) for acct, (label, ts) in own.items())
    long_enough = most_detected = unmarked_tested = None
    if marked:
        long_enough = Check("most marked completions long enough to test", 3 * len(powered) >= 2 * marked)
        most_detected = Check("most marked completions detected", bool(powered) and 3 * detected >= 2 * len(powered))
    if any(a is None for _, a, _ in served.rows):
        unmarked_tested = Check("unmarked completions tested", controls > 0)
    sample = served.completions[0].text.strip().replace("\n", " ")
    result = Detection(
        len(td.candidates),
        texts,
        marked,
        len(powered),
        detected,
        attributed,
        wrong,
        controls,
        len(texts) - len(checked),
        pooled,
        served.rows[0][0],
        sample,
        long_enough,
        most_detected,
        unmarked_tested,
    )
    ctx.screen.show(result)
    return result
