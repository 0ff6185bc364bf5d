"""Watermarked and unmarked token sequences on a tiny vocabulary, without a model.

Each step draws a fresh random logit vector (a stand-in for a language model's next-token distribution), adds
``delta`` to the green list of the row's context under the row's keys (the very same ``Watermark.green_mask``
generation uses), and samples with the Gumbel-max trick. Everything is vectorised over the batch.
"""

from __future__ import annotations

import numpy as np

from antidistill.keys import MasterKey, WatermarkKey
from antidistill.watermark.core import U64
from antidistill.watermark.marker import Watermark

#: A fixed master key for the tests (never a real secret).
TEST_MASTER = MasterKey(bytes(range(32)))


def uniform_tokens(rng: np.random.Generator, length: int, vocab_size: int, batch: int | None = None) -> np.ndarray:
    """Unmarked text: tokens drawn uniformly, independently of every key."""
    shape = (length,) if batch is None else (batch, length)
    return rng.integers(0, vocab_size, size=shape)


def sample(
    rng: np.random.Generator,
    watermark: Watermark,
    account: WatermarkKey | None,
    provider: WatermarkKey | None,
    length: int,
    vocab_size: int,
    batch: int = 1,
    prefix: np.ndarray | None = None,
    logit_scale: float = 1.0,
) -> np.ndarray:
    """(batch, length) token ids; the first ``context_width`` come from ``prefix`` (or are uniform), the rest
    are sampled with the watermark of ``account`` (+ ``provider``), or unmarked when ``account`` is None (a
    green-list scheme biases the logits by delta; a sampling scheme chooses the token by its own rule)."""
    h = watermark.config.context_width
    out = np.empty((batch, length), dtype=np.int64)
    if prefix is None:
        out[:, :h] = rng.integers(0, vocab_size, size=(batch, h))
    else:
        out[:, :h] = np.broadcast_to(np.asarray(prefix)[..., -h:], (batch, h))
    acc = np.full(batch, account.value if account else 0, dtype=U64)
    prov = np.full(batch, provider.value, dtype=U64) if provider else None
    sampling = watermark.scheme.kind == "sample"
    for i in range(h, length):
        logits = rng.normal(0.0, logit_scale, size=(batch, vocab_size))
        if account is not None and sampling:  # Gumbel-max and tournament: the scheme draws the token itself
            contexts = out[:, i - h : i]
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            keys = watermark.row_keys(contexts, acc, prov)
            out[:, i] = watermark.scheme.choose(probs, keys, contexts, rng.random(batch))
            continue
        if account is not None:
            mask = watermark.green_mask(out[:, i - h : i], acc, prov, vocab_size)
            logits += watermark.config.delta * mask
        out[:, i] = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    return out
