"""``--scheme`` on generate, detect and scan: every member of the family, one-line errors, honest wording."""

from __future__ import annotations

import json

import pytest

from antidistill.cli.options import SCHEME_HELP
from antidistill.watermark.schemes import scheme_names

from .test_cli import HUMAN, assert_one_line_error, master_key, run  # noqa: F401  (master_key: an autouse fixture)


@pytest.fixture
def human_file(tmp_path):
    p = tmp_path / "human.txt"
    p.write_text(HUMAN, encoding="utf-8")
    return p


def test_help_names_every_member():
    for name in scheme_names():
        assert name in SCHEME_HELP


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["detect", "--scheme", "nope", "--account", "a", "HUMAN"], "--scheme must be one of"),
        (["generate", "--scheme", "gumbel-triple", "--account", "a", "hi"], "--scheme must be one of"),
        (["scan", "--suspect-model", "teacher", "--scheme", "nope"], "--scheme must be one of"),
        (["detect", "--entropy-threshold", "1.0", "--account", "a", "HUMAN"], "applies to scheme kgw-entropy only"),
        (
            ["detect", "--scheme", "kgw-entropy", "--entropy-threshold", "-1", "--account", "a", "HUMAN"],
            "entropy_threshold must be in",
        ),
        (["generate", "--scheme", "markllm-exp", "--provider-fraction", "0.5", "--account", "a", "hi"], "single-key"),
        (["generate", "--scheme", "vllm-gumbel", "--hashing-key", "7", "hi"], "is read-only"),
        (["detect", "--key-b-probability", "0.2", "--account", "a", "HUMAN"], "applies to scheme vllm-dual-gumbel"),
        (
            ["detect", "--scheme", "vllm-dual-gumbel", "--key-b-probability", "2", "--hashing-key", "7", "HUMAN"],
            "key_b_probability must be in [0, 1]",
        ),
    ],
)
def test_bad_scheme_options_are_one_line(capsys, human_file, argv, needle):
    argv = [str(human_file) if a == "HUMAN" else a for a in argv]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("scheme", scheme_names())
def test_detect_accepts_every_member(capsys, human_file, shared_cache_env, scheme):
    extra = ["--entropy-threshold", "1.5"] if scheme == "kgw-entropy" else []
    who = ["--hashing-key", "12345"] if scheme.startswith("vllm-") else ["--account", "alice"]
    code, out, err = run(capsys, "detect", str(human_file), "--scheme", scheme, *extra, *who, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["config"]["scheme"] == scheme and d["watermarked"] is False
    if scheme in ("hf-lefthash", "markllm-exp", "vllm-gumbel", "vllm-dual-gumbel"):
        assert d["config"]["provider_fraction"] == 0.0  # single-key members
    if scheme == "kgw-entropy":
        assert d["config"]["entropy_threshold"] == 1.5


@pytest.mark.parametrize("scheme", ["vllm-gumbel", "vllm-dual-gumbel"])
def test_detect_of_vllm_native_marks_asks_for_their_key(capsys, human_file, shared_cache_env, scheme):
    # vLLM marks with the key of its --watermark-config: a key derived from our master key would test nothing
    code, _, err = run(capsys, "detect", str(human_file), "--scheme", scheme, "--account", "alice")
    assert code != 0 and "--hashing-key" in err and len(err.strip().splitlines()) == 1


def test_detect_gumbel_says_score_not_green(capsys, human_file, shared_cache_env):
    code, out, _ = run(capsys, "detect", str(human_file), "--scheme", "gumbel", "--account", "alice")
    assert code == 0 and "not watermarked" in out
    assert "score" in out and "green" not in out
    code, out, _ = run(capsys, "detect", str(human_file), "--scheme", "antidistill-v1", "--account", "alice")
    assert code == 0 and "green" in out


@pytest.mark.slow
def test_generate_gumbel_then_detect(capsys, tmp_path, shared_cache_env, local_model):
    code, out, err = run(
        capsys,
        "generate",
        "--account",
        "alice",
        "--scheme",
        "gumbel",
        "--max-tokens",
        "48",
        "--temperature",
        "1.0",
        "--seed",
        "3",
        "--json",
        "Write a story about a dragon who learns to bake bread.",
    )
    assert code == 0, err
    gen = json.loads(out)
    assert gen["watermark"]["scheme"] == "gumbel" and gen["completion_tokens"] > 0
    f = tmp_path / "answer.txt"
    f.write_text(gen["text"], encoding="utf-8")
    code, out, err = run(
        capsys, "detect", str(f), "--scheme", "gumbel", "--account", "alice", "--account", "bob", "--json"
    )
    assert code == 0, err
    d = json.loads(out)
    assert d["config"]["scheme"] == "gumbel"
    assert d["watermarked"] is True and d["account"] == "alice", d
    # greedy decoding cannot carry a Gumbel-max mark: it carries the green-list fallback, and generate says so
    code, out, _ = run(
        capsys,
        "generate",
        "--account",
        "alice",
        "--scheme",
        "gumbel",
        "--temperature",
        "0",
        "--max-tokens",
        "4",
        "--json",
        "Hi",
    )
    assert code == 0 and json.loads(out)["watermark"]["scheme"] == "antidistill-v1"


def test_detect_reads_vllm_marks_with_its_integer_key(capsys, human_file, shared_cache_env):
    # vLLM's key is the explicit --hashing-key; every token is scored (the first four with padded contexts)
    code, out, err = run(capsys, "detect", str(human_file), "--scheme", "vllm-gumbel", "--hashing-key", "42", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["config"] == {
        "scheme": "vllm-gumbel", "gamma": 0.25, "delta": 3.0, "context_width": 4, "provider_fraction": 0.0,
    }  # fmt: skip
    assert d["watermarked"] is False and d["tokens_scored"] <= d["total_tokens"]
    code, out, err = run(
        capsys, "detect", str(human_file), "--scheme", "vllm-dual-gumbel", "--key-b-probability", "0.25",
        "--hashing-key", "42", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["config"]["key_b_probability"] == 0.25


@pytest.mark.parametrize(
    ("scheme", "needle"),
    [("nope", "ANTIDISTILL_WATERMARK_SCHEME must be one of"), ("vllm-gumbel", "read-only interoperability member")],
)
def test_serve_refuses_a_bad_watermark_scheme_in_one_line(capsys, scheme, needle):
    code, _, err = run(capsys, "serve", "--backend", "fake", "--watermark-scheme", scheme)
    assert_one_line_error(code, err, needle)


def test_serve_passes_its_watermark_scheme_to_the_gateway(capsys, monkeypatch):
    import uvicorn

    seen = {}

    def fake_run(app, **kwargs):
        seen["config"] = app.state.gateway.settings.watermark_config()

    monkeypatch.setattr(uvicorn, "run", fake_run)
    code, _, err = run(capsys, "serve", "--backend", "fake", "--watermark-scheme", "gumbel-dual")
    assert code == 0, err
    assert seen["config"].scheme == "gumbel-dual"
