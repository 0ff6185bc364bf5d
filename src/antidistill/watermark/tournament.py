"""Tournament sampling (SynthID-Text; Dathathri et al. 2024, "Scalable watermarking for identifying large language
model outputs", Nature 634, https://doi.org/10.1038/s41586-024-08025-4): a distortion-free mark that keeps the
randomness of sampling, so repeated identical prompts still get different answers.

For a context ``c`` and key ``k``, every token ``t`` gets ``m`` keyed bits ``g_1..g_m(k, c, t)``, each fair. The
tournament draws ``2**m`` candidates from the model's distribution ``p`` with fresh (unkeyed) randomness and plays
``m`` rounds of knock-out matches; in round ``l`` the candidate with the larger ``g_l`` wins, a tie is decided by a
fair coin. Its winner is emitted. For a match of two independent draws from ``q`` with binary ``g``, the winner is
``t`` with probability ``q(t) * (1 + g(t) - G)``, ``G = sum_w q(w) g(w)``; so ``m`` rounds are ``m`` such updates of
the distribution, computed exactly over the vocabulary, then one draw. Averaged over keys each update leaves ``q``
unchanged (``E[g(t) - G] = 0`` for fair bits), so the emitted token is distributed as ``p``: the mark costs no
quality in expectation, and the final draw's randomness keeps the answers of one prompt diverse.

Detection sums the ``m`` bits of each distinct (context, token) tuple: for text written without the key the bits
are independent fair coins, so ``n`` tuples sum to Binomial(n m, 1/2) and the p-value is exact.

The ``m`` bits are bits ``0..m-1`` of one 64-bit hash ``fmix64(k' ^ H(c) ^ T(t))`` (``k'``: the key mixed with
this member's salt): the bits of a uniform 64-bit value are independent fair coins, and one hash serves all rounds.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from antidistill.errors import InputError
from antidistill.watermark.core import (
    U64,
    Scheme,
    Workspace,
    context_hash,
    fmix64,
    keyed_pair_hash,
    token_hash_table,
)
from antidistill.watermark.gumbel import mix_keys
from antidistill.watermark.nulls import binomial_sf, fair_bits_log_mgf

_TOURNAMENT_SALT = U64(0xC0AC29B7C97C50DD)
DEFAULT_LAYERS = 16
MAX_LAYERS = 32
#: candidates per row the rounds are played over, when the other tokens hold at most TAIL_MASS of the probability
CANDIDATES = 1024
TAIL_MASS = 1e-7


def _bits(x: np.ndarray, layers: int) -> np.ndarray:
    """(..., layers) uint8: the low ``layers`` bits of each hash."""
    shifts = np.arange(layers, dtype=U64)
    out: np.ndarray = ((x[..., None] >> shifts) & U64(1)).astype(np.uint8)
    return out


class TournamentScheme(Scheme):
    """``tournament``: SynthID-style tournament sampling with ``layers`` rounds (see the module docstring)."""

    name = "tournament"
    kind: ClassVar[str] = "sample"
    fresh_contexts_only: ClassVar[bool] = True
    default_context_width: ClassVar[int] = 3
    needs_coins: ClassVar[bool] = True

    def __init__(
        self, gamma: float, context_width: int, entropy_threshold: float = 0.0, layers: int = DEFAULT_LAYERS
    ) -> None:
        super().__init__(gamma, context_width, entropy_threshold)
        if not 1 <= layers <= MAX_LAYERS:
            raise InputError(f"layers must be in 1..{MAX_LAYERS}, got {layers}")
        self.layers = layers

    def pair_scores(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None = None
    ) -> np.ndarray:
        x = keyed_pair_hash(mix_keys(keys, _TOURNAMENT_SALT), contexts, tokens)
        out: np.ndarray = _bits(x, self.layers).sum(axis=-1, dtype=np.int64).astype(np.float64)
        return out

    def p_value(self, total: float | np.ndarray, n: int | np.ndarray, vocab_size: int | None) -> np.ndarray | float:
        return binomial_sf(np.rint(total), np.asarray(n) * self.layers, 0.5)

    def null_moments(self, vocab_size: int | None) -> tuple[float, float]:
        return self.layers / 2.0, self.layers / 4.0

    def null_log_mgf(self, lam: np.ndarray, vocab_size: int | None) -> np.ndarray:
        return fair_bits_log_mgf(lam, self.layers)

    def choose(
        self,
        probs: np.ndarray,
        keys: np.ndarray,
        contexts: np.ndarray,
        coins: np.ndarray | None = None,
        workspace: Workspace | None = None,
    ) -> np.ndarray:
        if coins is None:
            raise InputError("the tournament scheme needs a fresh uniform for every row")
        probs = np.asarray(probs, dtype=np.float64)
        b, v = probs.shape
        row = mix_keys(keys, _TOURNAMENT_SALT) ^ context_hash(contexts)
        coins = np.asarray(coins, dtype=np.float64)
        out = np.empty(b, dtype=np.int64)
        # The rounds run over each row's most likely tokens only, when the rest of the vocabulary holds less than
        # TAIL_MASS of the probability (then what is left out changes the output distribution by less than that).
        k = min(v, CANDIDATES)
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < v else np.broadcast_to(np.arange(v), (b, v))
        p_top = np.take_along_axis(probs, top, axis=1)
        small = (probs.sum(axis=1) - p_top.sum(axis=1)) <= TAIL_MASS * probs.sum(axis=1)
        if small.any():
            r = np.flatnonzero(small)
            out[r] = self._play(p_top[r], top[r], row[r], coins[r])
        if not small.all():
            r = np.flatnonzero(~small)
            out[r] = self._play(probs[r], np.broadcast_to(np.arange(v), (len(r), v)), row[r], coins[r])
        return out

    def _play(self, q: np.ndarray, tokens: np.ndarray, row: np.ndarray, coins: np.ndarray) -> np.ndarray:
        """The tournament's winner for each row, over the candidate ``tokens`` with probabilities ``q``."""
        x = row[:, None] ^ token_hash_table(int(tokens.max()) + 1)[tokens]
        fmix64(x, out=x)
        q = q / q.sum(axis=1, keepdims=True)
        for layer in range(self.layers):  # m rounds: a loop over rounds, each vectorised over (rows, candidates)
            g = ((x >> U64(layer)) & U64(1)).astype(np.float64)
            q = q * (1.0 + g - np.einsum("bv,bv->b", q, g)[:, None])
        cdf = np.cumsum(q, axis=1)
        u = coins * cdf[:, -1]
        idx = np.minimum((cdf <= u[:, None]).sum(axis=1), q.shape[1] - 1)
        # a candidate of probability 0 has an empty interval, so the draw never lands on it
        out: np.ndarray = np.take_along_axis(tokens, idx[:, None], axis=1)[:, 0]
        return out
