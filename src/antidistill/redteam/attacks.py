"""Attacks of an informed distiller on the watermark: paraphrase, neutralisation, green-bigram filtering.

antidistill is open source, so a distiller knows how answers are marked, only not the keys. These are the attacks
such a distiller runs on a harvest before (or while) training a student, so that the defence is measured against
them (``benchmarks/distill_attacks.py``, ``docs/robustness.md``):

* **paraphrase** (Pan et al. 2025, "Can LLM watermarks robustly prevent unauthorized knowledge distillation?",
  https://arxiv.org/abs/2502.11598; Kirchenbauer et al. 2023's paraphrase attack): every harvested answer is
  rewritten by an *unmarked* model before training, keeping the prompt. :func:`paraphrase_pairs`.
* **neutralisation** (Pan et al. 2025; the estimate follows Jovanović et al. 2024, "Watermark stealing in large
  language models", https://arxiv.org/abs/2402.19361): a green-list mark with context width ``h`` raises the
  frequency of the green tokens after each ``h``-token prefix. Comparing the next-token counts of the harvest with
  those of unmarked text *of the same kind* (the unmarked model's answers to the same prompts, or another source)
  estimates, for each frequent prefix, which tokens it favours and by how much (:func:`estimate_green`). The
  estimate is then used against the mark: to mask the training loss on estimated-green tokens
  (:meth:`GreenEstimate.positions`, ``distill train --mask-green``), to drop answers rich in them
  (:func:`filter_pairs`, the bigram filter), or to decode the student with a reverse bias ``-delta'`` on them
  (:class:`ReverseBias`, :class:`ReverseBiasedLM`; Pan et al. use ``delta' = 2.5``).

The estimator is a one-sided Fisher exact test per (prefix, token) pair: given the prefix's counts in the harvest
(``n_H``) and in the reference (``n_R``) and the pair's total count ``m``, the pair's harvest count is
hypergeometric under "the token is as frequent after this prefix in both" (no mark). A pair is flagged when that
test rejects at ``alpha`` and its smoothed log frequency ratio (the estimated bias, in logits) is positive. On
unmarked text of the same distribution as the reference, at most an ``alpha`` share of the tested pairs is flagged
in expectation (the test is exact, and conservative, when tokens are independent draws given their prefix; the
repetitions of real answers make it only approximately so). Pure functions over token ids: no model needed.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from antidistill.errors import InputError
from antidistill.redteam.data import Pair

#: the template of the paraphrase attack: the unmarked model is asked to rewrite each harvested answer
PARAPHRASE_TEMPLATE = (
    "Rewrite the following answer in your own words. Keep every fact and its meaning, change the wording. "
    "Reply with the rewritten answer only.\n\nAnswer:\n{text}"
)
#: Pan et al. 2025's reverse bias for neutralisation decoding
DEFAULT_REVERSE_DELTA = 2.5
DEFAULT_ALPHA = 1e-3
ESTIMATE_FORMAT = "antidistill-green-estimate/1"


# ---- paraphrase ---------------------------------------------------------------------------------------------
def paraphrase_pairs(
    model: Any,
    pairs: Sequence[Pair],
    *,
    template: str = PARAPHRASE_TEMPLATE,
    batch_size: int = 16,
    max_new_tokens: int = 192,
    temperature: float = 0.7,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Pair]:
    """Each pair's answer rewritten by an unmarked model; the prompt is kept.

    Args:
        model: a :class:`~antidistill.models.local.LocalModel` (or anything with its ``generate``); every row is
            generated without a mark.
        pairs: the harvest.
        template: the paraphrase request, with ``{text}`` where the answer goes.
        batch_size: answers rewritten per ``generate`` call (answers of similar length are batched together).
        max_new_tokens: the longest rewrite.
        temperature: sampling temperature of the rewrite.
        seed: seeds each batch (batch ``b`` uses ``seed + b``).
        on_progress: called as ``on_progress(done, total)`` after each batch.

    Returns:
        The pairs in their order, each with the rewrite as its response, its own ``finish_reason``, and the record
        fields ``attack: "paraphrase"`` and ``original_response``.

    Example:
        >>> lm = LocalModel.load()                                        # doctest: +SKIP
        >>> paraphrase_pairs(lm, [Pair("Hi?", "Hello there.")])[0].prompt  # doctest: +SKIP
        'Hi?'
    """
    if "{text}" not in template:
        raise InputError("the paraphrase template must contain {text}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].response))
    out: list[Pair | None] = [None] * len(pairs)
    for b, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        asks = [template.replace("{text}", pairs[i].response) for i in idx]
        got = model.generate(
            asks, [None] * len(asks), max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + b
        )
        for i, c in zip(idx, got, strict=True):
            p = pairs[i]
            rec = dict(p.record)
            rec.update(attack="paraphrase", original_response=p.response)
            out[i] = replace(p, response=c.text.strip(), finish_reason=c.finish_reason, record=rec)
        if on_progress is not None:
            on_progress(min(start + batch_size, len(order)), len(order))
    return [p for p in out if p is not None]


def answer_pairs(
    model: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    seed: int = 0,
    extra: Sequence[Any] = (),
    record: dict[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Pair]:
    """A model's own, unmarked answers to ``prompts``: the reference for :func:`estimate_green`, or a student's
    answers (``extra`` logits processors, e.g. :class:`ReverseBias`: Pan et al.'s neutralisation decoding).
    ``record`` is kept with every pair (default ``{"attack": "reference"}``)."""
    out: list[Pair] = []
    rec = record if record is not None else {"attack": "reference"}
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = list(prompts[start : start + batch_size])
        got = model.generate(
            chunk, [None] * len(chunk), max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + b,
            **({"logits_processor_extra": list(extra)} if extra else {}),
        )  # fmt: skip
        out += [Pair(p, c.text, c.finish_reason, record=dict(rec)) for p, c in zip(chunk, got, strict=True)]
        if on_progress is not None:
            on_progress(len(out), len(prompts))
    return out


# ---- neutralisation: the estimate ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GreenPair:
    """One (prefix, token) pair estimated to be green.

    Args:
        prefix: the ``h`` token ids before the token.
        token: the token id.
        bias: the estimated logit bias: ``log`` of the token's smoothed frequency after the prefix in the harvest
            over the same in the reference.
        p_value: the one-sided Fisher exact test's p-value.
        harvest_count: occurrences of the pair in the harvest.
        reference_count: occurrences of the pair in the reference.
    """

    prefix: tuple[int, ...]
    token: int
    bias: float
    p_value: float
    harvest_count: int
    reference_count: int


@dataclass
class GreenEstimate:
    """The estimated-green pairs of a harvest, per context width, and what was tested.

    Args:
        context_widths: the prefix lengths ``h`` estimated.
        alpha: the per-pair level of the test.
        min_count: least harvest occurrences of a pair for it to be tested.
        pairs: the flagged pairs, strongest bias first.
        tested: pairs tested per width (``str(h)`` -> count): the expected false flags are at most
            ``alpha * tested`` on unmarked text.
        harvest_tokens: answer tokens in the harvest.
        reference_tokens: answer tokens in the reference.
        reference: a word on where the reference came from.

    Example:
        >>> h, r = [[1, 2, 1, 2, 1, 2, 1, 2]], [[1, 3, 1, 4, 1, 5, 1, 6]]
        >>> est = estimate_green(h, r, (1,), alpha=0.05, min_reference_prefix=1)
        >>> [(p.prefix, p.token) for p in est.pairs]
        [((1,), 2)]
    """

    context_widths: tuple[int, ...]
    alpha: float
    min_count: int
    pairs: list[GreenPair]
    tested: dict[str, int]
    harvest_tokens: int
    reference_tokens: int
    reference: str = ""
    _index: dict[tuple[int, ...], np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)
    _set_index: dict[tuple[int, ...], set[int]] | None = field(default=None, init=False, repr=False, compare=False)

    def index(self) -> dict[tuple[int, ...], np.ndarray]:
        """prefix -> the token ids estimated green after it (all widths together)."""
        if self._index is None:
            groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for p in self.pairs:
                groups[p.prefix].append(p.token)
            self._index = {k: np.array(sorted(set(v)), dtype=np.int64) for k, v in groups.items()}
        return self._index

    def _sets(self) -> dict[tuple[int, ...], set[int]]:
        if self._set_index is None:
            self._set_index = {p: set(v.tolist()) for p, v in self.index().items()}
        return self._set_index

    def positions(self, ids: Sequence[int], start: int = 0) -> np.ndarray:
        """(len(ids),) bool: True where ``ids[j]`` follows a prefix (of any width, inside ``ids[start:]``) after
        which it is estimated green."""
        keyed = self._sets()
        out = np.zeros(len(ids), dtype=bool)
        seq = [int(t) for t in ids]
        for h in self.context_widths:
            for j in range(start + h, len(seq)):
                toks = keyed.get(tuple(seq[j - h : j]))
                if toks is not None and seq[j] in toks:
                    out[j] = True
        return out

    def share(self, ids: Sequence[int]) -> float:
        """The share of the scorable tokens of ``ids`` (after the first ``min(h)``) that are estimated green."""
        h = min(self.context_widths)
        if len(ids) <= h:
            return 0.0
        return float(self.positions(ids)[h:].mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ESTIMATE_FORMAT,
            "context_widths": list(self.context_widths),
            "alpha": self.alpha,
            "min_count": self.min_count,
            "tested": dict(self.tested),
            "harvest_tokens": self.harvest_tokens,
            "reference_tokens": self.reference_tokens,
            "reference": self.reference,
            "flagged": {str(h): sum(1 for p in self.pairs if len(p.prefix) == h) for h in self.context_widths},
            "pairs": [
                {
                    "prefix": list(p.prefix),
                    "token": p.token,
                    "bias": round(p.bias, 4),
                    "p_value": p.p_value,
                    "harvest_count": p.harvest_count,
                    "reference_count": p.reference_count,
                }
                for p in self.pairs
            ],
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "estimate") -> GreenEstimate:
        if not isinstance(d, dict) or d.get("format") != ESTIMATE_FORMAT:
            raise InputError(f"{where}: not a green-pair estimate (format {ESTIMATE_FORMAT!r})")
        try:
            widths = tuple(int(h) for h in d["context_widths"])
            pairs = [
                GreenPair(
                    tuple(int(t) for t in p["prefix"]),
                    int(p["token"]),
                    float(p["bias"]),
                    float(p["p_value"]),
                    int(p["harvest_count"]),
                    int(p["reference_count"]),
                )
                for p in d["pairs"]
            ]
            est = cls(
                widths,
                float(d["alpha"]),
                int(d["min_count"]),
                pairs,
                {str(k): int(v) for k, v in d["tested"].items()},
                int(d["harvest_tokens"]),
                int(d["reference_tokens"]),
                str(d.get("reference", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed estimate ({type(exc).__name__}: {exc})") from None
        if any(len(p.prefix) not in widths for p in pairs):
            raise InputError(f"{where}: a pair's prefix length is not among its context_widths")
        return est

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GreenEstimate:
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {p}: {type(exc).__name__}: {exc}") from None
        except ValueError:
            raise InputError(f"{p}: not valid JSON") from None
        return cls.from_dict(d, str(p))


def _counts(seqs: Iterable[Sequence[int]], h: int) -> tuple[Counter[tuple[int, ...]], Counter[tuple[int, ...]]]:
    """``(pair counts, prefix counts)``: ``pair`` is ``prefix + (token,)``, every position ``j >= h`` of each
    sequence (the answer-context rule: the first ``h`` tokens of an answer have no mark)."""
    pairs: Counter[tuple[int, ...]] = Counter()
    for s in seqs:
        seq = [int(t) for t in s]
        pairs.update(tuple(seq[j - h : j + 1]) for j in range(h, len(seq)))
    prefixes: Counter[tuple[int, ...]] = Counter()
    for k, c in pairs.items():
        prefixes[k[:-1]] += c
    return pairs, prefixes


def _widths(context_widths: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(dict.fromkeys(int(h) for h in context_widths))
    if not widths or any(not 1 <= h <= 4 for h in widths):
        raise InputError(f"context widths must be in [1, 4], got {list(context_widths)}")
    return widths


def _estimate(
    widths: tuple[int, ...],
    alpha: float,
    min_count: int,
    found: list[GreenPair],
    tested: dict[str, int],
    harvest: Sequence[Sequence[int]],
    reference: Sequence[Sequence[int]],
    reference_name: str,
) -> GreenEstimate:
    """The estimate, strongest bias first."""
    found.sort(key=lambda p: (-p.bias, p.p_value, p.prefix, p.token))
    return GreenEstimate(
        widths,
        alpha,
        min_count,
        found,
        tested,
        sum(len(s) for s in harvest),
        sum(len(s) for s in reference),
        reference_name,
    )


def estimate_green(
    harvest: Sequence[Sequence[int]],
    reference: Sequence[Sequence[int]],
    context_widths: Sequence[int] = (1, 2),
    *,
    alpha: float = DEFAULT_ALPHA,
    min_count: int = 3,
    min_reference_prefix: int = 5,
    reference_name: str = "",
) -> GreenEstimate:
    """Estimate the green (prefix, token) pairs of a harvest against unmarked reference text.

    Args:
        harvest: token ids of the harvested answers (the answers only, no prompt).
        reference: token ids of unmarked answers of the same kind.
        context_widths: the prefix lengths ``h`` to estimate (1 and 2: the mark's context width is public, but a
            distiller may not know the deployment's).
        alpha: per-pair level of the one-sided Fisher test.
        min_count: a pair is tested only if it occurs at least this often in the harvest.
        min_reference_prefix: ... and its prefix at least this often in the reference (else nothing to compare).
        reference_name: recorded in the estimate.

    Returns:
        The flagged pairs (strongest estimated bias first) and the counts of pairs tested.
    """
    from scipy.stats import hypergeom

    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    if min_count < 1:
        raise InputError(f"min_count must be >= 1, got {min_count}")
    widths = _widths(context_widths)
    found: list[GreenPair] = []
    tested: dict[str, int] = {}
    for h in widths:
        hp, hpre = _counts(harvest, h)
        rp, rpre = _counts(reference, h)
        keys = [k for k, c in hp.items() if c >= min_count and rpre.get(k[:-1], 0) >= min_reference_prefix]
        tested[str(h)] = len(keys)
        if not keys:
            continue
        x = np.array([hp[k] for k in keys], dtype=np.int64)
        y = np.array([rp.get(k, 0) for k in keys], dtype=np.int64)
        nh = np.array([hpre[k[:-1]] for k in keys], dtype=np.int64)
        nr = np.array([rpre[k[:-1]] for k in keys], dtype=np.int64)
        # P(X >= x) for X ~ Hypergeom(population nh + nr, successes x + y, draws nh): one-sided Fisher
        pv = hypergeom.sf(x - 1, nh + nr, x + y, nh)
        bias = np.log((x + 0.5) / (nh + 0.5)) - np.log((y + 0.5) / (nr + 0.5))
        for i in np.flatnonzero((pv <= alpha) & (bias > 0)):
            k = keys[int(i)]
            found.append(GreenPair(k[:-1], k[-1], float(bias[i]), float(pv[i]), int(x[i]), int(y[i])))
    return _estimate(widths, alpha, min_count, found, tested, harvest, reference, reference_name)


#: the before/after estimate: least mean next-token probability under the student for a token to be a candidate
DEFAULT_MIN_PROB = 1e-3
#: ... and least centred log-probability shift (nats) for it to be flagged
DEFAULT_MIN_SHIFT = 0.2


def _flag_shifts(
    a: dict[str, Any] | None,
    prefixes: dict[int, tuple[int, ...]],
    min_count: int,
    min_prob: float,
    min_shift: float,
    alpha: float,
    found: list[GreenPair],
) -> int:
    """Append to ``found`` the pairs of one width whose centred mean shift passes; returns the candidates tested."""
    from scipy.stats import t as student_t

    if a is None:
        return 0
    tested = 0
    for k, n in enumerate(a["n"].tolist()):
        if n < min_count:
            continue
        mean = (a["sum"][k] / n).numpy()
        prob = (a["prob"][k] / n).numpy()
        var = np.maximum((a["sq"][k] / n).numpy() - mean * mean, 0.0) * n / (n - 1)
        cand = np.flatnonzero(prob >= min_prob)
        tested += len(cand)
        se = np.sqrt(var[cand] / n)
        tstat = np.where(se > 0, mean[cand] / np.maximum(se, 1e-12), np.where(mean[cand] > 0, np.inf, 0.0))
        pv = student_t.sf(tstat, n - 1)
        for c, p in zip(cand.tolist(), pv.tolist(), strict=True):
            if mean[c] >= min_shift and p <= alpha:
                found.append(GreenPair(prefixes[k], int(c), float(mean[c]), float(p), int(n), 0))
    return tested


def estimate_green_shift(
    before: Callable[..., Any],
    after: Callable[..., Any],
    tokenizer: Any,
    pairs: Sequence[Pair],
    context_widths: Sequence[int] = (1, 2),
    *,
    alpha: float = DEFAULT_ALPHA,
    min_count: int = 5,
    min_prob: float = DEFAULT_MIN_PROB,
    min_shift: float = DEFAULT_MIN_SHIFT,
    max_prefixes: int = 256,
    max_len: int = 256,
    batch_size: int = 8,
) -> GreenEstimate:
    """Estimate the green (prefix, token) pairs a student learnt, from the student before and after distillation
    (Pan et al. 2025's estimate for neutralisation decoding): no unmarked reference text is needed.

    At every answer position of ``pairs`` (the harvest the student was trained on, prompts through the chat
    template) both models give their next-token log-probabilities; the shift ``log p_after - log p_before`` is
    averaged over the positions that follow each of the ``max_prefixes`` most frequent ``h``-token prefixes (seen at
    least ``min_count`` times; the first ``h`` answer tokens are never marked, so never counted). A green list
    raises every green token after its prefix by the same logit, so the shift is centred on its median over the
    vocabulary (what training moved for every token alike), and a token is flagged when its centred mean shift is at
    least ``min_shift`` and a one-sided t-test over the positions rejects "no shift" at ``alpha``. Only tokens the
    student gives a mean probability of at least ``min_prob`` after the prefix are candidates: a reverse bias on the
    others changes nothing the student samples. Content the student memorised moves the same way as the mark, so
    some flagged pairs are not green; that costs the distiller quality, not the estimate's use.

    Args:
        before: the model before distillation (called as ``model(input_ids=, attention_mask=)``, ``.logits``).
        after: the student.
        tokenizer: the tokenizer both share.
        pairs: prompt/answer pairs whose answer positions are read.
        context_widths: the prefix lengths ``h`` (1-4).
        alpha: the t-test's per-pair level.
        min_count: least positions after a prefix.
        min_prob: least mean student probability of a candidate token.
        min_shift: least centred mean shift (nats) of a flagged token.
        max_prefixes: the most frequent prefixes read per width (memory: three vocabulary-sized rows each).
        max_len: longest prompt + answer read.
        batch_size: sequences per forward pass.

    Returns:
        A :class:`GreenEstimate`: ``bias`` is the centred mean shift, ``harvest_count`` the positions read after the
        prefix, ``reference_count`` 0; ``tested`` counts the candidate pairs per width.
    """
    import torch

    from antidistill.redteam.train import collate, encode_pairs, length_batches

    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    if min_count < 2:
        raise InputError(f"min_count must be >= 2 (a t-test needs two positions), got {min_count}")
    if not 0.0 <= min_prob < 1.0 or min_shift < 0 or max_prefixes < 1:
        raise InputError("min_prob must be in [0, 1), min_shift >= 0 and max_prefixes >= 1")
    widths = _widths(context_widths)
    examples = encode_pairs(tokenizer, pairs, max_len)
    # the answer part of each example (labels != -100 from the first answer token on)
    starts = [next((i for i, t in enumerate(e.labels) if t != -100), len(e.labels)) for e in examples]
    answers = [e.input_ids[s:] for e, s in zip(examples, starts, strict=True)]
    chosen: dict[int, dict[tuple[int, ...], int]] = {}
    for h in widths:
        _, pre = _counts(answers, h)
        top = [k for k, c in pre.most_common(max_prefixes) if c >= min_count]
        chosen[h] = {k: i for i, k in enumerate(top)}
    acc: dict[int, dict[str, Any]] = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        for idx in length_batches(examples, batch_size):
            ids, mask, _ = collate([examples[i] for i in idx], int(pad))
            lb = torch.log_softmax(before(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            la = torch.log_softmax(after(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            vocab = la.shape[-1]
            for row, i in enumerate(idx):
                s, ans = starts[i], answers[i]
                # the logits at position s + j - 1 predict answer token j: every position of the answer at once
                lp = la[row, s - 1 : s - 1 + len(ans)].double()
                d = lp - lb[row, s - 1 : s - 1 + len(ans)].double()
                d = d - d.median(dim=-1, keepdim=True).values
                for h in widths:
                    hit = [(j, chosen[h].get(tuple(ans[j - h : j]))) for j in range(h, len(ans))]
                    hit = [(j, k) for j, k in hit if k is not None]
                    if not hit:
                        continue
                    a = acc.setdefault(h, {
                        "n": torch.zeros(len(chosen[h]), dtype=torch.int64),
                        "sum": torch.zeros(len(chosen[h]), vocab, dtype=torch.float64),
                        "sq": torch.zeros(len(chosen[h]), vocab, dtype=torch.float64),
                        "prob": torch.zeros(len(chosen[h]), vocab, dtype=torch.float64),
                    })  # fmt: skip
                    js = torch.tensor([j for j, _ in hit])
                    ks = torch.tensor([k for _, k in hit])
                    a["n"].index_add_(0, ks, torch.ones_like(ks))
                    a["sum"].index_add_(0, ks, d[js])
                    a["sq"].index_add_(0, ks, d[js] * d[js])
                    a["prob"].index_add_(0, ks, lp[js].exp())
    found: list[GreenPair] = []
    tested: dict[str, int] = {}
    for h in widths:
        inv = {v: k for k, v in chosen[h].items()}
        tested[str(h)] = _flag_shifts(acc.get(h), inv, min_count, min_prob, min_shift, alpha, found)
    where = "the student before and after distillation, on the harvest's answer positions"
    return _estimate(widths, alpha, min_count, found, tested, answers, [], where)


def encode_answers(tokenizer: Any, pairs: Sequence[Pair]) -> list[list[int]]:
    """The token ids of each pair's answer, as training sees them (no special tokens)."""
    if not pairs:
        return []
    out = tokenizer([p.response for p in pairs], add_special_tokens=False)["input_ids"]
    return [list(map(int, ids)) for ids in out]


# ---- neutralisation: using the estimate -----------------------------------------------------------------------
@dataclass(frozen=True)
class FilterResult:
    """What :func:`filter_pairs` kept and dropped, and the green share of each answer."""

    kept: list[Pair]
    dropped: list[Pair]
    shares: list[float]


def filter_pairs(pairs: Sequence[Pair], tokenizer: Any, estimate: GreenEstimate, max_share: float) -> FilterResult:
    """Drop the answers whose share of estimated-green tokens exceeds ``max_share`` (the bigram filter).

    Example:
        >>> r = filter_pairs(pairs, tok, estimate_green(h_ids, r_ids), 0.15)  # doctest: +SKIP
        >>> len(r.kept) + len(r.dropped) == len(pairs)                      # doctest: +SKIP
        True
    """
    if not 0.0 <= max_share <= 1.0:
        raise InputError(f"max_share must be in [0, 1], got {max_share}")
    shares = [estimate.share(ids) for ids in encode_answers(tokenizer, pairs)]
    kept = [p for p, s in zip(pairs, shares, strict=True) if s <= max_share]
    dropped = [p for p, s in zip(pairs, shares, strict=True) if s > max_share]
    return FilterResult(kept, dropped, shares)


def loss_mask(estimate: GreenEstimate) -> Callable[[Sequence[int]], np.ndarray]:
    """For ``train_student(loss_mask=...)``: answer token ids -> True where the loss is dropped (estimated green)."""

    def mask(ids: Sequence[int]) -> np.ndarray:
        return estimate.positions(ids)

    return mask


class ReverseBias:
    """A logits processor that subtracts ``delta`` from the estimated-green tokens after each row's last ``h``
    tokens: Pan et al. 2025's neutralisation decoding, for a student's ``generate`` (e.g.
    ``LocalModel.generate(..., logits_processor_extra=[ReverseBias(est)])``).

    Args:
        estimate: the estimated-green pairs.
        delta: the reverse bias ``delta'`` (logits).

    Example:
        >>> import torch
        >>> est = GreenEstimate((1,), 0.01, 1, [GreenPair((5,), 2, 1.0, 0.0, 9, 1)], {"1": 1}, 10, 10)
        >>> ReverseBias(est, 2.5)(torch.tensor([[7, 5]]), torch.zeros(1, 4))[0].tolist()
        [0.0, 0.0, -2.5, 0.0]
    """

    def __init__(self, estimate: GreenEstimate, delta: float = DEFAULT_REVERSE_DELTA) -> None:
        if not delta >= 0:
            raise InputError(f"delta must be >= 0, got {delta}")
        self.estimate = estimate
        self.delta = float(delta)
        self._index = estimate.index()

    def bias_rows(self, rows: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
        """(len(rows), V) float32: ``-delta`` on the tokens estimated green after each row's last tokens."""
        out = np.zeros((len(rows), vocab_size), dtype=np.float32)
        for r, row in enumerate(rows):
            for h in self.estimate.context_widths:
                if len(row) < h:
                    continue
                toks = self._index.get(tuple(int(t) for t in row[len(row) - h :]))
                if toks is not None:
                    out[r, toks[toks < vocab_size]] = -self.delta
        return out

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        rows = input_ids.tolist()
        bias = torch.from_numpy(self.bias_rows(rows, int(scores.shape[-1])))
        return scores + bias.to(scores.dtype)


class ReverseBiasedLM:
    """A causal LM whose logits carry the reverse bias at every position: the distribution a student served with
    :class:`ReverseBias` samples from, as an open-mode scan reads it (``scan_open(ReverseBiasedLM(m, est), ...)``).

    Args:
        model: the student (called as ``model(input_ids=, attention_mask=)`` returning ``.logits``).
        estimate: the estimated-green pairs.
        delta: the reverse bias.
    """

    def __init__(self, model: Any, estimate: GreenEstimate, delta: float = DEFAULT_REVERSE_DELTA) -> None:
        self.model = model
        self.bias = ReverseBias(estimate, delta)

    def __call__(self, input_ids: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        import torch

        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        logits = out.logits
        index, delta = self.bias._index, self.bias.delta
        widths = self.bias.estimate.context_widths
        # sparse, in place: a dense (batch, length, vocabulary) bias would be as large as the logits
        for r, row in enumerate(input_ids.tolist()):
            for j in range(len(row)):
                for h in widths:
                    toks = index.get(tuple(row[j + 1 - h : j + 1])) if j + 1 >= h else None
                    if toks is not None:
                        logits[r, j, torch.from_numpy(toks[toks < logits.shape[-1]])] -= delta
        return out


def green_share_summary(shares: Sequence[float]) -> dict[str, float]:
    """Mean, median and max of per-answer green shares (for reports)."""
    if not shares:
        return {"mean": math.nan, "median": math.nan, "max": math.nan}
    a = np.asarray(shares, dtype=float)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "max": float(a.max())}
