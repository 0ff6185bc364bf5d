"""The tokenizer of a GGUF file without torch (the core install) is the one AutoTokenizer builds with torch."""

from __future__ import annotations

import json
import struct

import pytest

from antidistill.detection.corpus import human_samples
from antidistill.models import embedded
from antidistill.models.embedded import embedded_gguf_path, load_tokenizer, resolve_model
from antidistill.models.gguf_tokenizer import read_metadata

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, tabs\tand\nnew lines\r\n  and trailing   ",
    "Numbers 1234567 and 3.14159, emails a.b@example.org, URLs https://example.org/x?y=1#z",
    "Ünïcödé, 日本語のテキスト, emoji 🦊🐶 and combining e\u0301",
    "<|im_start|>user\nHello<|im_end|>\n<|endoftext|>",
    "def f(x):\n    return x ** 2  # code\n",
]


@pytest.fixture(scope="module")
def no_torch_tokenizer(tmp_path_factory):
    """Built the way the core install builds it (torch reported missing), in a cache of its own."""
    cache = tmp_path_factory.mktemp("no-torch-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(embedded, "has_torch", lambda: False)
        tok = load_tokenizer(resolve_model(), cache)
        root = next((cache / "models").iterdir())
        assert (root / "tokenizer-no-torch" / "tokenizer.json").is_file()
        assert not (root / "tokenizer").exists(), "the no-torch tokenizer must not stand in for generation's"
        again = load_tokenizer(resolve_model(), cache)  # from its cache this time
    return tok, again


def test_same_tokenizer_as_autotokenizer(tokenizer, no_torch_tokenizer):
    for tok in no_torch_tokenizer:
        assert json.loads(tok.backend_tokenizer.to_str()) == json.loads(tokenizer.backend_tokenizer.to_str())
        assert len(tok) == len(tokenizer) == 49152
        assert tok.special_tokens_map == tokenizer.special_tokens_map
        assert tok.chat_template == tokenizer.chat_template


def test_same_ids_and_offsets_as_autotokenizer(tokenizer, no_torch_tokenizer):
    texts = TEXTS + human_samples(40, seed=3)
    for tok in no_torch_tokenizer:
        a = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        b = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        assert a["input_ids"] == b["input_ids"]
        assert a["offset_mapping"] == b["offset_mapping"]


def test_read_metadata_of_the_embedded_model():
    meta = read_metadata(embedded_gguf_path(), lambda k: k.startswith("tokenizer.ggml.") or k.startswith("general."))
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert len(meta["tokenizer.ggml.tokens"]) == len(meta["tokenizer.ggml.token_type"]) == 49152
    assert all(isinstance(m, str) and " " in m for m in meta["tokenizer.ggml.merges"][:100])
    assert not any(k.startswith("tokenizer.chat") for k in meta)  # filtered out


def test_bad_files_are_value_errors(tmp_path):
    not_gguf = tmp_path / "a.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_metadata(not_gguf)
    old = tmp_path / "v1.gguf"
    old.write_bytes(b"GGUF" + struct.pack("<IQQ", 1, 0, 0))
    with pytest.raises(ValueError, match="version 1"):
        read_metadata(old)
    cut = tmp_path / "cut.gguf"
    with open(embedded_gguf_path(), "rb") as f:
        cut.write_bytes(f.read(5000))
    with pytest.raises(ValueError, match="truncated"):
        read_metadata(cut)


def test_a_file_without_a_tokenizer_is_a_model_error(tmp_path, monkeypatch):
    from antidistill.errors import ModelError

    bare = tmp_path / "bare.gguf"
    key = b"general.architecture"
    value = b"llama"
    bare.write_bytes(
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", len(key))
        + key
        + struct.pack("<I", 8)
        + struct.pack("<Q", len(value))
        + value
    )
    monkeypatch.setattr(embedded, "has_torch", lambda: False)
    with pytest.raises(ModelError, match="describes no tokenizer"):
        load_tokenizer(resolve_model(bare), None)
