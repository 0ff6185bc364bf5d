"""Stage 4, Controls: human-written text (manual pages, licences on this machine) is not flagged, not even one
paragraph repeated 20 times (each distinct pair is scored once)."""

from __future__ import annotations

from dataclasses import dataclass

from antidistill.demo.checks import Check, present
from antidistill.demo.context import DemoContext
from antidistill.detection.corpus import human_samples
from antidistill.detection.text import TextDetector

HUMAN_SAMPLES = 8
REPEATS = 20


@dataclass(frozen=True)
class HumanControls:
    """Stage 4's result.

    Args:
        humans: the human-written passages (stage 5 hides a marked text among them); empty when skipped.
        skipped: why the stage was skipped (no text on this machine to build the corpus from), else ``None``.
        tested, flagged: passages tested, and flagged as marked.
        repeated_p, repeated_flagged: one passage repeated ``REPEATS`` times: its p-value, flagged or not.
        human_text, repeated_text: the two checks (``None`` when skipped).
    """

    humans: tuple[str, ...]
    skipped: str | None = None
    tested: int = 0
    flagged: int = 0
    repeated_p: float | None = None
    repeated_flagged: bool = False
    human_text: Check | None = None
    repeated_text: Check | None = None

    @property
    def checks(self) -> tuple[Check, ...]:
        return present(self.human_text, self.repeated_text)


def human_controls(ctx: DemoContext, td: TextDetector) -> HumanControls:
    """Test human-written passages and one of them repeated; none may be flagged."""
    try:
        humans = human_samples(HUMAN_SAMPLES, seed=ctx.seed)
    except Exception as exc:  # the corpus is built from text on this machine; say so if there is none
        result = HumanControls((), skipped=str(exc))
        ctx.screen.show(result)
        return result
    answers = [r for r in td.detect_many(humans) if not isinstance(r, Exception)]
    flagged = sum(1 for r in answers if r.watermarked)
    rep = td.detect("\n\n".join([humans[0]] * REPEATS))
    result = HumanControls(
        tuple(humans),
        None,
        len(answers),
        flagged,
        rep.p_value,
        rep.watermarked,
        Check("human text", flagged == 0 and len(answers) > 0),
        Check("repeated human text", not rep.watermarked),
    )
    ctx.screen.show(result)
    return result
