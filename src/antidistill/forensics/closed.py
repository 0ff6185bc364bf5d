"""A closed-mode scan's run: the requests in scoring order, their answers scored as they come, a pilot and its
budget plan, and optional early stopping on the anytime-valid p-value.

Answers arrive in any order (many requests in flight); they are scored in *plan order* (prompt by prompt, sample
by sample): an answer waits until every one before it has arrived. So the tuple stream, the sequential test and its
stopping point depend only on the answers, never on timing, and a re-run from the cache replays them exactly.

Stopping rule: with ``stop_at`` the run stops after the first answer at which the sequential p-value
(:mod:`antidistill.forensics.sequential`) is at most ``stop_at``; that p-value is valid at this data-dependent
time, the fixed-n exact p-value is not (it assumes the number of answers was fixed in advance). Without
``stop_at`` every request is made and both are valid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from antidistill.errors import InputError
from antidistill.forensics.endpoint import Answer, AnswerCache, Ask, Params, Querier, answers
from antidistill.forensics.planner import BudgetPlan, Pilot, plan_budget
from antidistill.forensics.sequential import SequentialResult, SequentialScan, combine_sequential
from antidistill.keys import WatermarkKey
from antidistill.watermark.config import WatermarkConfig

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class ScanProgress:
    """Where a closed scan stands, for a progress line."""

    done: int
    total: int
    cached: int
    tokens: int
    tuples: int
    p_sequential: float


@dataclass(frozen=True)
class RunOptions:
    """How a closed scan queries and when it stops.

    Args:
        concurrency: requests in flight.
        cache_dir: the answer cache's directory (``None``: no cache on disk).
        from_cache: send nothing; every answer must be in the cache.
        stop_at: stop once the sequential p-value is at most this (``None``: the whole budget).
        pilot: prompts of the pilot (0: no plan).
        target_p, price_per_1k: the plan's target p-value and the suspect's price per 1,000 completion tokens.
        plan_only: stop after the pilot's plan.
        progress: called after each answer scored; on_plan: called with the plan after the pilot.
    """

    concurrency: int = 8
    cache_dir: Path | None = None
    from_cache: bool = False
    stop_at: float | None = None
    pilot: int = 0
    target_p: float = 1e-6
    price_per_1k: float | None = None
    plan_only: bool = False
    progress: Callable[[ScanProgress], None] | None = None
    on_plan: Callable[[BudgetPlan], None] | None = None

    def check(self) -> None:
        if self.concurrency < 1:
            raise InputError(f"concurrency must be >= 1, got {self.concurrency}")
        for name, v in (("stop_at", self.stop_at), ("target_p", self.target_p)):
            if v is not None and not 0.0 < v < 1.0:
                raise InputError(f"{name} must be in (0, 1), got {v}")
        if self.pilot < 0 or (self.plan_only and self.pilot == 0):
            raise InputError("plan_only needs a pilot of at least one prompt")


class StreamScorer:
    """Scores answers in plan order: the tuple selection of every configuration and its sequential test.

    Args:
        select: ``(prompt, texts, context width) -> (contexts, tokens)`` per text: the new tuples of a completion
            (the closed scan's selection, with its tokenizer and prompt n-grams).
        configs: the configurations the completions are scored under.
        provider, accounts, clusters, vocab_size: the keys (as
            :class:`~antidistill.forensics.sequential.SequentialScan` takes them).
    """

    def __init__(
        self,
        select: Callable[[Ask, str, WatermarkConfig], Any],
        configs: Sequence[WatermarkConfig],
        provider: Sequence[WatermarkKey],
        accounts: dict[str, list[WatermarkKey]],
        clusters: dict[str, list[str]],
        vocab_size: int | None,
    ) -> None:
        self.select = select
        self.configs = list(configs)
        self.tests = [SequentialScan(c, provider, accounts, clusters, vocab_size) for c in self.configs]

    def add(self, ask: Ask, answer: Answer) -> None:
        for text in answer.texts:
            for cfg, test in zip(self.configs, self.tests, strict=True):
                test.update(*self.select(ask, text, cfg))

    def result(self) -> SequentialResult:
        return combine_sequential(self.tests)

    def pilot(self, queries: int, tokens: int) -> tuple[Pilot, Any]:
        """The planning key's pilot statistics (first configuration) and its e-process."""
        test = self.tests[0]
        e, i, tests = test.planning_stream()
        mean, sd = e.mean_sd(i)
        null_mean, null_var = test.wm.scheme.null_moments(test.vocab_size)
        share = int(e.n[i]) / max(test.tuples, 1)
        pilot = Pilot(int(e.n[i]), mean, sd, null_mean, null_var**0.5, share, test.tuples, queries, tokens, tests)
        return pilot, e


@dataclass
class Collected:
    """The answers a run scored, in plan order, and what the run cost."""

    asks: list[Ask] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    stopped_early: bool = False
    plan: BudgetPlan | None = None
    retries: int = 0

    @property
    def tokens(self) -> int:
        return sum(a.completion_tokens for a in self.answers)

    @property
    def cached(self) -> int:
        return sum(a.cached for a in self.answers)

    def by_prompt(self, prompts: Sequence[str | Messages]) -> tuple[list[str | Messages], list[list[str]]]:
        """The prompts answered (in order) and their completion texts."""
        used = sorted({a.prompt_index for a in self.asks})
        texts: dict[int, list[str]] = {i: [] for i in used}
        for ask, ans in zip(self.asks, self.answers, strict=True):
            texts[ask.prompt_index].extend(ans.texts)
        return [prompts[i] for i in used], [texts[i] for i in used]


class ClosedRun:
    """One closed scan's querying and scoring (see the module docstring).

    Args:
        asks: every request in plan order; cache, params, querier: where answers come from (``querier`` ``None``:
            the cache alone); scorer: the stream scorer; options: the run's options.
    """

    def __init__(
        self,
        asks: Sequence[Ask],
        cache: AnswerCache,
        params: Params,
        querier: Querier | None,
        scorer: StreamScorer,
        options: RunOptions,
    ) -> None:
        self.asks, self.cache, self.params, self.querier = list(asks), cache, params, querier
        self.scorer, self.opts = scorer, options
        self.out = Collected()

    def run(self, samples: int) -> Collected:
        """Query and score: the pilot (and its plan) first, then the rest unless stopped."""
        cut = min(self.opts.pilot * samples, len(self.asks))
        stopped = self._segment(0, cut) if cut else False
        if cut:
            pilot, e = self.scorer.pilot(len(self.out.answers), self.out.tokens)
            self.out.plan = plan_budget(pilot, e, self.opts.target_p, self.opts.price_per_1k)
            if self.opts.on_plan is not None:
                self.opts.on_plan(self.out.plan)
            if self.opts.plan_only:
                return self.out
        if not stopped:
            self._segment(cut, len(self.asks))
        self.out.retries = self.querier.retries if self.querier is not None else 0
        return self.out

    def _segment(self, start: int, stop: int) -> bool:
        """Score the answers of ``asks[start:stop]`` in plan order; True when the stopping rule fired."""
        it = answers(self.asks[start:stop], self.cache, self.params, self.querier, self.opts.concurrency)
        try:
            for ask, ans in _in_order(it, self.asks[start:stop]):
                if self._take(ask, ans):
                    self.out.stopped_early = True
                    return True
        finally:
            it.close()
        return False

    def _take(self, ask: Ask, answer: Answer) -> bool:
        self.scorer.add(ask, answer)
        self.out.asks.append(ask)
        self.out.answers.append(answer)
        seq = self.scorer.result()
        if self.opts.progress is not None:
            o = self.out
            self.opts.progress(
                ScanProgress(len(o.answers), len(self.asks), o.cached, o.tokens, seq.tuples, seq.p_value)
            )
        return self.opts.stop_at is not None and seq.p_value <= self.opts.stop_at


def _in_order(items: Iterator[tuple[int, Answer]], asks: Sequence[Ask]) -> Iterator[tuple[Ask, Answer]]:
    """Release ``(index, answer)`` pairs arriving in any order as the contiguous prefix grows."""
    waiting: dict[int, Answer] = {}
    nxt = 0
    for i, ans in items:
        waiting[i] = ans
        while nxt in waiting:
            yield asks[nxt], waiting.pop(nxt)
            nxt += 1
