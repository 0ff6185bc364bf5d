"""Interoperability with transformers' own KGW watermark (``WatermarkingConfig``, seeding "lefthash").

A tiny random LlamaForCausalLM (built from a config, nothing downloaded) generates text both ways:
transformers' watermark is read by antidistill's detector, antidistill's processor is read by transformers'
``WatermarkDetector``, and the two agree on every single n-gram and on the counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessorList,
    WatermarkDetector,
    WatermarkingConfig,
)
from transformers.generation.logits_process import WatermarkLogitsProcessor as HFWatermarkLogitsProcessor

from antidistill.detection import Detector
from antidistill.keys import WatermarkKey
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64
from antidistill.watermark.marker import MarkKeys, Watermark
from antidistill.watermark.processor import WatermarkLogitsProcessor

VOCAB = 512
KEY = 15485863  # transformers' default hashing key
BIG_KEY = 2**63 + 12345  # key * token overflows 64 bits: exercises the modulo of the seed
GAMMA, DELTA = 0.25, 2.0
BATCH, PROMPT, NEW = 4, 4, 120


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model: threads only add overhead
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    m = LlamaForCausalLM(cfg).eval()
    yield m
    torch.set_num_threads(threads)


def hf_config(key: int = KEY, width: int = 1) -> WatermarkingConfig:
    return WatermarkingConfig(
        bias=DELTA, greenlist_ratio=GAMMA, hashing_key=key, seeding_scheme="lefthash", context_width=width
    )


def prompt(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (BATCH, PROMPT), generator=g)  # never BOS (1) nor EOS (2)


def generate(model, seed: int, **kwargs) -> torch.Tensor:
    """Generated tokens with the last prompt token in front (it seeds the first green list)."""
    torch.manual_seed(seed)
    out = model.generate(prompt(seed), do_sample=True, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0, **kwargs)
    return out[:, PROMPT - 1 :]


def hf_detector(model, key: int = KEY, width: int = 1) -> WatermarkDetector:
    return WatermarkDetector(
        model_config=model.config, device="cpu", watermarking_config=hf_config(key, width), ignore_repeated_ngrams=True
    )


def our_detector(width: int = 1) -> Detector:
    return Detector(WatermarkConfig.interop(GAMMA, DELTA, width), vocab_size=VOCAB)


@pytest.fixture(scope="module")
def hf_marked(model) -> torch.Tensor:
    return generate(model, 1, watermarking_config=hf_config())


@pytest.fixture(scope="module")
def unmarked(model) -> torch.Tensor:
    return generate(model, 2)


@pytest.fixture(scope="module")
def our_marked(model) -> torch.Tensor:
    proc = WatermarkLogitsProcessor(
        Watermark(WatermarkConfig.interop(GAMMA, DELTA, 1)), [MarkKeys(WatermarkKey.explicit(KEY))] * BATCH
    )
    return generate(model, 3, logits_processor=LogitsProcessorList([proc]))


def test_the_tiny_model_samples_with_high_entropy(unmarked):
    # the checks below are only meaningful if the model does not repeat itself
    for row in unmarked:
        assert len(set(row.tolist())) > 0.8 * len(row)


# ---- (a) transformers marks, antidistill detects -----------------------------------------------------------
def test_antidistill_detects_transformers_watermark(hf_marked, unmarked):
    det = our_detector()
    key = WatermarkKey.explicit(KEY)
    for row in hf_marked:
        rep = det.detect(row.numpy(), candidates=[key])
        assert rep.watermarked and rep.p_value < 1e-8
        assert rep.green_fraction > 0.5
    for row in unmarked:
        rep = det.detect(row.numpy(), candidates=[key])
        assert not rep.watermarked and rep.p_value > 1e-3
    # the key matters: the marked text under another key looks like any text
    for row in hf_marked:
        assert not det.detect(row.numpy(), candidates=[WatermarkKey.explicit(KEY + 2)]).watermarked


# ---- (b) antidistill marks, transformers detects -----------------------------------------------------------
def test_transformers_detects_antidistill_watermark(model, our_marked, unmarked):
    out = hf_detector(model)(our_marked, return_dict=True)
    assert out.prediction.all()
    assert (out.z_score > 6).all()
    assert not hf_detector(model)(unmarked, return_dict=True).prediction.any()
    assert not hf_detector(model, key=KEY + 2)(our_marked, return_dict=True).prediction.any()


# ---- (c) the same green lists, n-gram by n-gram ------------------------------------------------------------
@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize("key", [KEY, BIG_KEY])
def test_every_ngram_scores_the_same(model, hf_marked, our_marked, unmarked, width, key):
    hf = hf_detector(model, key, width)
    ours = our_detector(width)
    wk = WatermarkKey.explicit(key)
    batch = torch.cat([hf_marked, our_marked, unmarked])
    greens = 0
    for row in batch:
        ids = row.tolist()
        for i in range(len(ids) - width):
            prefix, target = ids[i : i + width], ids[i + width]
            theirs = bool(hf._get_ngram_score(torch.tensor(prefix), target))
            mine = bool(
                ours.scheme.is_green(np.array([key], dtype=U64), np.array([prefix]), np.array([target]), VOCAB)[0, 0]
            )
            assert theirs == mine, (prefix, target)
            greens += mine
    assert 0 < greens < batch.numel()
    out = hf(batch, return_dict=True)
    for r, row in enumerate(batch):
        res = ours.score(row.numpy(), wk)
        assert res.tokens_scored == out.num_tokens_scored[r]
        assert res.green == out.num_green_tokens[r]
        assert res.z == pytest.approx(float(out.z_score[r]), rel=1e-9)


def test_detector_counts_agree_on_text_with_repeats(model):
    # repeated n-grams: both count each distinct n-gram once (ignore_repeated_ngrams=True)
    rng = np.random.default_rng(70)
    unit = rng.integers(3, VOCAB, size=40)
    mixed = np.concatenate([unit, unit[::-1], unit, unit[:1]] * 2)[:200]
    batch = torch.from_numpy(np.stack([np.tile(unit, 5), mixed]))
    out = hf_detector(model)(batch, return_dict=True)
    for r, row in enumerate(batch):
        res = our_detector().score(row.numpy(), WatermarkKey.explicit(KEY))
        assert (res.tokens_scored, res.green) == (out.num_tokens_scored[r], out.num_green_tokens[r])
        assert res.tokens_scored < len(row) - 1


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("gamma", [GAMMA, 0.3])  # 512 * 0.3 = 153.6: the list size is truncated, not rounded
def test_processors_produce_identical_logits(width, gamma):
    torch.manual_seed(71)
    hf = HFWatermarkLogitsProcessor(
        vocab_size=VOCAB,
        device="cpu",
        greenlist_ratio=gamma,
        bias=DELTA,
        hashing_key=BIG_KEY,
        seeding_scheme="lefthash",
        context_width=width,
    )
    ours = WatermarkLogitsProcessor(
        Watermark(WatermarkConfig.interop(gamma, DELTA, width)), [MarkKeys(WatermarkKey.explicit(BIG_KEY))] * 6
    )
    for _ in range(5):
        input_ids = torch.randint(0, VOCAB, (6, 7))
        scores = torch.randn(6, VOCAB)
        expected = hf(input_ids, scores.clone())
        assert torch.equal(ours(input_ids, scores), expected)
        assert not torch.equal(expected, scores)
