"""The Gumbel-max members of the scheme family: marks that leave the distribution of the text unchanged.

Gumbel-max (Aaronson 2022, https://scottaaronson.blog/?p=6823; analysed by Fernandez et al. 2023,
https://arxiv.org/abs/2308.00113): a keyed uniform ``u(k, c, t)`` in (0, 1) is drawn for every token ``t`` of the
vocabulary from the key ``k`` and the context ``c`` (the ``h`` preceding tokens), and the token with the largest
``u ** (1 / p_t)`` is emitted, ``p`` being the model's final distribution (after temperature and top-p). Over random
keys the emitted token is distributed exactly as ``p`` (the Gumbel-max trick: ``-log u / p_t`` are exponential races),
so the mark costs no quality in expectation; for a fixed key the choice favours tokens whose ``u`` is large. A
detector scores each distinct (context, token) tuple by ``-log(1 - u)``, Exp(1) for text written without the key,
so ``n`` tuples sum to Gamma(n, 1): the p-value is exact.

Every native member masks repeated contexts (SynthID-Text's rule, :attr:`Scheme.fresh_contexts_only`): a step
whose context already occurred earlier in the answer is sampled from ``p`` unmarked, and the detector scores the
first occurrence of each context only. Under a fixed key the keyed choice is a function of the context, so
without the mask a recurring context pulls the same continuation again and the answer can lock into a loop.

Members:

* ``gumbel``: the scheme above, with our provider/account position split and context width 1-4. For a fixed
  key and context it is deterministic: one prompt gives one answer at every call, whatever the seed.
* ``gumbel-dual``: two keys derived from the row's key; at every step a fresh (unkeyed) coin picks which of
  the two draws the token. Over keys and coins the token is still distributed as ``p``, and repeated identical
  prompts now give different answers. The detector does not know the coins: it scores ``m = max(u_A, u_B)``,
  and ``m ** 2`` is uniform under the null, so ``-log(1 - m ** 2)`` is Exp(1) and the null stays Gamma(n, 1).
* ``markllm-exp``: MarkLLM's EXP algorithm (single key, uniforms from ``torch.rand`` seeded with
  ``key * (product of the context tokens mod V)``), for interoperability and as the peer oracle of the tests.

The uniform of the native members is ``fmix64(k' ^ H(c) ^ T(t))`` with the hashes of :mod:`antidistill.watermark.core`
and ``k'`` the key mixed with a salt of this family, so a key used for a green-list mark and for a Gumbel mark
draws unrelated randomness. Membership of one tuple costs O(1): attribution over many keys needs no
vocabulary-sized work.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import ClassVar

import numpy as np

from antidistill.errors import InputError
from antidistill.extras import require
from antidistill.watermark.core import (
    U64,
    Scheme,
    Workspace,
    context_hash,
    fmix64,
    keyed_pair_hash,
    token_hash_table,
)
from antidistill.watermark.nulls import gamma_sf, weighted_exp_log_mgf

_GUMBEL_SALT = U64(0x082EFA98EC4E6C89)
_DUAL_A = U64(0x452821E638D01377)
_DUAL_B = U64(0xBE5466CF34E90C6C)
_S11 = U64(11)
_UNIT = 2.0**-53


def to_unit(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Map uint64 hashes to uniforms in (0, 1): the top 53 bits, centred (never 0, never 1)."""
    hi = np.right_shift(x, _S11)
    res: np.ndarray = np.add(hi, 0.5, out=out, dtype=np.float64) if out is not None else hi.astype(np.float64) + 0.5
    res *= _UNIT
    return res


def mix_keys(keys: np.ndarray, salt: np.uint64) -> np.ndarray:
    """Derive per-purpose keys: ``fmix64(k ^ salt)`` for each key."""
    out: np.ndarray = fmix64(np.asarray(keys, dtype=U64).reshape(-1) ^ salt)
    return out


def pair_uniforms(keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """(K, N) uniforms ``u(k, c_n, t_n)`` for already-mixed keys."""
    return to_unit(keyed_pair_hash(keys, contexts, tokens))


def row_uniforms(keys: np.ndarray, contexts: np.ndarray, vocab_size: int, workspace: Workspace) -> np.ndarray:
    """(B, V) uniforms ``u(k_b, c_b, t)`` for every token of the vocabulary (already-mixed keys), in the workspace."""
    row = np.asarray(keys, dtype=U64) ^ context_hash(contexts)
    shape = (len(row), vocab_size)
    x = workspace.array("hash", shape, U64)
    np.bitwise_xor(row[:, None], token_hash_table(vocab_size)[None, :], out=x)
    fmix64(x, out=x)
    return to_unit(x, out=workspace.array("unit", shape, np.float64))


def exp_race(probs: np.ndarray, u: np.ndarray, workspace: Workspace) -> np.ndarray:
    """(B,) argmax of ``log(u) / p`` (= argmax ``u ** (1/p)``); tokens with ``p == 0`` are never chosen."""
    score = workspace.array("race", u.shape, np.float64)
    np.log(u, out=score)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(score, probs, out=score)
    score[~(probs > 0)] = -np.inf
    out: np.ndarray = score.argmax(axis=1)
    return out


class GumbelScheme(Scheme):
    """``gumbel``: Gumbel-max sampling under the row's key (see the module docstring)."""

    name = "gumbel"
    kind: ClassVar[str] = "sample"
    fresh_contexts_only: ClassVar[bool] = True
    default_context_width: ClassVar[int] = 3

    def uniforms(self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """(K, N) keyed uniforms of the tuples, for raw keys."""
        return pair_uniforms(mix_keys(keys, _GUMBEL_SALT), contexts, tokens)

    def pair_scores(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None = None
    ) -> np.ndarray:
        out: np.ndarray = -np.log1p(-self.uniforms(keys, contexts, tokens))
        return out

    def p_value(self, total: float | np.ndarray, n: int | np.ndarray, vocab_size: int | None) -> np.ndarray | float:
        return gamma_sf(total, n)

    def null_moments(self, vocab_size: int | None) -> tuple[float, float]:
        return 1.0, 1.0

    def null_log_mgf(self, lam: np.ndarray, vocab_size: int | None) -> np.ndarray:
        return weighted_exp_log_mgf(lam)

    def choose(
        self,
        probs: np.ndarray,
        keys: np.ndarray,
        contexts: np.ndarray,
        coins: np.ndarray | None = None,
        workspace: Workspace | None = None,
    ) -> np.ndarray:
        ws = workspace if workspace is not None else Workspace()
        u = row_uniforms(self.race_keys(keys, coins), contexts, probs.shape[1], ws)
        return exp_race(probs, u, ws)

    def race_keys(self, keys: np.ndarray, coins: np.ndarray | None = None) -> np.ndarray:
        """(B,) the mixed key each row's uniforms are drawn under at this step (what :meth:`choose` races with;
        the device kernels of :mod:`antidistill.watermark.device` take it from here)."""
        return mix_keys(keys, _GUMBEL_SALT)


class DualGumbelScheme(GumbelScheme):
    """``gumbel-dual``: Gumbel-max under one of two derived keys, picked by a fresh coin at every step."""

    name = "gumbel-dual"
    needs_coins: ClassVar[bool] = True

    def pair_scores(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None = None
    ) -> np.ndarray:
        base = mix_keys(keys, _GUMBEL_SALT)
        ua = pair_uniforms(mix_keys(base, _DUAL_A), contexts, tokens)
        ub = pair_uniforms(mix_keys(base, _DUAL_B), contexts, tokens)
        m = np.maximum(ua, ub)
        # -log(1 - m^2) = -log(1 - m) - log(1 + m), accurate for m near 1
        out: np.ndarray = -np.log1p(-m) - np.log1p(m)
        return out

    def choose(
        self,
        probs: np.ndarray,
        keys: np.ndarray,
        contexts: np.ndarray,
        coins: np.ndarray | None = None,
        workspace: Workspace | None = None,
    ) -> np.ndarray:
        ws = workspace if workspace is not None else Workspace()
        u = row_uniforms(self.race_keys(keys, coins), contexts, probs.shape[1], ws)
        return exp_race(probs, u, ws)

    def race_keys(self, keys: np.ndarray, coins: np.ndarray | None = None) -> np.ndarray:
        if coins is None:
            raise InputError("the gumbel-dual scheme needs a fresh coin for every row")
        base = mix_keys(keys, _GUMBEL_SALT)
        out: np.ndarray = np.where(np.asarray(coins) < 0.5, mix_keys(base, _DUAL_A), mix_keys(base, _DUAL_B))
        return out


class MarkLLMExpScheme(GumbelScheme):
    """``markllm-exp``: the uniforms of MarkLLM's EXP watermark, for interoperability (single key).

    MarkLLM seeds a ``torch.Generator`` with ``key * prev`` where ``prev`` is the product of the last ``h``
    tokens modulo the vocabulary size, and draws ``torch.rand(V)``; the token with the largest ``u ** (1/p)`` is
    emitted and detection sums ``log(1 / (1 - u))``. Uniform vectors are cached per (key, prev): each costs a
    vocabulary-sized draw.
    """

    name = "markllm-exp"
    single_key: ClassVar[bool] = True
    fresh_contexts_only: ClassVar[bool] = False  # MarkLLM marks and scores every position
    default_context_width: ClassVar[int] = 1

    def __init__(self, gamma: float, context_width: int, entropy_threshold: float = 0.0, cache_size: int = 256) -> None:
        super().__init__(gamma, context_width, entropy_threshold)
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @staticmethod
    def _prev(context: np.ndarray, vocab_size: int) -> int:
        prod = 1
        for t in context.tolist():
            prod *= int(t)
        return prod % vocab_size

    def _vector(self, key: int, prev: int, vocab_size: int) -> np.ndarray:
        ck = (key, prev, vocab_size)
        with self._lock:
            hit = self._cache.get(ck)
            if hit is not None:
                self._cache.move_to_end(ck)
                return hit
        require("model", "the markllm-exp scheme")  # it draws torch's random numbers
        import torch  # heavy, and only this interoperability scheme needs it

        gen = torch.Generator(device="cpu")
        gen.manual_seed((key * prev) % (2**64))
        vec = torch.rand(vocab_size, generator=gen).numpy().astype(np.float64)
        with self._lock:
            self._cache[ck] = vec
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vec

    def _need_vocab(self, vocab_size: int | None) -> int:
        if vocab_size is None:
            raise InputError("the markllm-exp scheme needs the model's vocabulary size")
        return vocab_size

    def uniforms(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None = None
    ) -> np.ndarray:
        v = self._need_vocab(vocab_size)
        ctx = np.asarray(contexts, dtype=np.int64)
        toks = np.asarray(tokens, dtype=np.int64)
        prevs = [self._prev(c, v) for c in ctx]
        out = np.empty((len(np.atleast_1d(keys)), len(toks)), dtype=np.float64)
        for i, k in enumerate(np.asarray(keys, dtype=U64).reshape(-1)):
            for j, (prev, t) in enumerate(zip(prevs, toks, strict=True)):
                out[i, j] = self._vector(int(k), prev, v)[t]
        return out

    def pair_scores(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None = None
    ) -> np.ndarray:
        u = np.minimum(self.uniforms(keys, contexts, tokens, vocab_size), 1.0 - 2.0**-24)
        out: np.ndarray = -np.log1p(-u)
        return out

    def choose(
        self,
        probs: np.ndarray,
        keys: np.ndarray,
        contexts: np.ndarray,
        coins: np.ndarray | None = None,
        workspace: Workspace | None = None,
    ) -> np.ndarray:
        ws = workspace if workspace is not None else Workspace()
        v = probs.shape[1]
        ctx = np.asarray(contexts, dtype=np.int64)
        u = np.stack(
            [self._vector(int(k), self._prev(c, v), v) for k, c in zip(np.asarray(keys, dtype=U64), ctx, strict=True)]
        )
        return exp_race(probs, np.maximum(u, 2.0**-60), ws)
