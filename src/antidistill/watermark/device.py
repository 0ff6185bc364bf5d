"""The vocabulary-sized work of marking, in torch on the logits' device (CPU, CUDA, any torch device).

The scheme core (:mod:`antidistill.watermark.core`, :mod:`antidistill.watermark.gumbel`) computes in numpy on the
host. At every generation step it does O(B) work per row (the row's key, its context hash) and O(B * V) work over
the vocabulary (a 64-bit hash of every (row, token), then a green bit or a uniform per token). When the logits
live on an accelerator, doing the (B, V) part on the host means copying the probabilities to the host and a mask
back at every step, which costs more than the hashing itself. This module does that part where the logits are,
bit for bit as the core does it:

* the (B,) row part is taken from the core itself (``context_hash``, the keys each member races with), so it
  cannot drift; only the (V,)-wide mixing is written again, in torch;
* torch has no unsigned 64-bit arithmetic, so the hashes are held as int64 with the same bits: multiplication
  and xor are the same on two's-complement bits (multiplication wraps), a logical right shift is the arithmetic
  shift with the sign-extended bits masked off, and an unsigned comparison ``a < b`` is the signed comparison of
  ``a ^ 2**63`` and ``b ^ 2**63``;
* uniforms are built exactly as :func:`antidistill.watermark.gumbel.to_unit` builds them (the top 53 bits,
  ``+ 0.5``, ``* 2**-53``, in float64), and the race ``argmax log(u) / p`` runs in float64, the first maximum
  winning as in numpy. The green masks and the uniforms are identical to the core's; the chosen token is the
  core's too, except where two tokens' race scores agree to the last bit of a float64 (``log`` may round
  differently in the last bit on another library or device), which has probability of order 1e-12 per step.

Members with a kernel here: ``antidistill-v1`` and ``kgw-entropy`` (green masks), ``gumbel`` and ``gumbel-dual``
(the Gumbel-max choice). The others (``hf-lefthash``, ``markllm-exp``, ``tournament``) run on the host:
:func:`supported` says which. ``tests/watermark/test_device.py`` checks equality against the core.

Example:
    >>> import numpy as np
    >>> from antidistill.watermark.core import HashScheme
    >>> scheme = HashScheme(0.25, 1)
    >>> keys, ctx = np.array([7, 8], dtype=np.uint64), np.array([[3], [4]])
    >>> mask = green_mask(scheme, keys, ctx, 1000, torch.device("cpu"))
    >>> bool((mask.numpy() == scheme.green_mask(keys, ctx, 1000)).all())
    True
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from antidistill.errors import InputError
from antidistill.watermark.core import (
    U64,
    EntropyKGWScheme,
    HashScheme,
    Scheme,
    context_hash,
    premixed_token_table,
)
from antidistill.watermark.gumbel import DualGumbelScheme, GumbelScheme

_BITS = 64
_SIGN = -(1 << 63)  # 2**63 as an int64 bit pattern: xor with it maps unsigned order onto signed order
_LOW31 = (1 << 31) - 1

#: members whose green mask has a kernel here (exact types: a new subclass runs on the host until it has one)
_GREEN_LISTS: tuple[type[Scheme], ...] = (HashScheme, EntropyKGWScheme)
#: members whose Gumbel-max choice has a kernel here
_RACES: tuple[type[Scheme], ...] = (GumbelScheme, DualGumbelScheme)


def signed(value: int) -> int:
    """The int64 with the same 64 bits as the unsigned ``value`` (``0 <= value < 2**64``)."""
    v = int(value)
    if not 0 <= v < 1 << _BITS:
        raise InputError(f"value must be in [0, 2**64), got {v}")
    return v - (1 << _BITS) if v >= 1 << (_BITS - 1) else v


# fmix64's multipliers, as int64 (the same bits as core._M1, core._M2)
_M1 = signed(0xFF51AFD7ED558CCD)
_M2 = signed(0xC4CEB9FE1A85EC53)


def as_int64(x: np.ndarray) -> torch.Tensor:
    """A uint64 numpy array as an int64 tensor with the same bits (on the CPU; a copy)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=U64).view(np.int64).copy())


def shift_right(x: torch.Tensor, s: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    out = torch.bitwise_right_shift(x, s, out=out) if out is not None else torch.bitwise_right_shift(x, s)
    return out.bitwise_and_((1 << (_BITS - s)) - 1)


def _mix_tail(x: torch.Tensor, last: bool = True) -> torch.Tensor:
    """fmix64 after its first xor-shift, in place on premixed int64 hashes (``last``: the final xor-shift too)."""
    tmp = torch.empty_like(x)
    x.mul_(_M1)
    x.bitwise_xor_(shift_right(x, 33, out=tmp))
    x.mul_(_M2)
    if last:
        x.bitwise_xor_(shift_right(x, 33, out=tmp))
    return x


_tables: dict[tuple[int, str], torch.Tensor] = {}
_tables_lock = threading.Lock()


def token_table(vocab_size: int, device: torch.device) -> torch.Tensor:
    """(V,) int64: the core's premixed token table (``T(t) ^ (T(t) >> 33)``), cached per (vocabulary, device)."""
    ck = (vocab_size, str(device))
    with _tables_lock:
        hit = _tables.get(ck)
    if hit is not None:
        return hit
    table = as_int64(premixed_token_table(vocab_size)).to(device)
    with _tables_lock:
        if len(_tables) >= 16:
            _tables.clear()
        return _tables.setdefault(ck, table)


def _row_hashes(rows: np.ndarray, vocab_size: int, device: torch.device, last: bool = True) -> torch.Tensor:
    """(B, V) int64 ``fmix64(r_b ^ T(t))`` for the (B,) uint64 row parts ``r_b`` (``last``: see :func:`_mix_tail`)."""
    r = np.asarray(rows, dtype=U64)
    premixed = as_int64(r ^ (r >> U64(33))).to(device, non_blocking=True)  # fmix64's first step, row part
    x = premixed[:, None] ^ token_table(vocab_size, device)[None, :]
    return _mix_tail(x, last)


def supported(scheme: Scheme) -> bool:
    """Whether the member's vocabulary-sized work has a kernel here (else it stays on the host)."""
    t = type(scheme)
    return t in _GREEN_LISTS if scheme.kind == "bias" else t in _RACES


def green_mask(
    scheme: Scheme, keys: np.ndarray, contexts: np.ndarray, vocab_size: int, device: torch.device
) -> torch.Tensor:
    """(B, V) bool on ``device``: ``scheme.green_mask(keys, contexts, vocab_size)``, computed there.

    Args:
        scheme: an ``antidistill-v1`` or ``kgw-entropy`` member.
        keys: (B,) uint64, the key of each row (see :meth:`~antidistill.watermark.marker.Watermark.row_keys`).
        contexts: (B, h) token ids.
        vocab_size: V.
        device: where the mask is made (the logits' device).
    """
    if type(scheme) not in _GREEN_LISTS or not isinstance(scheme, HashScheme):
        raise InputError(f"scheme {scheme.name} has no device green-list kernel")
    thr = int(scheme._thr)
    rows = np.asarray(keys, dtype=U64) ^ context_hash(contexts)
    # As the core does: below a multiple of 2**31 depends on the top 33 bits only, which the last step keeps.
    x = _row_hashes(rows, vocab_size, device, last=bool(thr & _LOW31))
    return x.bitwise_xor_(_SIGN) < signed(thr) ^ _SIGN


def uniforms(race_keys: np.ndarray, contexts: np.ndarray, vocab_size: int, device: torch.device) -> torch.Tensor:
    """(B, V) float64 on ``device``: :func:`antidistill.watermark.gumbel.row_uniforms` for the mixed keys."""
    rows = np.asarray(race_keys, dtype=U64) ^ context_hash(contexts)
    hi = shift_right(_row_hashes(rows, vocab_size, device), 11)  # the top 53 bits, as to_unit takes them
    return hi.to(torch.float64).add_(0.5).mul_(2.0**-53)


def choose(
    scheme: Scheme,
    probs: torch.Tensor,
    keys: np.ndarray,
    contexts: np.ndarray,
    coins: np.ndarray | None = None,
) -> torch.Tensor:
    """(B,) int64 on ``probs``' device: the token ``scheme.choose`` picks from the (B, V) final probabilities.

    Args:
        scheme: a ``gumbel`` or ``gumbel-dual`` member.
        probs: (B, V) the distribution each row samples from (any float dtype; zeros are never chosen).
        keys: (B,) uint64 row keys; contexts: (B, h) token ids; coins: (B,) ``gumbel-dual``'s fresh uniforms.
    """
    if type(scheme) not in _RACES or not isinstance(scheme, GumbelScheme):
        raise InputError(f"scheme {scheme.name} has no device sampling kernel")
    u = uniforms(scheme.race_keys(keys, coins), contexts, probs.shape[-1], probs.device)
    # exp_race: argmax of log(u) / p in float64, tokens with p == 0 (or NaN) never chosen
    score = u.log_().div_(probs)
    score.masked_fill_(~(probs > 0), float("-inf"))
    return score.argmax(dim=-1)
