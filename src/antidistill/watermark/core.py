"""The green-list core: which tokens are green for a (key, context). Used by generation and by detection.

KGW watermark (Kirchenbauer et al. 2023, "A Watermark for Large Language Models",
https://arxiv.org/abs/2301.10226): before each token is sampled, a keyed hash of the preceding ``h`` tokens
splits the vocabulary into a green fraction ``gamma`` and a red rest, and green logits get ``+delta``.
A detector that knows the key counts green tokens; without the watermark the count is Binomial(n, gamma).

Two members of one family sit behind :class:`GreenListScheme`:

* ``antidistill-v1`` (default): token ``t`` is green after context ``c`` under key ``k`` iff
  ``fmix64(k ^ H(c) ^ T(t)) < gamma * 2**64``, where ``H`` and ``T`` are fixed 64-bit hashes of the context
  tokens and of the token, and ``fmix64`` is MurmurHash3's 64-bit finaliser (a bijective mixer with full
  avalanche). Membership of one (context, token) costs O(1), so scoring needs no vocabulary-sized work and a
  text can be tried against 100,000 keys in a fraction of a second. Under the null (text independent of the
  key) each distinct (context, token) is green with probability exactly ``gamma`` (to 2**-64).
* ``hf-lefthash``: transformers' ``WatermarkLogitsProcessor`` lists (``randperm`` of the vocabulary seeded with
  ``key * last_token``), so marks made by either implementation are read by the other. O(vocabulary) per
  context: for interoperability, not for speed.

Pure functions on numpy arrays: no tokenizer, model, file or network here.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from functools import lru_cache
from typing import ClassVar

import numpy as np

from antidistill.errors import InputError
from antidistill.extras import require
from antidistill.watermark.nulls import bernoulli_log_mgf, binomial_sf

U64 = np.uint64
_M1 = U64(0xFF51AFD7ED558CCD)
_M2 = U64(0xC4CEB9FE1A85EC53)
_S33 = U64(33)
_GOLDEN = U64(0x9E3779B97F4A7C15)
_TOKEN_SALT = U64(0x243F6A8885A308D3)  # digits of pi: nothing up our sleeve
_CONTEXT_SALT = U64(0x13198A2E03707344)
_SLOT_SALT = U64(0xA4093822299F31D0)
TWO64 = 2**64
_LOW31 = (1 << 31) - 1


def fmix64(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser on a uint64 array (wrapping arithmetic). Writes into ``out`` if given."""
    if out is None:
        out = np.array(x, dtype=U64, copy=True)
    elif out is not x:
        np.copyto(out, x)
    out ^= out >> _S33
    out *= _M1
    out ^= out >> _S33
    out *= _M2
    out ^= out >> _S33
    return out


def threshold(fraction: float) -> np.uint64:
    """The uint64 below which a uniform 64-bit hash falls with probability ``fraction``."""
    return U64(min(int(fraction * TWO64), TWO64 - 1))


def token_hash(tokens: np.ndarray) -> np.ndarray:
    """T(t): a fixed 64-bit hash of each token id."""
    t = np.asarray(tokens, dtype=np.int64).astype(U64)
    return fmix64(t * _GOLDEN + _TOKEN_SALT, out=None)


@lru_cache(maxsize=8)
def token_hash_table(vocab_size: int) -> np.ndarray:
    """T(t) for every id below ``vocab_size`` (read-only, cached)."""
    table = token_hash(np.arange(vocab_size, dtype=np.int64))
    table.setflags(write=False)
    return table


@lru_cache(maxsize=8)
def premixed_token_table(vocab_size: int) -> np.ndarray:
    """``T(t) ^ (T(t) >> 33)`` for every id: fmix64's first xor-shift, folded into the token table.

    Exact, because a right shift distributes over xor: ``(a ^ b) >> s == (a >> s) ^ (b >> s)``, so the first
    step of ``fmix64(row ^ T)`` is ``premix(row) ^ premix(T)``; only the (B,) row part is left per call.
    """
    table = token_hash_table(vocab_size)
    table = _premix(table)
    table.setflags(write=False)
    return table


def _premix(x: np.ndarray) -> np.ndarray:
    """fmix64's first xor-shift, ``x ^ (x >> 33)`` (a new array)."""
    out: np.ndarray = x ^ (x >> _S33)
    return out


def _premixed_below(x: np.ndarray, thr: np.uint64, tmp: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``fmix64(x0) < thr`` into ``out``, for ``x = premix(x0)``; ``x`` is overwritten, ``tmp`` is scratch.

    The last xor-shift of fmix64 leaves the top 33 bits unchanged, and whether a value is below a multiple of
    2**31 depends on its top 33 bits only: for such thresholds (gamma 1/4, 1/2, 1/8, ...) the step is skipped.
    """
    np.multiply(x, _M1, out=x)
    np.right_shift(x, _S33, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, _M2, out=x)
    if int(thr) & _LOW31:
        np.right_shift(x, _S33, out=tmp)
        np.bitwise_xor(x, tmp, out=x)
    np.less(x, thr, out=out)
    return out


class Workspace:
    """Scratch arrays reused across calls of :meth:`GreenListScheme.green_mask`, e.g. one per generation loop.

    A (batch, vocabulary) array of 64-bit hashes is megabytes; allocating it, and a temporary for each
    operation, at every generation step costs more than the hashing itself (fresh pages are faulted in and
    zeroed). Arrays grow as needed and are reused for smaller shapes. Not thread-safe: one per caller.

    Example:
        >>> ws = Workspace()
        >>> a = ws.array("hash", (16, 100), np.uint64)
        >>> b = ws.array("hash", (4, 100), np.uint64)  # a smaller batch reuses the same memory
        >>> b.shape, np.shares_memory(a, b)
        ((4, 100), True)
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised array of this shape and dtype, valid until the next request for ``name``."""
        n = math.prod(shape)
        a = self._arrays.get(name)
        if a is None or a.dtype != np.dtype(dtype) or a.size < n:
            a = self._arrays[name] = np.empty(n, dtype=dtype)
        return a[:n].reshape(shape)


def context_hash(contexts: np.ndarray) -> np.ndarray:
    """H(c) for each row of an (n, h) array of token ids: order-sensitive, width-sensitive."""
    ctx = np.asarray(contexts, dtype=np.int64)
    if ctx.ndim != 2:
        raise InputError(f"contexts must be a 2-D (n, h) array, got shape {ctx.shape}")
    h = ctx.shape[1]
    x = np.full(ctx.shape[0], _CONTEXT_SALT + U64(h), dtype=U64)
    for j in range(h):  # h <= 4: a loop over context positions, not over tokens
        x ^= ctx[:, j].astype(U64) * _GOLDEN + U64(j + 1)
        fmix64(x, out=x)
    return x


def keyed_pair_hash(keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """(K, N) ``fmix64(k ^ H(c_n) ^ T(t_n))``: the keyed 64-bit hash of each (context, token) under each key, the
    randomness every member draws from (a green bit, a uniform, tournament bits)."""
    pairs = context_hash(contexts) ^ token_hash(tokens)
    x = np.asarray(keys, dtype=U64).reshape(-1, 1) ^ pairs[None, :]
    return fmix64(x, out=x)


def provider_positions(provider_key: int, ctx_hash: np.ndarray, provider_fraction: float) -> np.ndarray:
    """Which contexts are marked with the provider key (True) rather than the account key.

    Decided by the context alone (it must be known before the token is drawn), under a sub-key of the provider
    key, so whoever holds the provider key can split a text's positions into the two kinds.
    """
    if provider_fraction <= 0.0:
        return np.zeros(ctx_hash.shape, dtype=bool)
    slot_key = fmix64(np.array([U64(provider_key) ^ _SLOT_SALT]))[0]
    return fmix64(ctx_hash ^ slot_key) < threshold(provider_fraction)


class Scheme(ABC):
    """One member of the scheme family. Every member answers the same questions, for a batch of keys at once.

    Generation: a ``"bias"`` scheme adds ``delta`` to the logits of a keyed green list (:meth:`green_mask`); a
    ``"sample"`` scheme chooses the token itself from the model's final probabilities (:meth:`choose`), leaving
    their distribution unchanged over random keys. Detection: :meth:`pair_scores` scores each distinct
    (context, token) tuple under each key, and :meth:`p_value` is the exact upper tail of the summed score for
    text written without the key (see :mod:`antidistill.watermark.nulls`).

    Args:
        gamma: the green fraction (green-list schemes only).
        context_width: how many preceding tokens seed the keyed randomness.
        entropy_threshold: minimum entropy (nats) of a step for it to be marked (entropy-aware schemes only).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "bias"
    #: a single-key scheme (an interoperability member): no provider/account split
    single_key: ClassVar[bool] = False
    #: a sampling scheme that needs a fresh (unkeyed) uniform per row and step
    needs_coins: ClassVar[bool] = False
    #: repeated-context masking (as SynthID-Text does): a step whose context already occurred earlier in the same
    #: answer is sampled without the mark, and the detector scores the first occurrence of each context only.
    #: A fixed key makes the keyed choice a function of the context; without the mask a context that recurs
    #: pulls the same continuation again, and the answer can lock into a loop.
    fresh_contexts_only: ClassVar[bool] = False
    #: the context width a configuration of this member gets when it names none
    default_context_width: ClassVar[int] = 1
    #: the widest context a configuration of this member accepts
    max_context_width: ClassVar[int] = 4
    #: the member can mark (False: a read-only interoperability member, which detects another implementation's
    #: marks; serving and ``generate`` refuse it)
    generates: ClassVar[bool] = True
    #: the first ``h`` tokens of a text are scored too, with their contexts padded by ``-1`` (vLLM's rule: the context
    #: of a generated token holds only the tokens generated before it); otherwise scoring starts at token ``h``
    pads_context: ClassVar[bool] = False

    def __init__(self, gamma: float, context_width: int, entropy_threshold: float = 0.0) -> None:
        self.gamma = gamma
        self.context_width = context_width
        self.entropy_threshold = entropy_threshold

    @abstractmethod
    def pair_scores(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None
    ) -> np.ndarray:
        """(K, N) float64: the score of token ``tokens[n]`` after ``contexts[n]`` under ``keys[k]``."""

    def score_sums(
        self,
        keys: np.ndarray,
        contexts: np.ndarray,
        tokens: np.ndarray,
        vocab_size: int | None,
        chunk_elems: int = 1 << 18,
    ) -> np.ndarray:
        """(K,) float64: summed scores over the N tuples, for K keys, in cache-sized chunks."""
        keys = np.asarray(keys, dtype=U64).reshape(-1)
        step = max(1, chunk_elems // max(1, len(tokens)))
        out = np.empty(len(keys), dtype=np.float64)
        for i in range(0, len(keys), step):
            out[i : i + step] = self.pair_scores(keys[i : i + step], contexts, tokens, vocab_size).sum(axis=1)
        return out

    @abstractmethod
    def p_value(self, total: float | np.ndarray, n: int | np.ndarray, vocab_size: int | None) -> np.ndarray | float:
        """Exact P(summed score >= total) over ``n`` distinct tuples of text written without the key."""

    @abstractmethod
    def null_moments(self, vocab_size: int | None) -> tuple[float, float]:
        """(mean, variance) of one tuple's score under the null (for z-scores and fractions shown to readers)."""

    @abstractmethod
    def null_log_mgf(self, lam: np.ndarray, vocab_size: int | None) -> np.ndarray:
        """``log E[exp(lam S)]`` of one tuple's score ``S`` under the null, for each ``lam >= 0`` (``inf`` where it
        does not exist): what a sequential test (a test martingale) of the summed score needs."""

    def reported(self, total: float) -> int | float:
        """A summed score as results report it: the green count (an int) for a ``"bias"`` member, else the float."""
        return round(total) if self.kind == "bias" else float(total)

    def z(self, total: float, n: int, vocab_size: int | None) -> float:
        """The z-score of a summed score (reported; decisions use :meth:`p_value`)."""
        if n <= 0:
            return 0.0
        mean, var = self.null_moments(vocab_size)
        return float((total - n * mean) / math.sqrt(n * var))

    def marks_step(self, entropy: np.ndarray) -> np.ndarray:
        """(B,) bool: which rows are marked at this step, given the entropy of each row's next-token distribution."""
        return np.ones(np.shape(entropy), dtype=bool)

    def green_mask(
        self, keys: np.ndarray, contexts: np.ndarray, vocab_size: int, workspace: Workspace | None = None
    ) -> np.ndarray:
        raise InputError(f"scheme {self.name} has no green list: it chooses tokens by sampling")

    def choose(
        self,
        probs: np.ndarray,
        keys: np.ndarray,
        contexts: np.ndarray,
        coins: np.ndarray | None = None,
        workspace: Workspace | None = None,
    ) -> np.ndarray:
        """(B,) token ids chosen from the (B, V) final probabilities (``"sample"`` schemes only)."""
        raise InputError(f"scheme {self.name} marks by a logit bias, not by sampling")


class GreenListScheme(Scheme):
    """A green-list (KGW) member: a keyed ``gamma`` fraction of the vocabulary is green in each context, and green
    logits get ``+delta``. The score of a tuple is 1 if green, else 0; the null is Binomial(n, gamma)."""

    kind: ClassVar[str] = "bias"

    def null_probability(self, vocab_size: int | None) -> float:
        """P(a fixed token is green) when the text does not depend on the key: the binomial null."""
        return self.gamma

    def pair_scores(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None
    ) -> np.ndarray:
        return self.is_green(keys, contexts, tokens, vocab_size).astype(np.float64)

    def score_sums(
        self,
        keys: np.ndarray,
        contexts: np.ndarray,
        tokens: np.ndarray,
        vocab_size: int | None,
        chunk_elems: int = 1 << 18,
    ) -> np.ndarray:
        return self.count_green(keys, contexts, tokens, vocab_size).astype(np.float64)

    def p_value(self, total: float | np.ndarray, n: int | np.ndarray, vocab_size: int | None) -> np.ndarray | float:
        return binomial_sf(np.rint(total), n, self.null_probability(vocab_size))

    def null_moments(self, vocab_size: int | None) -> tuple[float, float]:
        p = self.null_probability(vocab_size)
        return p, p * (1.0 - p)

    def null_log_mgf(self, lam: np.ndarray, vocab_size: int | None) -> np.ndarray:
        return bernoulli_log_mgf(lam, self.null_probability(vocab_size))

    @abstractmethod
    def green_mask(
        self, keys: np.ndarray, contexts: np.ndarray, vocab_size: int, workspace: Workspace | None = None
    ) -> np.ndarray:
        """(B, V) bool: the green lists for B rows, each with its own key (uint64, (B,)) and context (B, h).

        With a ``workspace`` the result may live in it (valid until its next use); without, it is a new array.
        """

    @abstractmethod
    def is_green(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None
    ) -> np.ndarray:
        """(K, N) bool: whether token ``tokens[n]`` after ``contexts[n]`` is green under ``keys[k]``."""

    def count_green(
        self,
        keys: np.ndarray,
        contexts: np.ndarray,
        tokens: np.ndarray,
        vocab_size: int | None,
        chunk_elems: int = 1 << 20,
    ) -> np.ndarray:
        """(K,) green counts over the N (context, token) pairs, for K keys, in cache-sized chunks."""
        keys = np.asarray(keys, dtype=U64).reshape(-1)
        n = max(1, len(tokens))
        step = max(1, chunk_elems // n)
        out = np.empty(len(keys), dtype=np.int64)
        for i in range(0, len(keys), step):
            out[i : i + step] = self.is_green(keys[i : i + step], contexts, tokens, vocab_size).sum(axis=1)
        return out


class HashScheme(GreenListScheme):
    """``antidistill-v1``: O(1) keyed-hash membership (see the module docstring)."""

    name = "antidistill-v1"

    def __init__(self, gamma: float, context_width: int, entropy_threshold: float = 0.0) -> None:
        super().__init__(gamma, context_width, entropy_threshold)
        self._thr = threshold(gamma)

    def null_probability(self, vocab_size: int | None) -> float:
        return int(self._thr) / TWO64

    def green_mask(
        self, keys: np.ndarray, contexts: np.ndarray, vocab_size: int, workspace: Workspace | None = None
    ) -> np.ndarray:
        # fmix64(k ^ H(c) ^ T(t)) < thr over (B, V), with fmix64's first step folded into the row and token
        # parts and every (B, V) array reused from the workspace: bit-identical to the plain formula.
        row = _premix(np.asarray(keys, dtype=U64) ^ context_hash(contexts))
        ws = workspace if workspace is not None else Workspace()
        shape = (len(row), vocab_size)
        x = ws.array("hash", shape, U64)
        np.bitwise_xor(row[:, None], premixed_token_table(vocab_size)[None, :], out=x)
        return _premixed_below(x, self._thr, ws.array("tmp", shape, U64), ws.array("mask", shape, np.bool_))

    def pair_hash(self, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The key-independent part ``H(c) ^ T(t)`` of each pair (computed once, reused for every key)."""
        out: np.ndarray = context_hash(contexts) ^ token_hash(tokens)
        return out

    def is_green(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None = None
    ) -> np.ndarray:
        pairs = _premix(self.pair_hash(contexts, tokens))
        x = _premix(np.asarray(keys, dtype=U64).reshape(-1, 1)) ^ pairs[None, :]
        return _premixed_below(x, self._thr, np.empty_like(x), np.empty(x.shape, dtype=np.bool_))

    def count_green(
        self,
        keys: np.ndarray,
        contexts: np.ndarray,
        tokens: np.ndarray,
        vocab_size: int | None = None,
        chunk_elems: int = 1 << 18,
    ) -> np.ndarray:
        keys = _premix(np.asarray(keys, dtype=U64).reshape(-1))
        pairs = _premix(self.pair_hash(contexts, tokens))
        n = max(1, len(pairs))
        step = max(1, chunk_elems // n)
        out = np.empty(len(keys), dtype=np.int64)
        shape = (min(step, len(keys)), len(pairs))
        buf, tmp = np.empty(shape, dtype=U64), np.empty(shape, dtype=U64)
        green = np.empty(shape, dtype=np.bool_)
        for i in range(0, len(keys), step):
            k = keys[i : i + step]
            m = len(k)
            np.bitwise_xor(k[:, None], pairs[None, :], out=buf[:m])
            below = _premixed_below(buf[:m], self._thr, tmp[:m], green[:m])
            out[i : i + m] = np.count_nonzero(below, axis=1)
        return out


class HFLefthashScheme(GreenListScheme):
    """``hf-lefthash``: the green lists of transformers' ``WatermarkLogitsProcessor`` (seeding "lefthash").

    transformers seeds a ``torch.Generator`` with ``hashing_key * last_token`` and takes the first
    ``int(V * gamma)`` entries of ``randperm(V)``: only the last context token seeds the list, whatever the
    context width. Lists are cached per (key, token) because each costs a vocabulary-sized permutation.
    """

    name = "hf-lefthash"

    single_key: ClassVar[bool] = True

    def __init__(
        self, gamma: float, context_width: int, entropy_threshold: float = 0.0, cache_size: int = 4096
    ) -> None:
        super().__init__(gamma, context_width, entropy_threshold)
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def null_probability(self, vocab_size: int | None) -> float:
        if vocab_size is None:
            raise InputError("the hf-lefthash scheme needs the model's vocabulary size")
        return int(vocab_size * self.gamma) / vocab_size

    def _list(self, key: int, last_token: int, vocab_size: int) -> np.ndarray:
        ck = (key, last_token, vocab_size)
        with self._lock:
            hit = self._cache.get(ck)
            if hit is not None:
                self._cache.move_to_end(ck)
                return hit
        require("model", "the hf-lefthash scheme")  # it draws torch's permutations
        import torch  # heavy, and only this interoperability scheme needs it

        gen = torch.Generator(device="cpu")
        gen.manual_seed((key * last_token) % (2**64 - 1))
        perm = torch.randperm(vocab_size, generator=gen)
        mask = np.zeros(vocab_size, dtype=bool)
        mask[perm[: int(vocab_size * self.gamma)].numpy()] = True
        with self._lock:
            self._cache[ck] = mask
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return mask

    def green_mask(
        self, keys: np.ndarray, contexts: np.ndarray, vocab_size: int, workspace: Workspace | None = None
    ) -> np.ndarray:
        ctx = np.asarray(contexts, dtype=np.int64)
        return np.stack([self._list(int(k), int(c[-1]), vocab_size) for k, c in zip(keys, ctx, strict=True)])

    def is_green(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None = None
    ) -> np.ndarray:
        if vocab_size is None:
            raise InputError("the hf-lefthash scheme needs the model's vocabulary size")
        ctx = np.asarray(contexts, dtype=np.int64)
        toks = np.asarray(tokens, dtype=np.int64)
        out = np.zeros((len(keys), len(toks)), dtype=bool)
        for i, k in enumerate(np.asarray(keys, dtype=U64).reshape(-1)):
            for j in range(len(toks)):
                out[i, j] = self._list(int(k), int(ctx[j, -1]), vocab_size)[toks[j]]
        return out


class EntropyKGWScheme(HashScheme):
    """``kgw-entropy``: the ``antidistill-v1`` green lists, applied only where the model is uncertain.

    A step is marked only when the entropy of the model's next-token distribution (the raw logits, before
    temperature) is at least ``entropy_threshold`` nats, in the spirit of SWEET (Lee et al. 2024,
    https://arxiv.org/abs/2305.15060): near-deterministic steps (a word's second half, a closing bracket) are
    left alone, which is where a green-list bias hurts text most and gains least. Detection needs no model:
    every distinct tuple is scored, and the p-value stays exact, because which positions count is decided
    without the key. Where the unmarked model is at hand, a caller may keep only the positions whose entropy
    reaches the threshold (``keep`` in :class:`antidistill.detection.detector.Detector`): still exact (the
    selection does not depend on the key), and stronger, since unmarked low-entropy steps no longer dilute.
    """

    name = "kgw-entropy"

    def marks_step(self, entropy: np.ndarray) -> np.ndarray:
        return np.asarray(entropy) >= self.entropy_threshold
