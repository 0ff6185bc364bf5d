"""``antidistill scan`` on the command line: closed mode end to end (audit log and --texts), one-line errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from antidistill.cli import main
from antidistill.gateway.server import BackgroundServer
from antidistill.keys import MasterKey
from antidistill.settings import get_settings
from antidistill.store.api import AuditEntry
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from tests.forensics.endpoints import suspect_app
from tests.gateway.conftest import free_port


def run(capsys, *argv):
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, needle):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0], err


@pytest.fixture(autouse=True)
def master_key(capsys):
    code, _, _ = run(capsys, "keys", "init")
    assert code == 0


@pytest.fixture
def store():
    from antidistill.store.sql import Store

    s = Store.open(None, get_settings())
    yield s
    s.close()


def _entry(account_id: str, i: int, text: str) -> AuditEntry:
    return AuditEntry(
        response_id=f"chatcmpl-{i}",
        account_id=account_id,
        api_key_id="key_x",
        created_at=datetime.now(UTC),
        endpoint="/v1/chat/completions",
        client_addr="127.0.0.1",
        user_agent="OpenAI/Python",
        request={"model": "m", "messages": [{"role": "user", "content": f"Question number {i % 3}?"}]},
        completion=[text],
        prompt_tokens=5,
        completion_tokens=20,
        finish_reason="stop",
        latency_ms=1.0,
        watermark={"key_id": f"acct:{account_id}:v1", "config": WatermarkConfig(scheme="antidistill-v1").to_dict()},
    )


def test_closed_scan_from_the_audit_log(capsys, store, shared_cache_env, tokenizer):
    alice = store.create_account("alice")[0]
    bob = store.create_account("bob")[0]
    store.create_account("carol")
    for i in range(6):
        store.append_audit(_entry(bob.id, i, "Some watermarked answer."))
    store.append_audit(_entry(alice.id, 99, "Another answer."))
    master = MasterKey.load(get_settings(), create=False)
    mark = MarkKeys(master.account_key(bob.id), master.provider_key())
    app = suspect_app(tokenizer, Watermark(WatermarkConfig(scheme="antidistill-v1")), mark)
    with BackgroundServer(app) as srv:
        code, out, err = run(
            capsys,
            "scan",
            "--suspect-url",
            srv.url + "/v1",
            "--samples",
            "4",
            "--max-tokens",
            "48",
            "--cluster",
            f"{alice.id},{bob.id}",
            "--account",
            alice.id,
            "--account",
            bob.id,
            "--json",
        )
    assert code == 0, err
    r = json.loads(out)
    # the harvested prompts of the accounts in question: 3 distinct questions, 4 samples each
    assert r["parameters"]["budget"]["prompts_sent"] == 3 and r["parameters"]["budget"]["requests"] == 12
    assert len(app.state.requests) == 12 and app.state.requests[0]["model"] == "suspect-1"
    assert r["mode"] == "closed" and r["significant"] is True
    assert r["attributed_account"] == bob.id
    assert r["clusters"][0]["accounts"] == [alice.id, bob.id]
    assert r["parameters"]["accounts"] == 2 and r["controls_ok"] is True
    assert r["provider"]["p_value"] < 1e-6 and len(r["curve"]) > 5
    # human output: the verdict in words
    with BackgroundServer(app) as srv:
        code, out, err = run(capsys, "scan", "--suspect-url", srv.url + "/v1", "--max-tokens", "48")
    assert code == 0, err
    assert "RADIOACTIVE" in out and "carries our watermark" in out


def test_closed_scan_of_an_unmarked_suspect_with_a_prompts_file(
    capsys, tmp_path, shared_cache_env, tokenizer, tiny_model_dir
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me about rivers.\nTell me about trees.\n", encoding="utf-8")
    with BackgroundServer(suspect_app(tokenizer, Watermark(WatermarkConfig(scheme="antidistill-v1")), None)) as srv:
        code, out, err = run(
            capsys,
            "scan",
            "--suspect-url",
            srv.url + "/v1",
            "--prompts",
            str(prompts),
            "--account",
            "acct_x",
            "--samples",
            "3",
            "--max-tokens",
            "24",
            "--json",
            "--control-model",
            str(tiny_model_dir),
        )
    assert code == 0, err
    r = json.loads(out)
    assert r["significant"] is False and r["parameters"]["budget"]["requests"] == 6
    assert "No evidence" in r["verdict"]
    # the control model answered the same prompts locally, unmarked, and was scored the same way
    (ctl,) = [c for c in r["controls"] if c["model"]]
    assert ctl["model"] == str(tiny_model_dir) and ctl["tokens_scored"] > 10 and ctl["p_value"] > 1e-3


def test_errors_are_one_line(capsys, tmp_path, store, shared_cache_env):
    store.create_account("alice")
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"prompt": "Hi", "response": "Hello there, friend."}) + "\n", encoding="utf-8")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    cases = [
        ((), "exactly one of --suspect-model"),
        (("--suspect-model", "teacher", "--suspect-url", dead), "exactly one of --suspect-model"),
        (("--suspect-model", str(tmp_path / "missing")), "suspect model not found"),
        (("--suspect-url", dead, "--account", "acct_nobody"), "unknown account: acct_nobody"),
        (("--suspect-url", dead, "--cluster", "acct_a,acct_b"), "unknown account: acct_a, acct_b"),
        (("--suspect-url", dead, "--texts", str(tmp_path / "nope.jsonl")), "texts file not found"),
        (("--suspect-url", dead, "--alpha", "2"), "alpha must be in (0, 1)"),
        (("--suspect-url", "ftp://x"), "must be an http(s) URL"),
        (("--suspect-model", "teacher", "--exclude", "nothing"), "--exclude must be"),
        (("--suspect-url", dead, "--texts", str(texts)), "cannot reach the suspect endpoint"),
    ]
    for argv, needle in cases:
        code, _, err = run(capsys, "scan", *argv)
        assert_one_line_error(code, err, needle)


def test_no_master_key_is_an_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTIDISTILL_DATA_DIR", str(tmp_path / "empty"))
    get_settings.cache_clear()
    code, _, err = run(capsys, "scan", "--suspect-url", "http://127.0.0.1:1/v1")
    assert_one_line_error(code, err, "no master key")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random causal LM with the served model's vocabulary and tokenizer, saved with save_pretrained:
    loads in a blink, and knows nothing of any key."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
    )
    d = tmp_path_factory.mktemp("tiny-suspect")
    LlamaForCausalLM(cfg).save_pretrained(str(d))
    tokenizer.save_pretrained(str(d))
    return d


def test_open_scan_of_a_saved_model_from_the_audit_log(capsys, store, shared_cache_env, tiny_model_dir):
    bob = store.create_account("bob")[0]
    for i in range(5):
        store.append_audit(
            _entry(
                bob.id,
                i,
                f"Answer {i}: rivers flow from mountains to the sea, carrying "
                "sediment, shaping valleys and feeding deltas.",
            )
        )
    code, out, err = run(
        capsys,
        "scan",
        "--suspect-model",
        str(tiny_model_dir),
        "--control-model",
        str(tiny_model_dir),
        "--json",
        "--control-keys",
        "12",
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["mode"] == "open" and r["texts"] == 5 and r["tokens_scored"] > 20
    assert r["parameters"]["exclude"] == "prefix-pairs" and r["parameters"]["budget"]["texts_fed"] == 5
    assert r["significant"] is False and r["accounts"][0]["account"] == bob.id
    assert len([c for c in r["controls"] if c["model"] is None]) == 12
    assert [c["model"] for c in r["controls"] if c["model"]] == [str(tiny_model_dir)]


def test_open_scan_refuses_another_tokenizer(capsys, tmp_path, shared_cache_env, tiny_model_dir, tokenizer):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tok = type(tokenizer).from_pretrained(str(tiny_model_dir))
    tok.add_tokens(["<extra-token-1>", "<extra-token-2>"])
    tok.save_pretrained(str(other))
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"prompt": "Hi", "response": "Hello there, friend."}) + "\n", encoding="utf-8")
    code, _, err = run(capsys, "scan", "--suspect-model", str(other), "--texts", str(texts))
    assert_one_line_error(code, err, "tokenizer differs")
