"""The demo's screen: every line ``antidistill demo`` leaves on the terminal is written here, from the stages'
typed results (:meth:`Renderer.show` picks the writer by the result's type).

The stages say what they are busy with (a transient spinner or progress bar, :meth:`Renderer.busy` and
:meth:`Renderer.bar`) and show each result as soon as it is known, so the long stages show their steps as they
finish and stage 7's policy actions as they land.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import singledispatchmethod
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from antidistill.demo.checks import DEMO_ALPHA, DEMO_MIN_PAIRS, Check, failed, verdict
from antidistill.demo.context import Bar
from antidistill.demo.stages.controls import REPEATS, HumanControls
from antidistill.demo.stages.detection import Detection, Pooled
from antidistill.demo.stages.gateway import GatewayAnswer, GatewayResult
from antidistill.demo.stages.mixed import MixedText
from antidistill.demo.stages.model import ModelLoaded
from antidistill.demo.stages.prove import (
    ATTACKER,
    BatchMonitor,
    ClosedScan,
    ControlData,
    CustomerTraffic,
    Distillation,
    EvidenceWritten,
    Harvest,
    StudentScans,
)
from antidistill.demo.stages.serve import PROMPTS, Served
from antidistill.demo.stages.watch import (
    ActionSeen,
    HeldOut,
    LiveViewUnavailable,
    MonitorTrained,
    TrafficSent,
    WatchAssessment,
)
from antidistill.store.api import VerifyResult

#: the headings of the long stages (a rule across the screen)
HEADINGS = {
    7: "7. Watch: the monitor and the policy, live",
    8: "8. Prove: the attack, the student, the forensic scan, the evidence",
}
ACTION_WORDS = {
    "flag": "flagged",
    "throttle": "throttled",
    "review": "held for review",
    "block": "blocked",
    "none": "no action",
}


def short_id(account_id: str) -> str:
    """An account id cut to 14 characters."""
    return account_id if len(account_id) <= 14 else account_id[:13] + "…"


def shorten(text: str, n: int = 90) -> str:
    """``text`` on one line, cut to ``n`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _chain(v: VerifyResult) -> str:
    return "verifies" if v.ok else "BROKEN: " + str(v.problem)


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}"


class Renderer:
    """Writes the demo to a rich console (a :class:`~antidistill.demo.context.Screen` for the stages).

    Args:
        console: where everything goes (the CLI's; a ``Console(file=StringIO())`` in tests).

    Example:
        >>> import io
        >>> from antidistill.demo.checks import Check
        >>> r = Renderer(Console(file=io.StringIO(), width=100))
        >>> r.summary([Check("a", True), Check("b", False)], 1.0)
        >>> r.console.file.getvalue()
        '1 of 2 checks failed: b\\n'
    """

    def __init__(self, console: Console) -> None:
        self.console = console

    def _print(self, *args: Any, **kwargs: Any) -> None:
        self.console.print(*args, **kwargs)

    # ---- what the stages use -----------------------------------------------------------------------------------
    def busy(self, text: str) -> contextlib.AbstractContextManager[Any]:
        """A transient spinner with ``text`` while the block runs."""
        return self.console.status(text)

    @contextlib.contextmanager
    def bar(self, description: str, total: int | None = None) -> Iterator[Bar]:
        """A transient progress bar while the block runs; yields its update function."""
        with Progress(
            TextColumn("   {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            task = progress.add_task(description, total=total)

            def update(completed: int, total: int | None = None, description: str | None = None) -> None:
                progress.update(task, completed=completed, total=total, description=description)

            yield update

    @singledispatchmethod
    def show(self, result: object) -> None:
        """Write ``result`` (a stage's or a step's result)."""
        raise TypeError(f"the demo has no way to show a {type(result).__name__}")

    # ---- what the run uses -------------------------------------------------------------------------------------
    def title(self, quick: bool) -> None:
        """The rule the demo starts with."""
        self.console.rule("[bold]antidistill demo" + (" (quick)" if quick else ""))

    def heading(self, stage: int) -> None:
        """The rule a long stage starts with."""
        self.console.rule(f"[bold]{HEADINGS[stage]}")

    def summary(self, checks: Sequence[Check], seconds: float) -> None:
        """The last line: every check passed, or which failed."""
        bad = failed(checks)
        if bad:
            self._print(
                f"[bold red]{len(bad)} of {len(checks)} checks failed:[/] " + "; ".join(c.label for c in bad),
                highlight=False,
            )
        else:
            self._print(f"[bold green]All {len(checks)} checks passed[/] in {seconds:.0f} s.")

    # ---- stages 1-6 --------------------------------------------------------------------------------------------
    @show.register
    def _model(self, r: ModelLoaded) -> None:
        if r.seconds is None:
            self._print(f"[bold]1. Model[/] {r.name}")
        else:
            how = "from the cache" if r.from_cache else "converted from GGUF and cached"
            self._print(f"[bold]1. Model[/] {r.name}, {how} in {r.seconds:.1f} s")
        cfg = r.config
        self._print(
            f"   watermark: scheme {cfg.scheme}, gamma {cfg.gamma}, delta {cfg.delta}, "
            f"context width {cfg.context_width}, provider share {cfg.provider_fraction}"
        )
        self._print(
            "   served in process (the default); to serve from vLLM, where the engine marks: `make vllm`, "
            'then README.md, "Gateway" (`antidistill model export DIR`, the engine with '
            "`--logits-processors antidistill.engines.vllm:AntidistillLogitsProcessor`, "
            "`antidistill serve --backend vllm --upstream-url URL`)",
            highlight=False,
        )

    @show.register
    def _served(self, r: Served) -> None:
        n = len(r.rows)
        self._print(
            f"[bold]2. Serve[/] {n} completions ({n - r.unmarked} marked for {' and '.join(PROMPTS)}, "
            f"{r.unmarked} unmarked), {r.tokens} tokens in {r.seconds:.1f} s "
            f"({r.tokens / max(r.seconds, 1e-9):.0f} tokens/s, one batch)"
        )
        if r.regenerated:
            what = ", ".join(f"{r.rows[i][0]} ({r.first_pairs[i]} → {r.pairs[i]})" for i in r.regenerated)
            left = r.still_short
            self._print(
                f"   {len(r.regenerated)} completion(s) fell into a repetition loop, too few distinct token "
                f"pairs to test (a marked text needs {DEMO_MIN_PAIRS}), and were generated again with "
                f"another seed: {what}" + (f"; {left} still short, counted apart below" if left else ""),
                highlight=False,
            )

    @show.register
    def _detection(self, r: Detection) -> None:
        table = Table(title=f"3. Detect and attribute (alpha {DEMO_ALPHA:g}, {r.candidates} candidate accounts)")
        for col in ("served to", "pairs", "p-value", "verdict", "attributed to", "corrected p", "check"):
            table.add_column(col)
        for t in r.texts:
            if t.status == "too short":
                table.add_row(t.label, str(t.pairs), "-", "too short", "-", "-", "[yellow]not tested[/]")
                continue
            cells = (
                t.label,
                str(t.pairs),
                _p(t.p_value),
                "marked" if t.watermarked else "clean",
                t.account or "-",
                _p(t.p_corrected),
            )
            mark = "[yellow]under-powered[/]" if t.check is None else verdict(t.check.ok)
            table.add_row(*cells, mark)
        self._print(table)
        if r.apart:
            self._print(
                f"   {r.apart} completion(s) too short to test, or marked with fewer than {DEMO_MIN_PAIRS} "
                "distinct token pairs (too little power): reported, not checked",
                highlight=False,
            )
        if r.long_enough is not None:
            self._print(
                f"   {r.powered} of {r.marked} marked completions long enough to test with power "
                f"{verdict(r.long_enough.ok)}",
                highlight=False,
            )
        if r.most_detected is not None:
            self._print(
                f"   text by text: {r.detected} of {r.powered} marked completions tested detected "
                f"{verdict(r.most_detected.ok)}; {r.attributed} attributed to the right account, {r.wrong} to a "
                "wrong one",
                highlight=False,
            )
        self._pooled(r.pooled, "completions")
        if r.unmarked_tested is not None and not r.unmarked_tested.ok:
            self._print(f"   no unmarked completion long enough to test {verdict(False)}")
        self._print(f"   e.g. {r.sample_label}'s first completion: [italic]{r.sample[:160]}…[/]", highlight=False)

    def _pooled(self, pooled: tuple[Pooled, ...], what: str) -> None:
        """One line per account: its texts attributed together (stages 3 and 6)."""
        for p in pooled:
            self._print(
                f"   {p.label}'s {p.texts} {what} together ({p.pairs} distinct pairs on the account's positions): "
                f"attributed to {p.attributed_name}, corrected p = {_p(p.p_corrected)} {verdict(p.check.ok)}",
                highlight=False,
            )

    @show.register
    def _controls(self, r: HumanControls) -> None:
        if r.skipped is not None:
            self._print(f"[yellow]4. Human text: skipped ({r.skipped})[/]")
            return
        ok = r.human_text is not None and r.human_text.ok
        self._print(
            f"[bold]4. Controls[/] {r.tested} human-written passages (manual pages, licences): "
            f"{r.flagged} flagged {verdict(ok)}"
        )
        ok = r.repeated_text is not None and r.repeated_text.ok
        self._print(
            f"   one human paragraph repeated {REPEATS} times: p = {_p(r.repeated_p)}, "
            f"{'flagged' if r.repeated_flagged else 'not flagged'} {verdict(ok)}"
        )

    @show.register
    def _mixed(self, r: MixedText) -> None:
        if r.who is None:
            self._print(f"[bold]5. Mixed text[/] no marked completion long enough to hide {verdict(r.found.ok)}")
            return
        where = (
            (f"chars {r.span_start}-{r.span_end} (true passage {r.start}-{r.end}), corrected p = {_p(r.p_corrected)}")
            if r.span
            else "no span"
        )
        self._print(
            f"[bold]5. Mixed text[/] {r.who}'s completions inside {r.length} characters of human text: "
            f"{where} {verdict(r.found.ok)}"
        )

    @show.register
    def _gateway(self, r: GatewayResult) -> None:
        self._print(
            f"[bold]6. Gateway[/] {len(r.answers)} concurrent openai-SDK clients (one streaming) "
            f"served in {r.seconds:.1f} s through {r.url}/v1"
        )
        if r.asked_again:
            what = ", ".join(f"{name} ({first} → {kept})" for name, first, kept in r.asked_again)
            self._print(
                f"   {len(r.asked_again)} answer(s) had too few distinct token pairs to test with power (at "
                f"least {DEMO_MIN_PAIRS}) and were asked again with another seed: {what}",
                highlight=False,
            )
        for a in r.answers:
            self._gateway_answer(a, r.min_pairs)
        self._print(
            f"   answer by answer: {r.detected} of {r.tested} answers tested detected {verdict(r.most_detected.ok)}; "
            f"{r.attributed} attributed to the right account, {r.wrong} to a wrong one",
            highlight=False,
        )
        self._pooled(r.pooled, "answers")
        streams = f" + {r.stream_openings} stream openings" if r.stream_openings else ""
        self._print(
            f"   audit log: {r.audit.records} records ({r.sent} requests{streams}), {r.audit.checkpoints} "
            f"signed checkpoints, chain {_chain(r.audit)} {verdict(r.audit_chain.ok)}",
            highlight=False,
        )

    def _gateway_answer(self, a: GatewayAnswer, min_pairs: int) -> None:
        who = f"   {a.name:<10} {a.request[:22]:<22}"
        if a.status == "too short":
            self._print(
                f"{who} not tested: too short ({a.pairs} distinct token pairs, at least {min_pairs} are needed)",
                highlight=False,
            )
            return
        found = "marked" if a.detected else "not detected"
        line = (
            f"{who} p = {_p(a.p_value)}, {found}, attributed to {a.attributed_name} (corrected p = {_p(a.p_corrected)})"
        )
        if a.check is None:
            self._print(
                f"{line} [yellow]under-powered ({a.pairs} distinct token pairs): reported, not checked[/]",
                highlight=False,
            )
        else:
            self._print(f"{line} {verdict(a.check.ok)}", highlight=False)

    # ---- stage 7 -----------------------------------------------------------------------------------------------
    @show.register
    def _trained(self, r: MonitorTrained) -> None:
        th = r.thresholds
        self._print(
            f"   monitor trained fresh for this demo (your own trained monitor, if any, is not used): "
            f"{r.windows} windows from {r.train_days} small simulated days (train split), "
            f"thresholds calibrated on {r.calibration_days} more: watch {th['watch']:.2f}, "
            f"alert {th['alert']:.2f}, severe {th['severe']:.2f} ({r.seconds:.1f} s)",
            highlight=False,
        )

    @show.register
    def _heldout(self, r: HeldOut) -> None:
        self._print(
            f"   held-out traffic (other seeds, other parameter bands): {r.accounts} accounts "
            f"({r.benign} benign, {r.attackers} attacker accounts in {len(r.campaigns)} campaigns: "
            f"{', '.join(r.campaigns)}), {r.requests} requests over one virtual day, through the real "
            f"gateway with the monitor and the shipped policy on",
            highlight=False,
        )

    @show.register
    def _action(self, a: ActionSeen) -> None:
        where = ", linked cluster" if a.linked else ""
        extra = " (10 rpm)" if a.action == "throttle" else ""
        reason = f": {shorten(a.reason, 70)}" if a.reason else ""
        self._print(
            f"   [bold]acct {short_id(a.account_id)}[/] ({a.persona}{where}): {a.level} → "
            f"[bold]{ACTION_WORDS.get(a.action, a.action)}{extra}[/] under clause {a.clause} "
            f"[dim](risk {a.risk:.2f}{reason})[/]",
            highlight=False,
        )

    @show.register
    def _no_live_view(self, r: LiveViewUnavailable) -> None:
        self._print(f"   [yellow](live view unavailable: {r.reason})[/]")

    @show.register
    def _traffic(self, r: TrafficSent) -> None:
        if r.hidden:
            self._print(f"   … and {r.hidden} more actions of the same kinds (in the table below)")
        statuses = ", ".join(f"{n} × {s}" for s, n in sorted(r.status_counts.items()))
        self._print(f"   {r.requests} requests in {r.seconds:.1f} s; the gateway answered {statuses}", highlight=False)

    @show.register
    def _watch(self, r: WatchAssessment) -> None:
        table = Table(title="7. Monitor and policy, by persona (simulator's ground truth)")
        for col in ("persona", "accts", ">=alert", "throttled", "blocked*", "429s", "403s"):
            table.add_column(col, justify="left" if col == "persona" else "right")
        for i, p in enumerate(r.personas):
            if i and p.role != r.personas[i - 1].role:
                table.add_section()
            table.add_row(
                p.persona,
                str(p.accounts),
                str(p.reached_alert),
                str(p.throttled),
                str(p.blocked),
                str(p.refused_429),
                str(p.refused_403),
                style="red" if p.role == "attacker" else None,
            )
        self._print(table)
        self._print(
            "   [dim]benign above the line, attackers (red) below; * blocked or held for review (every "
            "request refused); 429s/403s: requests refused[/]"
        )
        self._print(
            f"   every attacker campaign present ({r.campaigns}) reached alert or worse: "
            f"{'yes' if not r.missed else 'missed ' + ', '.join(r.missed)} {verdict(r.caught.ok)}",
            highlight=False,
        )
        self._print(
            f"   benign accounts blocked or held for review: {r.benign_blocked} of {r.benign} "
            f"({r.benign_flagged} flagged for a human to look at, still served) {verdict(r.benign_served.ok)}",
            highlight=False,
        )
        self._escalation(r)
        self._refusal(r)
        self._print(
            f"   audit log: {r.audit.records} records ({r.action_records} of them policy actions, "
            f"{r.actions_taken} actions taken), {r.audit.checkpoints} signed checkpoints, chain "
            f"{_chain(r.audit)} {verdict(r.audit_chain.ok)}",
            highlight=False,
        )

    def _escalation(self, r: WatchAssessment) -> None:
        e = r.escalation
        if e.account_id is None:
            self._print(f"   no attacker went from throttled to blocked or held for review {verdict(e.check.ok)}")
            return
        felt = f"first 429 at its request {e.first_429}, " if e.first_429 else "no request hit the 10 rpm limit, "
        felt = "as served: " + felt
        throttled = "?" if e.throttled_after is None else e.throttled_after
        blocked = "?" if e.blocked_after is None else e.blocked_after
        refused = "blocked" if e.refused_as == "block" else "held for review (one family of evidence)"
        self._print(
            f"   acct {short_id(e.account_id)} ({e.persona}): throttled after its request {throttled}, "
            f"{refused} after request {blocked} of {e.requests} ({felt}first 403 at request "
            f"{e.first_403 or '-'}; the gateway re-reads enforcement every {e.enforcement_ttl:g} s) "
            f"{verdict(e.check.ok)}",
            highlight=False,
        )

    def _refusal(self, r: WatchAssessment) -> None:
        f = r.refusal
        if f.account_id is None:
            self._print(f"   no blocked or held account to try a live request with {verdict(f.check.ok)}")
            return
        self._print(
            f"   a live openai-SDK request from {'blocked' if f.action == 'block' else 'held'} acct "
            f"{short_id(f.account_id)} ({f.persona}), with a "
            f"new API key: {'403 PermissionDeniedError' if f.check.ok else 'NOT refused as expected'} "
            f"{verdict(f.check.ok)}",
            highlight=False,
        )
        self._print(f"     [italic]{f.message}[/]", highlight=False)

    # ---- stage 8 -----------------------------------------------------------------------------------------------
    @show.register
    def _customers(self, r: CustomerTraffic) -> None:
        self._print(f"   customers {', '.join(r.names)}: {r.requests} requests ({r.seconds:.1f} s)")

    @show.register
    def _harvest(self, r: Harvest) -> None:
        name, meta = ATTACKER
        self._print(
            f"   attacker [bold]{name}[/] ({meta['organisation']}, signed up for a "
            f'"{meta["use_case"]}") harvested {r.answers} answers with a scripted client '
            f"through the gateway: {r.tokens} tokens in {r.seconds:.1f} s "
            f"({r.tokens_per_s:.0f} tokens/s)",
            highlight=False,
        )
        example = r.train[0]
        self._print(
            f"   e.g. [italic]{shorten(example.prompt, 60)}[/] → [italic]{shorten(example.response, 90)}[/]",
            highlight=False,
        )

    @show.register
    def _batch(self, r: BatchMonitor) -> None:
        action = ACTION_WORDS.get(r.action, r.action) if r.action is not None else "none"
        self._print(
            f"   batch monitor scan of the audit log (the monitor of stage 7): {r.account} at level "
            f"[bold]{r.level}[/] (risk {r.risk:.2f}: {shorten(r.why, 110)}); policy action: {action} "
            f"[dim](a {r.harvest_requests}-request harvest is small; this is reported, not checked)[/]",
            highlight=False,
        )

    @show.register
    def _control(self, r: ControlData) -> None:
        self._print(
            f"   control data: {len(r.pairs)} unwatermarked answers of the same model to other "
            f"prompts ({r.seconds:.1f} s)"
        )

    @show.register
    def _distillation(self, r: Distillation) -> None:
        table = Table(title=f"8. Distillation: LoRA (last 6 blocks), {r.epochs:g} epochs, lr {r.lr:g}")
        for col in ("model", "trained on", "steps", "time", "train loss", "held-out loss*"):
            table.add_column(col)
        for s in r.students:
            held = (
                f"{s.heldout_before:.2f} → {s.heldout_after:.2f}"
                if s.heldout_before is not None and s.heldout_after is not None
                else "-"
            )
            table.add_row(
                s.name,
                f"{s.pairs} {'harvested' if s.marked else 'unmarked'}",
                str(s.steps),
                f"{s.seconds:.0f} s",
                f"{s.loss_first:.2f} → {s.loss_last:.2f}",
                held,
            )
        self._print(table)
        self._print(
            f"   [dim]* on {r.held} harvested (watermarked) pairs kept out of training; the same recipe "
            "for both students, each from a fresh copy of the teacher[/]"
        )

    @show.register
    def _scans(self, r: StudentScans) -> None:
        st, ctl = r.student, r.control
        self._print(
            f"   fed every watermarked exchange of the audit log, the attacker's and the customers' "
            f"({st.texts}; {st.tokens_scored} distinct tuples scored); candidates: all {r.accounts} "
            f"accounts of the store + {r.decoys} decoys; alpha {DEMO_ALPHA:g}",
            highlight=False,
        )
        best = st.best_account
        corrected = f" (corrected p = {best.p_corrected:.2g})" if best is not None else ""
        found = "DISTILLED from our outputs" if st.significant else "not significant"
        who = st.attributed_account
        self._print(
            f"   student:         p = {st.p_value:.2g} → {found}, attributed to "
            f"{r.names.get(who, who) if who else '-'}{corrected} {verdict(r.found.ok)}",
            highlight=False,
        )
        self._print(
            f"   control student: p = {ctl.p_value:.2g} → {'FLAGGED' if ctl.significant else 'clean'}"
            f" {verdict(r.control_clean.ok)}",
            highlight=False,
        )
        ok = r.teacher_clean.ok
        self._print(
            f"   teacher (served the marked text, never trained on it): "
            f"p = {r.teacher_p if r.teacher_p is None else format(r.teacher_p, '.2g')} → "
            f"{'clean' if ok else 'FLAGGED'} {verdict(ok)}",
            highlight=False,
        )

    @show.register
    def _closed(self, r: ClosedScan) -> None:
        found = "watermark found" if r.report.significant else "not significant"
        self._print(
            f"   closed mode (the student served unmarked on its own endpoint, as a distiller would; "
            f"{r.prompts} harvested prompts sent): p = {r.report.p_value:.2g} → {found}, "
            f"attributed to {r.attributed_name} [dim](few prompts: reported, not checked)[/]",
            highlight=False,
        )

    @show.register
    def _evidence(self, r: EvidenceWritten) -> None:
        self._print(
            f"   evidence report for {r.attacker.name} ({r.attacker.id}): [bold]{r.files.html}[/] "
            f"(+ report.json, SHA256SUMS) {verdict(r.written.ok)}",
            highlight=False,
        )
        if r.headline:
            self._print(f"     [italic]{shorten(r.headline, 200)}[/]", highlight=False)
        self._print(
            f"   audit log: {r.audit.records} records, {r.audit.checkpoints} signed checkpoints, chain "
            f"{_chain(r.audit)} {verdict(r.audit_chain.ok)}",
            highlight=False,
        )
