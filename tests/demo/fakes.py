"""A model the demo's stages can run on without weights: word tokens ``t12 t7 …`` and a sampler that marks."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from antidistill.demo.context import SERVE_TOKENS, DemoContext, DemoSizes
from antidistill.demo.render import Renderer
from antidistill.keys import KeyRing, MasterKey
from antidistill.settings import get_settings
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import Watermark
from tests.synthetic import sample


class WordTokenizer:
    """Text "t12 t7 …" <-> ids [12, 7, …]: the tokenizer interface TextDetector uses, without a model."""

    def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=False):
        ids, offs = [], []
        for t in texts:
            words = list(re.finditer(r"t(\d+)", t))
            ids.append([int(m.group(1)) for m in words])
            offs.append([m.span() for m in words])
        return {"input_ids": ids, "offset_mapping": offs}


@dataclass
class FakeCompletion:
    text: str
    token_ids: list


class FakeModel:
    """Samples like a language model over 512 tokens (tests/synthetic.py), marking each row with its keys.

    ``loops[prompt]``: how many tries of that prompt fall into a repetition loop (-1: every try);
    ``marks_work=False``: the watermark is silently not applied (what the checks must catch).
    """

    vocab_size = 512

    def __init__(self, loops=None, marks_work=True):
        self.tokenizer = WordTokenizer()
        # the demo's logic on a green-list mark (the fake samples with tests/synthetic.py's green lists)
        self.watermark = Watermark(WatermarkConfig(scheme="antidistill-v1"))
        self.loops = dict(loops or {})
        self.marks_work = marks_work
        self.calls = []

    def generate(self, prompts, marks, max_new_tokens, min_new_tokens=0, seed=None, **kwargs):
        self.calls.append(len(prompts))
        out = []
        for i, (prompt, mark) in enumerate(zip(prompts, marks, strict=True)):
            if self.loops.get(prompt, 0) != 0:
                self.loops[prompt] -= 1
                ids = [7, 8, 9] * (max_new_tokens // 3)
            else:
                rng = np.random.default_rng([seed or 0, i, len(prompt)])
                use = mark if (mark is not None and self.marks_work) else None
                ids = sample(
                    rng,
                    self.watermark,
                    use.account if use else None,
                    use.provider if use else None,
                    max_new_tokens,
                    self.vocab_size,
                )[0].tolist()
            out.append(FakeCompletion(" ".join(f"t{t}" for t in ids), ids))
        return out


def fake_ring() -> KeyRing:
    """A key ring of a fixed master key."""
    return KeyRing(MasterKey(hashlib.sha256(b"demo-fake-model").digest()))


def make_ctx(work: Path, max_tokens: int = SERVE_TOKENS) -> DemoContext:
    """A quick demo's context whose screen writes to a string (``output(ctx)``)."""
    screen = Renderer(Console(file=io.StringIO(), width=200))
    return DemoContext(get_settings(), DemoSizes.for_mode(True, max_tokens), 7, work, screen)


def output(ctx: DemoContext) -> str:
    """What the stages showed so far."""
    return ctx.screen.console.file.getvalue()
