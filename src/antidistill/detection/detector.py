"""Scoring token sequences against watermark keys: single key, attribution across many keys, windowed scan.

One detector serves every member of the scheme family: each member scores a (context, token) pair under a key
(1/0 for a green-list member, ``-log(1 - u)`` for a Gumbel-max member) and gives the exact null distribution of
the summed score (:mod:`antidistill.watermark.nulls`). "green" in the results is that summed score: the green
count for green-list members.

Every distinct (context, token) pair is scored once (members that mask repeated contexts: the first occurrence
of each context only, the others were sampled unmarked). Repeated n-grams are not independent draws: without this
rule a paragraph repeated twenty times would count each of its green pairs twenty times and look marked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from antidistill.detection.results import AttributionResult, DetectionReport, ScoreResult, SpanResult
from antidistill.detection.stats import bonferroni, fisher_combine
from antidistill.errors import InputError
from antidistill.keys import WatermarkKey
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64
from antidistill.watermark.marker import Watermark

#: a text as token ids
TokenIds = Sequence[int] | np.ndarray
#: (h+1)-tuples (context, token) left out of a test
Exclude = Iterable[tuple[int, ...]] | None

DEFAULT_ALPHA = 1e-3
MIN_SCAN_WINDOW = 32


@dataclass(frozen=True)
class Pairs:
    """The distinct (context, token) pairs of a sequence, in order of first occurrence.

    Args:
        contexts: (n, h) token ids preceding each pair's token.
        tokens: (n,) the scored tokens.
        positions: (n,) index of the token in the sequence.
        length: length of the whole sequence.
    """

    contexts: np.ndarray
    tokens: np.ndarray
    positions: np.ndarray
    length: int

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, mask: np.ndarray) -> Pairs:
        return Pairs(self.contexts[mask], self.tokens[mask], self.positions[mask], self.length)

    @staticmethod
    def pooled(parts: Sequence[Pairs]) -> Pairs:
        """The distinct pairs of several texts together, each scored once: a (context, token) pair that two texts
        share is one draw of the keyed hash, not two. ``positions`` index the concatenation of the texts.

        Example:
            >>> a = distinct_pairs([1, 2, 3, 4], 1)
            >>> len(Pairs.pooled([a, a])), len(Pairs.pooled([a, distinct_pairs([4, 5], 1)]))
            (3, 4)
        """
        if not parts:
            return Pairs(np.zeros((0, 1), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
        widths = {p.contexts.shape[1] for p in parts}
        if len(widths) != 1:
            raise InputError("pairs of different context widths cannot be pooled")
        offsets = np.cumsum([0] + [p.length for p in parts[:-1]])
        contexts = np.concatenate([p.contexts for p in parts])
        tokens = np.concatenate([p.tokens for p in parts])
        positions = np.concatenate([p.positions + o for p, o in zip(parts, offsets, strict=True)])
        if len(tokens) == 0:
            return Pairs(contexts, tokens, positions, int(sum(p.length for p in parts)))
        _, first = np.unique(np.column_stack([contexts, tokens]), axis=0, return_index=True)
        first.sort()
        return Pairs(contexts[first], tokens[first], positions[first], int(sum(p.length for p in parts)))


def distinct_pairs(
    token_ids: Sequence[int] | np.ndarray,
    context_width: int,
    exclude: Iterable[tuple[int, ...]] | None = None,
    keep: np.ndarray | None = None,
    fresh_contexts_only: bool = False,
    pad: bool = False,
) -> Pairs:
    """Distinct (context, token) pairs of ``token_ids``, first occurrences only.

    Args:
        token_ids: the sequence.
        context_width: h, the number of context tokens.
        exclude: (h+1)-tuples not to score (e.g. windows that occur in the prompt of a closed-model scan).
        keep: optional (len(token_ids),) bool: only tokens at these positions are scored. The selection must not
            depend on the key (e.g. the unmarked model's entropy at each step); then p-values stay exact.
        fresh_contexts_only: score only the first occurrence of each *context* (members that mask repeated
            contexts when they mark, :attr:`~antidistill.watermark.core.Scheme.fresh_contexts_only`): a later
            occurrence was sampled unmarked. Still exact: the selection does not depend on the key, and distinct
            contexts make distinct tuples.
        pad: also score the first ``h`` tokens, with their contexts padded by ``-1`` (members whose generator does so,
            :attr:`~antidistill.watermark.core.Scheme.pads_context`: vLLM's); ``exclude`` tuples may hold the ``-1``.
    """
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    h = context_width
    length = len(ids)
    if keep is not None:
        keep = np.asarray(keep, dtype=bool).reshape(-1)
        if len(keep) != length:
            raise InputError(f"keep has {len(keep)} flags for {length} tokens")
    if pad and length > 0:
        ids = np.concatenate([np.full(h, -1, dtype=np.int64), ids])
        if keep is not None:
            keep = np.concatenate([np.zeros(h, dtype=bool), keep])
    if len(ids) <= h:
        return Pairs(np.zeros((0, h), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), length)
    windows = np.lib.stride_tricks.sliding_window_view(ids, h + 1)
    unit = windows[:, :h] if fresh_contexts_only else windows
    if fresh_contexts_only:
        # first occurrences of each context over the whole text (what the marker saw), then the kept ones
        _, first = np.unique(unit, axis=0, return_index=True)
        if keep is not None:
            first = first[keep[h:][first]]
    elif keep is not None:
        rows = np.flatnonzero(keep[h:])
        _, first_k = np.unique(windows[rows], axis=0, return_index=True)
        first = rows[first_k]
    else:
        _, first = np.unique(windows, axis=0, return_index=True)
    first.sort()
    if exclude is not None:
        ex = {tuple(int(t) for t in w) for w in exclude}
        if ex:
            keep = np.array([tuple(windows[i].tolist()) not in ex for i in first], dtype=bool)
            first = first[keep]
    w = windows[first]
    # the index of each scored token in the text as given (the padding is not part of it)
    positions = first if pad else first + h
    return Pairs(np.ascontiguousarray(w[:, :h]), np.ascontiguousarray(w[:, h]), positions, length)


class Detector:
    """Scores token ids for one watermark configuration.

    Args:
        config: the watermark parameters the text was (or may have been) generated with.
        vocab_size: the model's vocabulary size (needed by the ``hf-lefthash`` scheme only).

    Example:
        >>> from antidistill.keys import MasterKey
        >>> d = Detector(WatermarkConfig())
        >>> r = d.score(list(range(100)), MasterKey(b"k" * 32).account_key("alice"))
        >>> r.tokens_scored, r.p_value > 1e-3  # the default member: context width 3, so 97 pairs of 100 tokens
        (97, True)
    """

    def __init__(self, config: WatermarkConfig | None = None, vocab_size: int | None = None) -> None:
        self.watermark = Watermark(config)
        self.config = self.watermark.config
        self.scheme = self.watermark.scheme
        self.vocab_size = vocab_size
        #: mean score of a pair under the null (gamma for green-list members, 1 for Gumbel-max members)
        self.gamma = self.scheme.null_moments(vocab_size)[0]

    # ---- single tests -------------------------------------------------------------------------------
    def pairs(self, token_ids: TokenIds, exclude: Exclude = None, keep: np.ndarray | None = None) -> Pairs:
        return distinct_pairs(
            token_ids,
            self.config.context_width,
            exclude,
            keep,
            self.scheme.fresh_contexts_only,
            self.scheme.pads_context,
        )

    def _result(self, key_id: str, n: int, g: float) -> ScoreResult:
        p = self.scheme.p_value(g, n, self.vocab_size) if n > 0 else 1.0
        z = self.scheme.z(float(g), n, self.vocab_size)
        return ScoreResult(key_id, int(n), self.scheme.reported(g), g / n if n else 0.0, z, float(p), self.gamma)

    def split(self, pairs: Pairs, provider: WatermarkKey | None) -> tuple[Pairs, Pairs]:
        """(provider positions, account positions) of ``pairs`` under this provider key."""
        kinds = self.watermark.position_kinds(pairs.contexts, provider.value if provider else None)
        return pairs.subset(kinds), pairs.subset(~kinds)

    def green_flags(self, pairs: Pairs, key: WatermarkKey) -> np.ndarray:
        """(n,) float: each pair's score under ``key`` (1.0/0.0, green or not, for green-list members)."""
        if len(pairs) == 0:
            return np.zeros(0, dtype=np.float64)
        flags: np.ndarray = self.scheme.pair_scores(
            np.array([key.value], dtype=U64), pairs.contexts, pairs.tokens, self.vocab_size
        )[0]
        return flags

    def score_pairs(self, pairs: Pairs, key: WatermarkKey) -> ScoreResult:
        return self._result(key.key_id, len(pairs), float(self.green_flags(pairs, key).sum()))

    def score(
        self,
        token_ids: TokenIds,
        key: WatermarkKey,
        provider: WatermarkKey | None = None,
        exclude: Exclude = None,
        keep: np.ndarray | None = None,
    ) -> ScoreResult:
        """Test one key on a text: every pair under the key that marks its position.

        With ``provider`` given (and a provider component in the config), provider positions are scored under
        the provider key and the rest under ``key``; otherwise every pair is scored under ``key``.
        """
        pairs = self.pairs(token_ids, exclude, keep)
        if provider is None or self.config.provider_fraction == 0.0:
            return self.score_pairs(pairs, key)
        prov, acct = self.split(pairs, provider)
        g = float(self.green_flags(prov, provider).sum()) + float(self.green_flags(acct, key).sum())
        return self._result(f"{key.key_id}+{provider.key_id}", len(pairs), g)

    # ---- many keys ----------------------------------------------------------------------------------
    def attribute_pairs(
        self, pairs: Pairs, candidates: Sequence[WatermarkKey], alpha: float, extra_tests: int = 1, top: int = 5
    ) -> AttributionResult:
        """The best of ``candidates`` on ``pairs``, Bonferroni-corrected for every key tried."""
        tests = len(candidates) * extra_tests
        if not candidates or len(pairs) == 0:
            return AttributionResult(None, None, None, 1.0, tests, [])
        values = np.array([k.value for k in candidates], dtype=U64)
        greens = self.scheme.score_sums(values, pairs.contexts, pairs.tokens, self.vocab_size)
        n = len(pairs)
        order = np.argsort(-greens, kind="stable")[:top]
        ranking = [self._result(candidates[i].key_id, n, float(greens[i])) for i in order]
        best_i = int(order[0])
        best = ranking[0]
        p_corr = bonferroni(best.p_value, tests)
        account = candidates[best_i].account if p_corr <= alpha else None
        return AttributionResult(account, candidates[best_i].key_id, best, p_corr, tests, ranking)

    def attribute(
        self,
        token_ids: TokenIds,
        candidates: Sequence[WatermarkKey],
        provider: WatermarkKey | None = None,
        alpha: float = DEFAULT_ALPHA,
        exclude: Exclude = None,
        keep: np.ndarray | None = None,
    ) -> AttributionResult:
        """Which of many account keys marked this text (account positions only, so that the shared provider
        component can never make an innocent account look guilty)."""
        pairs = self.pairs(token_ids, exclude, keep)
        if provider is not None and self.config.provider_fraction > 0.0:
            _, pairs = self.split(pairs, provider)
        return self.attribute_pairs(pairs, candidates, alpha)

    def attribute_many(
        self,
        texts: Sequence[TokenIds],
        candidates: Sequence[WatermarkKey],
        provider_keys: Sequence[WatermarkKey] = (),
        alpha: float = DEFAULT_ALPHA,
    ) -> AttributionResult:
        """Which of many account keys marked these texts together: the account positions of their pooled distinct
        pairs (:meth:`Pairs.pooled`), corrected for every candidate and provider version tried.

        What a forensic claim about one account rests on: its completions together. A text of a member that
        marks with less distortion (``gumbel-dual``) carries fewer bits per token than a green-list text, and its
        account half (``provider_fraction`` of the pairs go to the provider key) may not single out one account
        among many; the account's texts pooled do. Exact like :meth:`attribute`: repeated pairs count once.
        """
        return self.attribute_pooled(Pairs.pooled([self.pairs(t) for t in texts]), candidates, provider_keys, alpha)

    def attribute_pooled(
        self,
        pairs: Pairs,
        candidates: Sequence[WatermarkKey],
        provider_keys: Sequence[WatermarkKey] = (),
        alpha: float = DEFAULT_ALPHA,
    ) -> AttributionResult:
        """The best of ``candidates`` on the account positions of ``pairs`` (one text's, or several pooled by
        :meth:`Pairs.pooled`). Every provider version splits the positions differently: the candidates are tested
        under each, and corrected for all of them."""
        if not self.config.provider_fraction > 0.0 or not provider_keys:
            return self.attribute_pairs(pairs, candidates, alpha)
        results = [
            self.attribute_pairs(self.split(pairs, pk)[1], candidates, alpha, len(provider_keys))
            for pk in provider_keys
        ]
        return min(results, key=lambda r: r.p_value_corrected)

    # ---- windowed scan ------------------------------------------------------------------------------
    def scan_pairs(
        self, pairs: Pairs, flags: np.ndarray, alpha: float, min_window: int = MIN_SCAN_WINDOW
    ) -> SpanResult | None:
        """Most significant window of the sequence: windows of 2^k tokens (k >= 5) at quarter strides.

        Counts come from prefix sums over the pairs' first occurrences, so a window counts each distinct pair
        once. The p-value is corrected for the number of windows tried.
        """
        length = pairs.length
        if len(pairs) == 0 or length < 2 * min_window:
            return None
        scored = np.zeros(length + 1, dtype=np.int64)
        green = np.zeros(length + 1, dtype=np.float64)
        np.add.at(scored, pairs.positions + 1, 1)
        np.add.at(green, pairs.positions + 1, flags.astype(np.float64))
        c_s, c_g = np.cumsum(scored), np.cumsum(green)
        starts_l, ends_l = [], []
        w = min_window
        while w <= length:
            stride = max(1, w // 4)
            s = np.arange(0, length - w + 1, stride)
            starts_l.append(s)
            ends_l.append(s + w)
            w *= 2
        starts, ends = np.concatenate(starts_l), np.concatenate(ends_l)
        n = c_s[ends] - c_s[starts]
        g = c_g[ends] - c_g[starts]
        p = np.where(n > 0, self.scheme.p_value(g, n, self.vocab_size), 1.0)
        i = int(np.argmin(p))
        p_corr = bonferroni(float(p[i]), len(p))
        gi = self.scheme.reported(float(g[i]))
        return SpanResult(int(starts[i]), int(ends[i]), int(n[i]), gi, float(p[i]), p_corr, len(p), p_corr <= alpha)

    # ---- the whole verdict --------------------------------------------------------------------------
    def detect(
        self,
        token_ids: TokenIds,
        provider_keys: Sequence[WatermarkKey] = (),
        candidates: Sequence[WatermarkKey] = (),
        alpha: float = DEFAULT_ALPHA,
        scan: bool = True,
        exclude: Exclude = None,
        keep: np.ndarray | None = None,
    ) -> DetectionReport:
        """Is this text ours, whose is it, and where.

        Args:
            token_ids: the text's tokens.
            provider_keys: every version of the provider key (each is tried; corrected for their number).
            candidates: account keys to attribute among (every version of every account).
            alpha: significance level of the verdicts.
            scan: also look for a marked span inside longer text.
            exclude: (h+1)-tuples not to score.
            keep: optional per-position flags of the tokens to score (a key-independent selection).
        """
        if not 0.0 < alpha < 1.0:
            raise InputError(f"alpha must be in (0, 1), got {alpha}")
        pairs = self.pairs(token_ids, exclude, keep)
        use_provider = self.config.provider_fraction > 0.0 and len(provider_keys) > 0
        if not use_provider and not candidates:
            raise InputError("nothing to test: give the provider key or at least one candidate key")

        provider_res: ScoreResult | None = None
        best_split: tuple[Pairs, Pairs, np.ndarray] | None = None
        p_provider = 1.0
        if use_provider:
            for pk in provider_keys:
                prov, acct = self.split(pairs, pk)
                flags = self.green_flags(prov, pk)
                res = self._result(pk.key_id, len(prov), float(flags.sum()))
                if provider_res is None or res.p_value < provider_res.p_value:
                    provider_res, best_split = res, (prov, acct, flags)
            assert provider_res is not None  # provider_keys is not empty
            p_provider = bonferroni(provider_res.p_value, len(provider_keys))
        attribution = self.attribute_pooled(pairs, candidates, provider_keys, alpha) if candidates else None

        if use_provider and attribution is not None:
            p_value = fisher_combine([p_provider, attribution.p_value_corrected])
        elif use_provider or attribution is None:
            p_value = p_provider
        else:
            p_value = attribution.p_value_corrected
        primary = provider_res if use_provider or attribution is None else attribution.best
        if primary is None:
            primary = self._result("none", 0, 0)

        span = None
        keys_tried = 1
        if scan:
            if best_split is not None:
                prov, _, flags = best_split
                span = self.scan_pairs(prov, flags, alpha)
                keys_tried = len(provider_keys)
            elif attribution is not None and attribution.key_id is not None:
                key = next(k for k in candidates if k.key_id == attribution.key_id)
                span = self.scan_pairs(pairs, self.green_flags(pairs, key), alpha)
                keys_tried = len(candidates)
            # the scanned key was the best of several: its scan p-value is corrected for those keys too
            if span is not None and keys_tried > 1:
                pc = bonferroni(span.p_value_corrected, keys_tried)
                span = SpanResult(
                    span.start_token,
                    span.end_token,
                    span.tokens_scored,
                    span.green,
                    span.p_value,
                    pc,
                    span.windows_tested * keys_tried,
                    pc <= alpha,
                )
        return DetectionReport(
            tokens_scored=primary.tokens_scored,
            green=primary.green,
            green_fraction=primary.green_fraction,
            z=primary.z,
            p_value=float(p_value),
            watermarked=bool(p_value <= alpha and len(pairs) > 0),
            alpha=alpha,
            account=attribution.account if attribution else None,
            p_value_corrected=attribution.p_value_corrected if attribution else None,
            provider=provider_res,
            attribution=attribution,
            span=span,
            config=self.config.to_dict(),
            total_tokens=pairs.length,
        )
