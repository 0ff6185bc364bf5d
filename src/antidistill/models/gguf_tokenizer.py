"""The tokenizer of a GGUF file, without torch: what ``pip install antidistill`` (the core) detects with.

transformers builds a GGUF file's tokenizer from its metadata alone, but the module that reads the metadata
(``transformers.integrations.gguf.reader``) imports torch for the tensors, so ``AutoTokenizer.from_pretrained(...,
gguf_file=...)`` needs torch even though no tensor is read. Here the metadata is read with the standard library
(the GGUF format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) and handed to transformers' own
converter (``convert_gguf_tokenizer``), so the tokens are the ones generation used.
``tests/models/test_gguf_tokenizer.py`` checks that the result is the tokenizer ``AutoTokenizer`` builds.

:func:`antidistill.models.embedded.load_tokenizer` uses this only where torch is not installed.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from antidistill.errors import MissingExtraError

#: the fixed-size GGUF value types: uint8, int8, uint16, int16, uint32, int32, float32, bool, uint64, int64, float64
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_VERSIONS = (2, 3)

#: transformers' special-token names -> the GGUF keys holding their ids (llama.cpp's names)
_SPECIAL_TOKENS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def read_metadata(path: str | Path, keep: Callable[[str], bool] = lambda key: True) -> dict[str, Any]:
    """The metadata of a GGUF file (key -> value; arrays as lists), for the keys ``keep`` accepts.

    Raises:
        ValueError: not a GGUF file, a version other than 2 or 3, or a truncated or malformed header.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _read(buf, keep, str(path))
        except struct.error:
            raise ValueError(f"{path}: the GGUF metadata is truncated or malformed") from None


def _read(buf: mmap.mmap, keep: Callable[[str], bool], name: str) -> dict[str, Any]:
    if buf[:4] != b"GGUF":
        raise ValueError(f"{name} is not a GGUF file (no GGUF magic bytes)")
    version, _tensors, count = struct.unpack_from("<IQQ", buf, 4)
    if version not in _VERSIONS:
        raise ValueError(f"{name} is GGUF version {version}; versions 2 and 3 are supported")
    size = len(buf)

    def string(pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, pos)
        end = pos + 8 + n
        if end > size:
            raise struct.error("string past the end of the file")
        return buf[pos + 8 : end].decode("utf-8"), end

    def value(pos: int, kind: int, wanted: bool) -> tuple[Any, int]:
        if kind in _SCALARS:
            fmt = _SCALARS[kind]
            return (struct.unpack_from(fmt, buf, pos)[0] if wanted else None), pos + struct.calcsize(fmt)
        if kind == _STRING:
            if wanted:
                return string(pos)
            (n,) = struct.unpack_from("<Q", buf, pos)
            return None, pos + 8 + n
        if kind == _ARRAY:
            inner, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if inner in _SCALARS:
                fmt = _SCALARS[inner]
                end = pos + n * struct.calcsize(fmt)
                return (list(struct.unpack_from(f"<{n}{fmt[1]}", buf, pos)) if wanted else None), end
            items = []
            for _ in range(n):
                item, pos = value(pos, inner, wanted)
                items.append(item)
            return (items if wanted else None), pos
        raise ValueError(f"{name}: unknown GGUF value type {kind}")

    out: dict[str, Any] = {}
    pos = 24
    for _ in range(count):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        wanted = keep(key)
        v, pos = value(pos + 4, kind, wanted)
        if wanted:
            out[key] = v
    return out


def gguf_tokenizer(path: str | Path) -> Any:
    """The fast tokenizer (a transformers ``PreTrainedTokenizerFast``) described by a GGUF file's metadata.

    Raises:
        ValueError: the file is not a readable GGUF file, or describes no tokenizer transformers can build.
        MissingExtraError: this transformers release has no torch-free converter; with the ``model`` extra
            (torch), :func:`~antidistill.models.embedded.load_tokenizer` uses ``AutoTokenizer`` instead.
    """
    try:
        from transformers import PreTrainedTokenizerFast
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
    except ImportError:
        raise MissingExtraError("model", "torch", "reading a GGUF tokenizer with this transformers release") from None
    meta = read_metadata(path, lambda key: key.startswith("tokenizer.") or key == "general.architecture")
    if "general.architecture" not in meta or "tokenizer.ggml.tokens" not in meta:
        raise ValueError(f"{path} describes no tokenizer (no general.architecture or tokenizer.ggml.tokens)")
    # the same grouping as transformers' get_gguf_tokenizer, which only its torch-importing reader can call
    groups = {
        group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer, config = groups["tokenizer"], groups["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece vocabularies
    tokens = tokenizer["tokens"]
    for name, key in _SPECIAL_TOKENS.items():
        token_id = meta.get(f"tokenizer.ggml.{key}")
        config[name] = tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None
    backend, extra = convert_gguf_tokenizer(meta["general.architecture"], tokenizer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
