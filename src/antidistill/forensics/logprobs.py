"""The log-probability statistic of a closed scan: where the suspect's API returns ``top_logprobs``, score the
probability mass it puts on each candidate token rather than the one token it happened to sample.

For a scored position with context ``c`` (the ``h`` answer tokens before it) the suspect reports its top ``K``
candidates ``v`` with probabilities; renormalised over the candidates our tokenizer reads as one token, they are
weights ``w_cv`` summing to 1. Under a key, the position's score is ``sum_v w_cv s(c, v)``, where ``s`` is the
member's per-tuple score (green or not for a green list, ``-log(1 - r)`` for a sampling member): the expected
score of the suspect's next token, where the sampled-token statistic scores one draw of it. A student that learnt
the mark tilts its mass toward high-score tokens at every position, so the mass statistic sees the tilt without the
sampling noise of one draw.

**The null.** A suspect that never learnt the key puts its mass independently of the key. For a fixed key, the
scores ``s(c, v)`` of distinct tuples are i.i.d. draws of the member's null score (:meth:`Scheme.null_log_mgf`), so
with each tuple scored once (a context that recurs adds its weights to the same tuples: ``w_cv`` is summed over
every position that offered ``v`` after ``c``), the statistic ``S = sum_cv w_cv s(c, v)`` has ``log E exp(lam S) =
sum_cv psi(lam w_cv)``. The p-value is the Chernoff bound ``min over lam of
exp(sum psi(lam w) - lam S)``, which is an upper bound on the exact tail, hence valid (conservative) whatever the
weights, with no normal approximation; the weights are rounded *up* onto a geometric grid for the curvature term,
which only loosens it. Positions whose context occurs in the prompt (the suspect may copy it) and candidates our
tokenizer cannot read as one token are left out, which depends on the texts only, never on a key. The never-issued
control keys are scored the same way: their p-values are the calibration check.

Example:
    >>> from antidistill.watermark.config import WatermarkConfig
    >>> from antidistill.watermark.marker import Watermark
    >>> scheme = Watermark(WatermarkConfig(scheme="antidistill-v1")).scheme
    >>> m = MassTuples(context_width=1)
    >>> m.add_positions([(5, {1: 1.0}), (6, {7: 0.5, 8: 0.5}), (7, {9: 1.0})], prompt_contexts=())
    2
    >>> stat = mass_statistic(scheme, np.array([1, 2], dtype=np.uint64), m, vocab_size=50_000)
    >>> stat.positions, stat.candidates, bool((stat.p_values <= 1).all())
    (2, 3, True)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from antidistill.keys import WatermarkKey
from antidistill.watermark.core import U64, Scheme

#: the OpenAI API's ceiling on ``top_logprobs``
MAX_TOP_LOGPROBS = 20
#: members whose keyed draw is seeded by less than the whole context (the last token; the context's product): with
#: ``h > 1`` distinct contexts can share one draw, so the tuples would not be independent under the null
PARTIAL_SEED_SCHEMES = frozenset({"hf-lefthash", "markllm-exp"})
#: points per decade of the weight grid of the curvature term (weights are rounded up onto it: conservative)
_W_PER_DECADE = 80
#: the Chernoff bound's exponents
_LAMBDAS = np.geomspace(1e-6, 1e3, 900)

#: one position of an answer as the API gives it: (chosen token text, [(candidate text, logprob), ...])
RawPosition = tuple[str, list[tuple[str, float]]]


def parse_logprobs(content: Any) -> list[RawPosition] | None:
    """The positions of one choice's ``logprobs.content`` (an SDK object or its JSON), or ``None`` when the
    endpoint sent none. Malformed entries end the list there (what came before is kept)."""
    if content is None or isinstance(content, str | bytes | dict) or not hasattr(content, "__iter__"):
        return None
    out: list[RawPosition] = []
    for item in content:
        get = item.get if isinstance(item, dict) else lambda k, _i=item: getattr(_i, k, None)
        token, top = get("token"), get("top_logprobs")
        if not isinstance(token, str) or not isinstance(top, list):
            break
        cands: list[tuple[str, float]] = []
        for c in top:
            cget = c.get if isinstance(c, dict) else lambda k, _c=c: getattr(_c, k, None)
            t, lp = cget("token"), cget("logprob")
            if isinstance(t, str) and isinstance(lp, int | float) and math.isfinite(lp) and lp <= 0.0:
                cands.append((t, float(lp)))
        out.append((token, cands))
    return out


def parse_cached(item: Any) -> list[RawPosition] | None:
    """One text's positions as the answer cache stores them (JSON lists), or ``None``; ``TypeError`` when
    malformed."""
    if item is None:
        return None
    if not isinstance(item, list):
        raise TypeError("logprobs must be a list")
    out = [(str(tok), [(str(t), float(lp)) for t, lp in cands]) for tok, cands in item]
    if any(not (math.isfinite(lp) and lp <= 0.0) for _, cands in out for _, lp in cands):
        raise ValueError("a logprob must be finite and at most 0")
    return out


class TokenReader:
    """Our token id of a token string the suspect returned: ``token_id:N`` (vLLM's
    ``return_tokens_as_token_ids``) as given, else the text when our tokenizer encodes it as exactly one token
    (``None`` otherwise)."""

    def __init__(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        if vocab_size is None:
            try:
                vocab_size = len(tokenizer)
            except TypeError:
                vocab_size = None
        self.vocab_size = vocab_size
        self._ids: dict[str, int | None] = {}

    def __call__(self, text: str) -> int | None:
        got = self._ids.get(text, -1)
        if got != -1:
            return got
        tid: int | None = None
        if text.startswith("token_id:"):
            try:
                tid = int(text[len("token_id:") :])
            except ValueError:
                tid = None
        else:
            ids = self.tokenizer.encode(text, add_special_tokens=False) if text else []
            tid = int(ids[0]) if len(ids) == 1 else None
        limit = self.vocab_size if self.vocab_size is not None else 2**63
        if tid is not None and not 0 <= tid < limit:
            tid = None
        self._ids[text] = tid
        return tid

    def positions(self, raw: Sequence[RawPosition]) -> list[tuple[int | None, dict[int, float]]]:
        """Each position's chosen token id and its candidates' probabilities by id (merged where two strings
        read as one id)."""
        out = []
        for token, cands in raw:
            probs: dict[int, float] = {}
            for text, lp in cands:
                tid = self(text)
                if tid is not None:
                    probs[tid] = probs.get(tid, 0.0) + math.exp(lp)
            out.append((self(token), probs))
        return out


class MassTuples:
    """The scored positions of a closed scan's answers, pooled per (context, candidate): a context that recurs (in
    one answer or across answers) adds its candidates' renormalised weights to the same tuples, so every tuple is
    scored once, with the summed weight of every position that offered it.

    Args:
        context_width: the member's ``h``.
    """

    def __init__(self, context_width: int) -> None:
        self.h = context_width
        self._acc: dict[tuple[int, ...], dict[int, float]] = {}
        self.positions = 0
        self.skipped = {"prompt_context": 0, "unreadable": 0, "opening": 0}

    @property
    def contexts(self) -> list[tuple[int, ...]]:
        """The distinct contexts scored, in the order first seen."""
        return list(self._acc)

    def add_positions(
        self, positions: Sequence[tuple[int | None, Mapping[int, float]]], prompt_contexts: Collection[tuple[int, ...]]
    ) -> int:
        """Add one answer (its positions as :meth:`TokenReader.positions` gives them); returns the positions kept.
        A position counts from its ``h``-th token on, when its context is readable and not one of
        ``prompt_contexts`` (the prompt's ``h``-grams)."""
        h = self.h
        chosen = [tid for tid, _ in positions]
        kept = 0
        for t, (_, probs) in enumerate(positions):
            if t < h:
                self.skipped["opening"] += 1
                continue
            ctx = chosen[t - h : t]
            total = sum(probs.values())
            if any(c is None for c in ctx) or not total > 0.0:
                self.skipped["unreadable"] += 1
                continue
            context = tuple(int(c) for c in ctx if c is not None)
            if context in prompt_contexts:
                self.skipped["prompt_context"] += 1
                continue
            acc = self._acc.setdefault(context, {})
            for tid, p in probs.items():
                acc[tid] = acc.get(tid, 0.0) + p / total
            kept += 1
        self.positions += kept
        return kept

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(contexts (N, h) int64, tokens (N,), weights (N,)): one row per distinct (context, candidate), its weight
        summed over the positions that offered it."""
        rows = [(c, t, w) for c, cands in self._acc.items() for t, w in cands.items()]
        if not rows:
            return np.zeros((0, self.h), dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
        ctx = np.array([c for c, _, _ in rows], dtype=np.int64).reshape(len(rows), self.h)
        return ctx, np.array([t for _, t, _ in rows], dtype=np.int64), np.array([w for _, _, w in rows])


@dataclass(frozen=True)
class MassStatistic:
    """The mass statistic under a batch of keys."""

    positions: int
    candidates: int
    sums: np.ndarray
    p_values: np.ndarray
    null_mean: float
    null_var: float
    weights_sq: float

    def z(self, i: int) -> float:
        """The z-score under key ``i`` (reported; the decision uses the p-value)."""
        sd = math.sqrt(max(self.null_var * self.weights_sq, 1e-300))
        return float((self.sums[i] - self.positions * self.null_mean) / sd)


def chernoff_p(scheme: Scheme, weights: np.ndarray, sums: np.ndarray, vocab_size: int | None) -> np.ndarray:
    """Upper bounds on ``P(S >= s)`` for each ``s`` in ``sums``, where ``S = sum_i w_i X_i`` with ``X_i`` i.i.d.
    draws of the member's null tuple score (see the module docstring).

    >>> from antidistill.watermark.config import WatermarkConfig
    >>> from antidistill.watermark.marker import Watermark
    >>> s = Watermark(WatermarkConfig(scheme="antidistill-v1")).scheme
    >>> w = np.ones(100)
    >>> exact = float(s.p_value(70, 100, 50_000))          # 100 plain tuples: the bound is above the exact tail
    >>> bound = float(chernoff_p(s, w, np.array([70.0]), 50_000)[0])
    >>> exact <= bound < 1e-3
    True
    """
    sums = np.asarray(sums, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        return np.ones_like(sums)
    mean, _ = scheme.null_moments(vocab_size)
    # psi(x) = mean x + rest(x), rest >= 0 and increasing for x >= 0: the mean term exactly, the rest on weights
    # rounded up onto the grid (a larger rest only loosens the bound)
    top = max(1.0, float(w.max()))
    grid = np.geomspace(1e-6, top, int(_W_PER_DECADE * (6 + math.log10(top))) + 1)
    grid[-1] = top
    idx = np.searchsorted(grid, np.clip(w, 0.0, top), side="left")
    counts = np.bincount(np.minimum(idx, len(grid) - 1), minlength=len(grid)).astype(np.float64)
    used = counts > 0
    edges, counts = grid[used], counts[used]
    lams = _LAMBDAS / top  # exponents scaled to the largest weight (psi(lam w) must stay finite somewhere)
    lam = lams[:, None] * edges[None, :]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        rest = (
            np.asarray(scheme.null_log_mgf(lam.ravel(), vocab_size), dtype=np.float64).reshape(lam.shape) - mean * lam
        )
        phi = lams * mean * float(w.sum()) + (np.maximum(rest, 0.0) * counts[None, :]).sum(axis=1)
        log_p = phi[None, :] - lams[None, :] * sums[:, None]
    log_p = np.where(np.isfinite(log_p), log_p, np.inf)
    return np.exp(np.minimum(log_p.min(axis=1), 0.0))


def mass_statistic(
    scheme: Scheme, keys: np.ndarray, tuples: MassTuples, vocab_size: int | None, chunk_elems: int = 1 << 22
) -> MassStatistic:
    """The mass statistic's sums and Chernoff p-values under each key value in ``keys``."""
    keys = np.asarray(keys, dtype=U64).reshape(-1)
    ctx, tok, w = tuples.flat()
    sums = np.zeros(len(keys))
    if len(tok):
        step = max(1, chunk_elems // len(tok))
        for i in range(0, len(keys), step):
            sums[i : i + step] = scheme.pair_scores(keys[i : i + step], ctx, tok, vocab_size) @ w
    mean, var = scheme.null_moments(vocab_size)
    p = chernoff_p(scheme, w, sums, vocab_size)
    return MassStatistic(tuples.positions, len(tok), sums, p, mean, var, float((w * w).sum()))


def mass_report(
    scheme: Scheme,
    tuples: MassTuples,
    provider: Sequence[WatermarkKey],
    accounts: Mapping[str, Sequence[WatermarkKey]],
    controls: Sequence[WatermarkKey],
    vocab_size: int | None,
    alpha: float,
) -> dict[str, Any]:
    """The mass statistic for the provider keys, every account (its smallest p over its key versions, corrected
    for the versions and the accounts, as the sampled-token scan corrects) and the never-issued control keys."""
    names: list[tuple[str, WatermarkKey]] = [("provider", k) for k in provider]
    names += [(a, k) for a, ks in accounts.items() for k in ks]
    names += [("control", k) for k in controls]
    stat = mass_statistic(scheme, np.array([k.value for _, k in names], dtype=U64), tuples, vocab_size)
    by: dict[str, list[int]] = {}
    for i, (who, _) in enumerate(names):
        by.setdefault(who, []).append(i)

    def best(idx: list[int]) -> tuple[float, int]:
        i = min(idx, key=lambda j: stat.p_values[j])
        return min(1.0, float(stat.p_values[i]) * len(idx)), i

    out: dict[str, Any] = {
        "statistic": "top-logprob mass (Chernoff bound on the member's null)",
        "positions": stat.positions,
        "candidates": stat.candidates,
        "skipped": dict(tuples.skipped),
        "provider": None,
        "accounts": [],
        "controls": [],
    }
    if "provider" in by:
        p, i = best(by["provider"])
        out["provider"] = {"p_value": p, "z": stat.z(i), "key_id": names[i][1].key_id}
    accts = [a for a in accounts if a in by]
    rows = []
    for a in accts:
        p, i = best(by[a])
        rows.append(
            {
                "account": a,
                "p_value": p,
                "p_corrected": min(1.0, p * len(accts)),
                "z": stat.z(i),
                "key_id": names[i][1].key_id,
            }
        )
    out["accounts"] = sorted(rows, key=lambda r: r["p_value"])
    ctl = [float(stat.p_values[i]) for i in by.get("control", [])]
    out["controls"] = {
        "keys": len(ctl),
        "smallest_p": min(ctl) if ctl else None,
        "below_alpha": sum(p <= alpha for p in ctl),
    }
    top = out["accounts"][0] if out["accounts"] else None
    out["attributed_account"] = top["account"] if top is not None and top["p_corrected"] <= alpha else None
    out["p_value"] = (out["provider"] or {}).get("p_value")
    return out


def gather(
    reader: TokenReader,
    tuples: MassTuples,
    answers: Iterable[tuple[Collection[tuple[int, ...]], Sequence[RawPosition] | None]],
) -> int:
    """Add each ``(prompt contexts, raw positions)`` answer to ``tuples``; returns the answers that had logprobs."""
    n = 0
    for grams, raw in answers:
        if raw is None:
            continue
        n += 1
        tuples.add_positions(reader.positions(raw), grams)
    return n
