"""vLLM's native Gumbel-max watermarks, read by our detector: two read-only interoperability members.

vLLM (from 0.32, ``--watermark-config '{"key": K, "algorithm": "gumbel"}'``) marks completions with Gumbel-max
sampling (Aaronson 2022, https://scottaaronson.blog/?p=6823) under an integer key ``K < 2**64``. Its keyed
randomness is the Philox4x32-10 counter-based generator (Salmon et al. 2011, "Parallel random numbers: as easy as
1, 2, 3", https://doi.org/10.1145/2063384.2063405), used as a pseudo-random function of the key, the context and
the token; this module implements that function in numpy, so ``antidistill detect`` reads vLLM's marks and scores
exactly the numbers vLLM's own detector does.

The keyed uniform ``u(K, c, t)`` of token ``t`` after the context ``c = (c_1 .. c_h)``:

1. the key's two 32-bit words ``k0 = K mod 2**32``, ``k1 = K >> 32``;
2. the context is absorbed four tokens at a time: the state starts as ``(0x574D4358, h, 0, 0)``; block ``j`` (tokens
   ``4j .. 4j+3``, positions past ``h`` filled with ``0xFFFFFFFF - i``) is xored into the state, and the state becomes
   Philox4x32-10 of it under the key ``(k0 ^ 4j, k1)``. Token ids enter as 32-bit words: the ``-1`` that pads the
   context of the first ``h`` generated tokens is ``0xFFFFFFFF``;
3. with the state ``(s0, s1, s2, s3)``: the output words are Philox4x32-10 of ``(t >> 2, s0, s1, s2)`` under the key
   ``(k0 ^ s3, k1 ^ 0x574D544B)``, and word ``t & 3`` is the token's;
4. the word's top 24 bits ``m`` give ``u = (m + 1) / (2**24 + 1)``, rounded to float32 (as vLLM does).

Generation (vLLM's sampler, ``vllm/v1/watermarking``): the context of a generated token is the ``h`` tokens
generated before it, padded with ``-1`` (the prompt is not part of it), so the first generated token has the context
``(-1, .., -1)``; a step whose context already occurred in the answer is sampled without the mark (vLLM's default
``deduplicate_contexts="single_turn"``). Detection (vLLM's ``GumbelWatermarkDetector``) scores every token of the
completion with that padded context, the first occurrence of each context only, by ``-log(1 - u)``; the sum over
``n`` tokens is Gamma(n, 1) for text written without the key, and the p-value is its upper tail. Our detector does
the same (:attr:`~antidistill.watermark.core.Scheme.pads_context` and
:attr:`~antidistill.watermark.core.Scheme.fresh_contexts_only`), on the completion's token ids.

Members:

* ``vllm-gumbel`` (vLLM's ``algorithm="gumbel"``): the uniforms above under ``K``.
* ``vllm-dual-gumbel`` (``algorithm="dual_key_gumbel"``): two keys ``K_A``, ``K_B`` are derived from ``K`` (the first
  8 bytes, big-endian, of ``SHA-256(b"key_a" + K as 8 big-endian bytes)``, and ``b"key_b"`` likewise); each step
  draws the token under ``K_B`` with probability ``alpha`` (vLLM's config, default 0.1), else under ``K_A``. vLLM's
  detector scores a token by ``(1 - alpha) s_A + alpha s_B`` (``s = -log(1 - u)`` under each key), which needs
  ``alpha``: our ``key_b_probability``. The null of the sum is ``(1 - alpha) G_A + alpha G_B`` with ``G_A``, ``G_B``
  independent Gamma(n, 1); we give its exact tail (:func:`~antidistill.watermark.nulls.weighted_gamma_sf`), where vLLM
  uses a Gamma with the same mean and variance (exact for alpha 0, 1/2 and 1 only).

The uniforms have 24 bits: one token's score is at most ``-log(1 - (1 - 2**-24)) = 16.6``, and the null holds to that
resolution. vLLM 0.32 has no green-list (KGW) member, so there is none to read here.

Read-only: these members detect; they do not generate (:attr:`~antidistill.watermark.core.Scheme.generates`). Pure
functions on numpy arrays, no torch: no tokenizer, model, file or network here.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import numpy as np

from antidistill.errors import InputError
from antidistill.watermark.core import U64, Scheme, Workspace
from antidistill.watermark.nulls import gamma_sf, weighted_exp_log_mgf, weighted_gamma_sf

_MASK32 = U64(0xFFFFFFFF)
_M0 = U64(0xD2511F53)
_M1 = U64(0xCD9E8D57)
_W0 = U64(0x9E3779B9)
_W1 = U64(0xBB67AE85)
_S32 = U64(32)
_S8 = U64(8)
_S2 = U64(2)
_CONTEXT_DOMAIN = U64(0x574D4358)  # "WMCX"
_TOKEN_DOMAIN = U64(0x574D544B)  # "WMTK"
_UNIFORM_DENOMINATOR = float(2**24 + 1)
#: vLLM's default share of steps drawn under key B (``WatermarkConfig.alpha``)
DEFAULT_KEY_B_PROBABILITY = 0.1
#: widest context these members accept (vLLM accepts any width and warns above 16)
MAX_VLLM_CONTEXT_WIDTH = 16

Words = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def philox4x32_10(counter: Words, key: tuple[np.ndarray, np.ndarray]) -> Words:
    """Philox4x32-10 (Salmon et al. 2011) on uint64 arrays holding 32-bit words; the arrays broadcast.

    Each round multiplies words 0 and 2 by fixed constants into 64-bit products (exact in uint64, since both factors
    are below 2**32), and the high halves are xored with the other words and the round key; the key is bumped by the
    Weyl constants between rounds.

    Example:
        >>> z = np.zeros(1, dtype=np.uint64)
        >>> [hex(int(w[0])) for w in philox4x32_10((z, z, z, z), (z, z))]  # Random123's known-answer vector
        ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        p0 = c0 * _M0
        p1 = c2 * _M1
        c0, c1, c2, c3 = (p1 >> _S32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> _S32) ^ c3 ^ k1, p0 & _MASK32
        if r != 9:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def words32(ids: np.ndarray) -> np.ndarray:
    """Token ids (int64, ``-1`` for padding) as the 32-bit words vLLM's PRF takes (two's complement, ``-1`` is
    ``0xFFFFFFFF``), in uint64."""
    out: np.ndarray = (np.asarray(ids, dtype=np.int64) & 0xFFFFFFFF).astype(U64)
    return out


def philox_words(keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """(K, N) uint64: the 32-bit Philox word of each (context, token) under each key (steps 1-3 of the module doc).

    Args:
        keys: (K,) vLLM keys (uint64).
        contexts: (N, h) token ids before each token (``-1`` for padding).
        tokens: (N,) token ids.
    """
    keys = np.asarray(keys, dtype=U64).reshape(-1, 1)
    ctx = words32(contexts)
    if ctx.ndim != 2:
        raise InputError(f"contexts must be a 2-D (n, h) array, got shape {ctx.shape}")
    toks = words32(tokens).reshape(1, -1)
    n, h = ctx.shape
    k0 = keys & _MASK32
    k1 = keys >> _S32
    shape = (len(keys), n)
    s: Words = (
        np.full(shape, _CONTEXT_DOMAIN, dtype=U64),
        np.full(shape, U64(h), dtype=U64),
        np.zeros(shape, dtype=U64),
        np.zeros(shape, dtype=U64),
    )
    for offset in range(0, h, 4):  # blocks of four context tokens (h <= 16: a loop over blocks, not tokens)
        block = [ctx[:, j][None, :] if j < h else _MASK32 - U64(j - offset) for j in range(offset, offset + 4)]
        counter: Words = (s[0] ^ block[0], s[1] ^ block[1], s[2] ^ block[2], s[3] ^ block[3])
        s = philox4x32_10(counter, (k0 ^ U64(offset), k1))
    out = philox4x32_10((np.broadcast_to(toks >> _S2, shape), s[0], s[1], s[2]), (k0 ^ s[3], k1 ^ _TOKEN_DOMAIN))
    which = np.broadcast_to(toks & U64(3), shape)
    word: np.ndarray = np.choose(which.astype(np.intp), out)
    return word


def to_vllm_uniform(words: np.ndarray) -> np.ndarray:
    """vLLM's uniform of a 32-bit word: ``(top 24 bits + 1) / (2**24 + 1)``, rounded to float32 (as float64)."""
    m = (np.asarray(words, dtype=U64) & _MASK32) >> _S8
    out: np.ndarray = ((m.astype(np.float64) + 1.0) / _UNIFORM_DENOMINATOR).astype(np.float32).astype(np.float64)
    return out


def vllm_uniforms(keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """(K, N) vLLM's keyed uniforms ``u(K, c_n, t_n)`` (its ``PhiloxPRF(K).uniform``), float32 values as float64."""
    return to_vllm_uniform(philox_words(keys, contexts, tokens))


def derive_key(key: int, domain: bytes) -> int:
    """vLLM's ``derive_watermark_key``: the first 8 bytes (big-endian) of ``SHA-256(domain + key as 8 big-endian
    bytes)``."""
    return int.from_bytes(hashlib.sha256(domain + int(key).to_bytes(8, "big")).digest()[:8], "big")


def derived_keys(keys: np.ndarray, domain: bytes) -> np.ndarray:
    """:func:`derive_key` for each key (uint64)."""
    return np.array([derive_key(int(k), domain) for k in np.asarray(keys, dtype=U64).reshape(-1)], dtype=U64)


def _exp_scores(u: np.ndarray) -> np.ndarray:
    out: np.ndarray = -np.log1p(-u)
    return out


class VLLMGumbelScheme(Scheme):
    """``vllm-gumbel``: reads vLLM's ``algorithm="gumbel"`` marks (see the module docstring); the key is vLLM's integer
    key, given with ``--hashing-key``.

    Args:
        gamma: unused (the family's signature).
        context_width: vLLM's ``context_width`` (default 4).
        entropy_threshold: unused.

    Example:
        >>> s = VLLMGumbelScheme(0.25, 4)
        >>> s.pair_scores(np.array([42], dtype=np.uint64), np.full((1, 4), -1), np.array([7])).shape
        (1, 1)
    """

    name = "vllm-gumbel"
    kind: ClassVar[str] = "sample"
    single_key: ClassVar[bool] = True
    generates: ClassVar[bool] = False
    fresh_contexts_only: ClassVar[bool] = True  # vLLM's detector deduplicates contexts (its default)
    pads_context: ClassVar[bool] = True
    default_context_width: ClassVar[int] = 4
    max_context_width: ClassVar[int] = MAX_VLLM_CONTEXT_WIDTH

    def pair_scores(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None = None
    ) -> np.ndarray:
        return _exp_scores(vllm_uniforms(keys, contexts, tokens))

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
        raise InputError(
            f"scheme {self.name} is a read-only interoperability member: it reads vLLM's marks, vLLM makes them"
        )


class VLLMDualGumbelScheme(VLLMGumbelScheme):
    """``vllm-dual-gumbel``: reads vLLM's ``algorithm="dual_key_gumbel"`` marks; the tuple score is vLLM's
    ``(1 - alpha) s_A + alpha s_B`` and the p-value the exact tail of its null (see the module docstring).

    Args:
        gamma: unused (the family's signature).
        context_width: vLLM's ``context_width`` (default 4).
        entropy_threshold: unused.
        key_b_probability: vLLM's ``alpha``, the share of steps drawn under key B (default 0.1).
    """

    name = "vllm-dual-gumbel"

    def __init__(
        self,
        gamma: float,
        context_width: int,
        entropy_threshold: float = 0.0,
        key_b_probability: float = DEFAULT_KEY_B_PROBABILITY,
    ) -> None:
        super().__init__(gamma, context_width, entropy_threshold)
        if not 0.0 <= key_b_probability <= 1.0:
            raise InputError(f"key_b_probability must be in [0, 1], got {key_b_probability}")
        self.key_b_probability = key_b_probability

    def pair_scores(
        self, keys: np.ndarray, contexts: np.ndarray, tokens: np.ndarray, vocab_size: int | None = None
    ) -> np.ndarray:
        alpha = self.key_b_probability
        s_a = _exp_scores(vllm_uniforms(derived_keys(keys, b"key_a"), contexts, tokens))
        s_b = _exp_scores(vllm_uniforms(derived_keys(keys, b"key_b"), contexts, tokens))
        out: np.ndarray = (1.0 - alpha) * s_a + alpha * s_b
        return out

    def p_value(self, total: float | np.ndarray, n: int | np.ndarray, vocab_size: int | None) -> np.ndarray | float:
        return weighted_gamma_sf(total, n, self.key_b_probability)

    def null_moments(self, vocab_size: int | None) -> tuple[float, float]:
        alpha = self.key_b_probability
        return 1.0, (1.0 - alpha) ** 2 + alpha**2

    def null_log_mgf(self, lam: np.ndarray, vocab_size: int | None) -> np.ndarray:
        return weighted_exp_log_mgf(lam, (1.0 - self.key_b_probability, self.key_b_probability))
