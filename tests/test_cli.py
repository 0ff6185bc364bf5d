"""The command line: outputs, JSON fields and one-line errors with non-zero exits."""

from __future__ import annotations

import json

import pytest

from antidistill.cli import main

HUMAN = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files, to deal in the Software without restriction, including without "
    "limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies "
    "of the Software, and to permit persons to whom the Software is furnished to do so, subject to the "
    "following conditions: the above copyright notice and this permission notice shall be included in all "
    "copies or substantial portions of the Software."
)


def run(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        import io
        import sys

        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, needle):
    assert code != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0], err


@pytest.fixture(autouse=True)
def master_key(capsys):
    """Detection needs an existing master key: create it the way an operator would."""
    code, _, _ = run(capsys, "keys", "init")
    assert code == 0


@pytest.fixture
def human_file(tmp_path):
    p = tmp_path / "human.txt"
    p.write_text(HUMAN, encoding="utf-8")
    return p


def test_detect_human_text_json(capsys, human_file, shared_cache_env):
    code, out, _ = run(capsys, "detect", str(human_file), "--account", "alice", "--account", "bob", "--json")
    assert code == 0
    d = json.loads(out)
    for field in ("tokens_scored", "green", "z", "p_value", "watermarked", "account", "p_value_corrected"):
        assert field in d
    assert d["watermarked"] is False and d["account"] is None
    assert d["attribution"]["keys_tested"] == 2
    assert d["config"]["gamma"] == 0.25


def test_detect_human_output_and_stdin(capsys, monkeypatch, shared_cache_env):
    # a fixed master key: under a fresh random key a human text is called marked at alpha 1e-3 one time in a thousand
    # (one fresh-clone run drew such a key: p 3.2e-4), which is the test's false-positive rate, not a defect
    monkeypatch.setenv("ANTIDISTILL_MASTER_KEY", "9e3b7d25c48e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f76c1f0a")
    code, out, _ = run(capsys, "detect", "-", stdin=HUMAN.encode(), monkeypatch=monkeypatch)
    assert code == 0 and "not watermarked" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["detect", "/nonexistent/file.txt"], "file not found"),
        (["detect", "--gamma", "1.5", "HUMAN"], "gamma must be in (0, 1)"),
        (["detect", "--alpha", "0", "HUMAN"], "alpha must be in (0, 1)"),
        (["detect", "--context-width", "7", "HUMAN"], "context_width must be in 1..4"),
        (["detect", "--model", "/nonexistent/model", "HUMAN"], "model path not found"),
        (["detect", "--provider-fraction", "0", "HUMAN"], "nothing to test against"),
        (["detect", "--hashing-key", "-3", "HUMAN"], "hashing key must be in"),
        (["detect", "--hashing-key", "3", "--account", "a", "HUMAN"], "exclusive"),
        (["detect"], "give a text file"),
        (["detect", "--no-such-option", "HUMAN"], "No such option"),
        (["generate"], "Missing"),
        (["generate", "--account", "a", "--max-tokens", "-5", "hi"], "max-tokens"),
        (["keys", "rotate"], "exactly one of"),
        (["detect", "--accounts-file", "/nonexistent/accts", "HUMAN"], "accounts file not found"),
    ],
)
def test_errors_are_one_line(capsys, human_file, shared_cache_env, argv, needle):
    argv = [str(human_file) if a == "HUMAN" else a for a in argv]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, needle)


def test_bad_text_inputs(capsys, tmp_path, shared_cache_env):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait " * 20)
    code, _, err = run(capsys, "detect", str(bad))
    assert_one_line_error(code, err, "not valid UTF-8 (byte 3)")
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    code, _, err = run(capsys, "detect", str(empty))
    assert_one_line_error(code, err, "empty")
    short = tmp_path / "short.txt"
    short.write_text("Hello there.")
    code, _, err = run(capsys, "detect", str(short))
    assert_one_line_error(code, err, "too short")
    code, _, err = run(capsys, "detect", str(tmp_path))
    assert_one_line_error(code, err, "is a directory")


def test_jsonl_scan_reports_every_line(capsys, tmp_path, shared_cache_env):
    corpus = tmp_path / "corpus.jsonl"
    lines = [
        json.dumps({"text": HUMAN}),
        "{not json",
        json.dumps({"other": "x"}),
        "",
        json.dumps({"text": "too short"}),
        json.dumps({"text": HUMAN.upper()}),
    ]
    corpus.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "\xff"}\n')
    out_file = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "detect", "--jsonl", str(corpus), "-o", str(out_file), "--account", "alice")
    assert code == 0
    recs = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert [r["line"] for r in recs] == [1, 2, 3, 5, 6, 7]
    assert recs[0]["watermarked"] is False and "p_value" in recs[0]
    assert "invalid JSON" in recs[1]["error"]
    assert "no string field" in recs[2]["error"]
    assert "too short" in recs[3]["error"]
    assert recs[4]["watermarked"] is False
    assert "UTF-8" in recs[5]["error"]
    assert "6 records, 0 watermarked, 4 errors" in err


def test_detect_without_a_master_key_is_refused(capsys, tmp_path, human_file, monkeypatch, shared_cache_env):
    from antidistill.settings import get_settings

    monkeypatch.setenv("ANTIDISTILL_DATA_DIR", str(tmp_path / "empty-data"))
    get_settings.cache_clear()
    code, _, err = run(capsys, "detect", str(human_file))
    assert_one_line_error(code, err, "no master key")
    assert not (tmp_path / "empty-data" / "master.key").exists()


def test_keys_rotate_and_list(capsys):
    code, out, _ = run(capsys, "keys", "rotate", "--account", "alice", "--json")
    assert code == 0 and json.loads(out) == {"key_id": "acct:alice:v2", "version": 2}
    code, out, _ = run(capsys, "keys", "list", "--json")
    data = json.loads(out)
    assert data["accounts"] == {"alice": "acct:alice:v2"} and data["provider"] == "provider:v1"


def test_secrets_never_printed(capsys, tmp_path, shared_cache_env, human_file):
    from antidistill.settings import get_settings

    run(capsys, "keys", "rotate", "--provider")
    secret = (get_settings().data_dir / "master.key").read_text().strip()
    code, out, err = run(capsys, "detect", str(human_file), "--account", "alice", "--json")
    assert code == 0
    assert secret not in out + err
    from antidistill.keys import KeyRing

    ring = KeyRing.open(get_settings())
    for k in [ring.provider_key(), ring.account_key("alice")]:
        assert str(k.value) not in out + err and hex(k.value)[2:] not in out + err


@pytest.mark.slow
def test_generate_then_detect_attributes(capsys, monkeypatch, tmp_path, shared_cache_env, local_model):
    # a fixed master key and seed: under a fresh random key a short answer of the default member is sometimes
    # detected (provider) without singling out one of three accounts (one fresh-clone run: 63 tuples, provider
    # z 6.6, no account at alpha 1e-3), which is the member's known limit on short texts, not a defect
    monkeypatch.setenv("ANTIDISTILL_MASTER_KEY", "9e3b7d25c48e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f76c1f0a")
    code, out, _ = run(
        capsys,
        "generate",
        "--account",
        "alice",
        "--max-tokens",
        "120",
        "--seed",
        "3",
        "--json",
        "Write a long story about a dragon who learns to bake bread.",
    )
    assert code == 0
    gen = json.loads(out)
    assert gen["key_id"] == "acct:alice:v1" and gen["completion_tokens"] > 0
    f = tmp_path / "answer.txt"
    f.write_text(gen["text"], encoding="utf-8")
    code, out, _ = run(
        capsys, "detect", str(f), "--account", "alice", "--account", "bob", "--account", "carol", "--json"
    )
    d = json.loads(out)
    assert d["watermarked"] is True and d["account"] == "alice", d


# ---- transformers interop through the command line (hf-lefthash, an explicit --hashing-key) ---------------------
HF_KEY = 15485863  # transformers' default hashing_key
# transformers' default bias (2.0) marks this small model's low-entropy answers weakly: over 80 tokens its own
# detector's z ran from 0.9 to 4.5 for transformers' generate and 2.8 to 6.7 for ours (see watermark/config.py).
# At 4.0 every z was above 6.8: the tests below are about reading each other's marks, not about power.
HF_GAMMA, HF_DELTA = 0.25, 4.0
HF_FLAGS = ("--scheme", "hf-lefthash", "--gamma", str(HF_GAMMA), "--delta", str(HF_DELTA))


def hf_watermarking_config(key: int = HF_KEY):
    from transformers import WatermarkingConfig

    return WatermarkingConfig(
        bias=HF_DELTA, greenlist_ratio=HF_GAMMA, hashing_key=key, seeding_scheme="lefthash", context_width=1
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["generate", "hi"], "give --account"),
        (["generate", "--account", "a", "--hashing-key", "3", "hi"], "exclusive"),
        (["generate", "--hashing-key", "-3", "hi"], "hashing key must be in"),
        (["generate", "--hashing-key", "3", "--provider-fraction", "0.5", "hi"], "--provider-fraction must be 0"),
        (["generate", "--account", "a", "--scheme", "nope", "hi"], "scheme must be one of"),
        (
            ["generate", "--account", "a", "--scheme", "hf-lefthash", "--provider-fraction", "0.5", "hi"],
            "hf-lefthash is single-key",
        ),
        (["detect", "--hashing-key", "3", "--provider-fraction", "0.5", "HUMAN"], "--provider-fraction must be 0"),
    ],
)
def test_generate_mark_options_are_checked_like_detect(capsys, human_file, argv, needle):
    # refused before the model is loaded
    argv = [str(human_file) if a == "HUMAN" else a for a in argv]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, needle)


@pytest.mark.slow
def test_generate_hashing_key_is_read_by_transformers_detector(capsys, shared_cache_env, local_model):
    import torch
    from transformers import WatermarkDetector

    code, out, err = run(
        capsys,
        "generate",
        *HF_FLAGS,
        "--hashing-key",
        str(HF_KEY),
        "--max-tokens",
        "80",
        "--seed",
        "5",
        "--json",
        "Write a long story about a dragon who learns to bake bread.",
    )
    assert code == 0, err
    gen = json.loads(out)
    assert gen["key_id"] == "explicit" and gen["account"] is None
    assert gen["watermark"] == {
        "scheme": "hf-lefthash",
        "gamma": HF_GAMMA,
        "delta": HF_DELTA,
        "context_width": 1,
        "provider_fraction": 0.0,
    }
    assert str(HF_KEY) not in out + err  # the key is never echoed
    ids = torch.tensor([local_model.tokenizer(gen["text"], add_special_tokens=False)["input_ids"]])
    assert ids.shape[1] > 40

    def hf_detect(key):
        det = WatermarkDetector(
            model_config=local_model.model.config,
            device="cpu",
            watermarking_config=hf_watermarking_config(key),
            ignore_repeated_ngrams=True,
        )
        return det(ids, return_dict=True)

    marked = hf_detect(HF_KEY)
    assert bool(marked.prediction[0]) and marked.z_score[0] > 5, marked
    other = hf_detect(HF_KEY + 1)  # another key: the same text looks like any text
    assert not bool(other.prediction[0]), other


@pytest.mark.slow
def test_detect_hashing_key_reads_transformers_watermark(capsys, tmp_path, shared_cache_env, local_model):
    import torch

    lm = local_model
    prompt = lm.encode_prompt("Explain in detail how a refrigerator keeps food cold.")
    torch.manual_seed(5)
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=True,
            temperature=0.7,
            top_k=0,
            max_new_tokens=80,
            min_new_tokens=80,
            pad_token_id=lm.tokenizer.pad_token_id,
            watermarking_config=hf_watermarking_config(),
        )
    text = lm.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)
    f = tmp_path / "hf.txt"
    f.write_text(text, encoding="utf-8")

    code, out_, err = run(capsys, "detect", str(f), *HF_FLAGS, "--hashing-key", str(HF_KEY), "--json")
    assert code == 0, err
    d = json.loads(out_)
    assert d["watermarked"] is True and d["p_value"] < 1e-6, d
    assert d["config"]["scheme"] == "hf-lefthash" and d["config"]["provider_fraction"] == 0.0
    assert str(HF_KEY) not in out_ + err
    code, out_, _ = run(capsys, "detect", str(f), *HF_FLAGS, "--hashing-key", str(HF_KEY + 1), "--json")
    assert code == 0 and json.loads(out_)["watermarked"] is False


def test_jsonl_together_attributes_a_corpus_too_weak_text_by_text(capsys, tmp_path, tokenizer, shared_cache_env):
    # short texts of alice's mark (the default member) that one by one rarely single her out among the candidates
    import numpy as np

    from antidistill.keys import MasterKey
    from antidistill.models.fake import _WORDS
    from antidistill.settings import get_settings
    from antidistill.watermark.marker import MarkKeys, Watermark
    from tests.forensics.helpers import green_words, word_tokens

    master = MasterKey.load(get_settings(), create=False)
    mark = MarkKeys(master.account_key("alice"), master.provider_key())
    rng = np.random.default_rng(5)
    vocab = word_tokens(tokenizer, _WORDS)
    texts = [green_words(tokenizer, Watermark(), mark, vocab, 30, rng, p_green=0.2) for _ in range(12)]
    corpus = tmp_path / "harvest.jsonl"
    corpus.write_text("".join(json.dumps({"response": t}) + "\n" for t in texts) + "{broken\n", encoding="utf-8")
    who = ["--account", "alice", "--account", "bob", "--account", "carol", "--field", "response"]
    code, out, err = run(capsys, "detect", "--jsonl", str(corpus), *who, "--together")
    assert code == 0, err
    recs = [json.loads(x) for x in out.splitlines()]
    per_text, last = recs[:-1], recs[-1]["together"]
    assert len(per_text) == 13 and "invalid JSON" in per_text[-1]["error"]
    assert sum(r.get("account") == "alice" for r in per_text) <= 6  # most are not attributed on their own
    assert last["texts"] == 12 and last["account"] == "alice" and last["p_value_corrected"] < 1e-6
    assert last["keys_tested"] == 3 and last["account_pairs"] < last["pairs"]
    assert "together: 12 texts" in err and "alice, corrected p" in err
    # the same texts unmarked under another installation's keys: nobody
    unmarked = tmp_path / "plain.jsonl"
    plain = [green_words(tokenizer, Watermark(), None, vocab, 40, rng) for _ in range(12)]
    unmarked.write_text("".join(json.dumps({"response": t}) + "\n" for t in plain), encoding="utf-8")
    code, out, _ = run(capsys, "detect", "--jsonl", str(unmarked), *who, "--together")
    assert code == 0 and json.loads(out.splitlines()[-1])["together"]["account"] is None
    # a corpus with nothing to test: every line reported, nobody together (it raised IndexError before)
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{bad\n\n{"response": 5}\n', encoding="utf-8")
    code, out, err = run(capsys, "detect", "--jsonl", str(garbage), *who, "--together")
    assert code == 0, err
    *lines, last = [json.loads(x) for x in out.splitlines()]
    assert [r["line"] for r in lines] == [1, 3] and last["together"]["texts"] == 0
    assert last["together"]["account"] is None
    code, _, err = run(capsys, "detect", str(unmarked), "--together")
    assert_one_line_error(code, err, "--together attributes the texts of a --jsonl corpus")
