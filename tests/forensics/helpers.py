"""Test helpers for the scans: a model that always leans to one key's green lists, and green word streams."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from antidistill.watermark.core import U64
from antidistill.watermark.marker import MarkKeys, Watermark


class GreenBias:
    """The teacher plus ``bias`` on the green logits of ``mark`` (provider key at provider positions, the account
    key elsewhere): what a student that learnt the watermark of that account looks like at its most radioactive.

    Called like a transformers causal LM (``input_ids=``, ``attention_mask=``) and returns ``.logits``.
    """

    def __init__(self, model, watermark: Watermark, mark: MarkKeys, bias: float = 8.0, rows: int = 128) -> None:
        self.model = model
        self.watermark = watermark
        self.mark = mark
        self.bias = bias
        self.rows = rows

    def __call__(self, input_ids, attention_mask=None, **kwargs):
        import torch

        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        b, length, v = logits.shape
        h = self.watermark.config.context_width
        ids = input_ids.cpu().numpy()
        flat = logits.reshape(b * length, v)
        # context of the prediction at position j: the h tokens ending at j (left-padded with the first token)
        padded = np.concatenate([np.repeat(ids[:, :1], h - 1, axis=1), ids], axis=1) if h > 1 else ids
        ctx = np.lib.stride_tricks.sliding_window_view(padded, h, axis=1).reshape(b * length, h)
        for i in range(0, b * length, self.rows):
            c = ctx[i : i + self.rows]
            acc = np.full(len(c), self.mark.account.value, dtype=U64)
            prov = np.full(len(c), self.mark.provider.value, dtype=U64) if self.mark.provider else None
            mask = self.watermark.green_mask(c, acc, prov, v)
            flat[i : i + self.rows] += self.bias * torch.from_numpy(mask.astype(np.float32))
        return SimpleNamespace(logits=flat.reshape(b, length, v))


def word_tokens(tokenizer, words) -> list[int]:
    """Ids of `` word`` for the words that are one token each (text made of them re-tokenizes identically)."""
    out = []
    for w in words:
        ids = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out.append(int(ids[0]))
    return sorted(set(out))


def green_words(
    tokenizer,
    watermark: Watermark,
    mark: MarkKeys | None,
    vocab: list[int],
    length: int,
    rng: np.random.Generator,
    p_green: float = 0.95,
) -> str:
    """A text of ``length`` single-token words; each word green (under ``mark``, given the previous
    ``context_width`` words) with probability ``p_green`` where it can be (unmarked and uniform when ``mark`` is
    None). For a sampling member, "green" is the member's own keyed choice among the words."""
    vocab_arr = np.array(vocab, dtype=np.int64)
    h = watermark.config.context_width
    ids = [int(t) for t in rng.choice(vocab_arr, min(h, length))]
    for _ in range(length - len(ids)):
        if mark is None:
            ids.append(int(rng.choice(vocab_arr)))
            continue
        ctx = np.array([ids[-h:]], dtype=np.int64)
        prov = np.array([mark.provider.value], dtype=U64) if mark.provider else None
        key = watermark.row_keys(ctx, np.array([mark.account.value], dtype=U64), prov)
        if watermark.scheme.kind == "sample":  # the member's own choice among the words, uniform probabilities
            probs = np.zeros((1, int(vocab_arr.max()) + 1))
            probs[0, vocab_arr] = 1.0 / len(vocab_arr)
            chosen = int(watermark.scheme.choose(probs, key, ctx, rng.random(1))[0])
            ids.append(chosen if rng.random() < p_green else int(rng.choice(vocab_arr)))
            continue
        green = watermark.scheme.is_green(key, np.repeat(ctx, len(vocab_arr), axis=0), vocab_arr, None)[0]
        pool = vocab_arr[green] if (rng.random() < p_green and green.any()) else vocab_arr
        ids.append(int(rng.choice(pool)))
    return tokenizer.decode(ids)
