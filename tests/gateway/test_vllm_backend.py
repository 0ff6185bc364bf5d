"""``--backend vllm`` against a stub engine in process: what the gateway sends (``vllm_xargs``: ids and versions,
the deployment's configuration; nothing a client sent in their place), what it records, the engine's refusals
passed on, and the background sample check with its alarm.

The stub plays vLLM's OpenAI server with the plugin: it reads ``vllm_xargs`` with the plugin's own
:func:`~antidistill.engines.marking.parse_xargs` (so a refusal is the engine's real message), derives the row's keys
from *its* master key and returns token ids marked with them (the watermark core's green lists on random logits,
:func:`tests.synthetic.sample`), each chunk's token ids in a stream as vLLM's ``return_token_ids`` does. With no
master key it answers unmarked tokens: an engine running without the plugin.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from typer.testing import CliRunner

from antidistill.engines.marking import parse_xargs
from antidistill.errors import ConfigError, InputError
from antidistill.forensics.inputs import record_config
from antidistill.gateway import create_app
from antidistill.gateway.app import make_backend
from antidistill.keys import KeyRing, MasterKey
from antidistill.models.vllm_backend import VLLMBackend
from antidistill.settings import Settings
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import Watermark
from tests.synthetic import sample, uniform_tokens

from .conftest import MASTER_KEY, LiveServer, gateway_settings

VOCAB = 1000
GREEN = WatermarkConfig(scheme="antidistill-v1")


class WordTokenizer:
    """A tokenizer of texts written as ``t12 t7 …`` (what the stub engine answers): the sample check tokenizes
    the text again with it when the engine returned no token ids."""

    def __len__(self) -> int:
        return VOCAB

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [int(w[1:]) for w in text.split() if w.startswith("t")]}


def _words(ids: list[int]) -> str:
    return "".join(f" t{i}" for i in ids)


async def _events(ids: list[list[int]], chat: bool, with_ids: bool, usage: dict[str, int]) -> Any:
    """A stream as vLLM sends it: ten tokens a chunk (with their ids), a finish chunk per choice, the usage."""
    for i, choice in enumerate(ids):
        for k in range(0, len(choice), 10):
            piece = choice[k : k + 10]
            c: dict[str, Any] = {"index": i, "finish_reason": None}
            c.update({"delta": {"content": _words(piece)}} if chat else {"text": _words(piece)})
            if with_ids:
                c["token_ids"] = piece
            yield "data: " + json.dumps({"id": "s", "model": "smollm2", "choices": [c]}) + "\n\n"
        end: dict[str, Any] = {"index": i, "finish_reason": "length"}
        end.update({"delta": {}} if chat else {"text": ""})
        yield "data: " + json.dumps({"id": "s", "model": "smollm2", "choices": [end]}) + "\n\n"
    yield "data: " + json.dumps({"id": "s", "model": "smollm2", "choices": [], "usage": usage}) + "\n\n"
    yield "data: [DONE]\n\n"


def stub_engine(mode: dict[str, Any]) -> FastAPI:
    """vLLM's OpenAI server with (``mode["master"]``: a MasterKey) or without (``None``) antidistill's plugin.

    ``mode``: ``config`` the engine marks with, ``tokens`` per choice, ``token_ids`` (False: answer text only).
    """
    app = FastAPI()
    seen: list[dict[str, Any]] = []
    app.state.seen = seen
    rng = np.random.default_rng(7)

    def tokens(xargs: dict[str, Any] | None) -> list[int]:
        n = mode.get("tokens", 80)
        master = mode.get("master")
        if master is None:  # no plugin: nothing reads the xargs, nothing marks
            return [int(t) for t in uniform_tokens(rng, n, VOCAB)]
        request = parse_xargs(xargs, mode.get("config", GREEN), allow_unmarked=False)
        assert request is not None
        wm = Watermark(mode.get("config", GREEN))
        account = master.account_key(request.account, request.key_version)
        provider = master.provider_key(request.provider_version)
        return [int(t) for t in sample(rng, wm, account, provider, n + 1, VOCAB)[0, 1:]]

    async def answer(request: Request, chat: bool) -> Any:
        body = await request.json()
        seen.append(body)
        if mode.get("master") is not None:
            try:  # the plugin's validate_params, in vLLM's API server: a ValueError is a 400
                parse_xargs(body.get("vllm_xargs"), mode.get("config", GREEN), allow_unmarked=False)
            except InputError as exc:
                error = {"error": {"message": str(exc), "type": "BadRequestError", "param": None, "code": 400}}
                if body.get("stream"):  # vLLM 0.32 answers a refused stream with an error event in a 200 stream
                    return StreamingResponse(
                        iter(["data: " + json.dumps(error) + "\n\n", "data: [DONE]\n\n"]),
                        media_type="text/event-stream",
                    )
                return JSONResponse(error, status_code=400)
        n = body.get("n", 1)
        ids = [tokens(body.get("vllm_xargs")) for _ in range(n)]
        with_ids = mode.get("token_ids", True) and body.get("return_token_ids")
        usage = {"prompt_tokens": 9, "completion_tokens": sum(map(len, ids)), "total_tokens": 9 + sum(map(len, ids))}
        if body.get("stream"):
            return StreamingResponse(_events(ids, chat, with_ids, usage), media_type="text/event-stream")
        choices = []
        for i, choice in enumerate(ids):
            c: dict[str, Any] = {"index": i, "finish_reason": "length"}
            c.update(
                {"message": {"role": "assistant", "content": _words(choice)}} if chat else {"text": _words(choice)}
            )
            if with_ids:
                c["token_ids"] = choice
            choices.append(c)
        return {"id": "s", "object": "chat.completion", "model": "smollm2", "choices": choices, "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await answer(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await answer(request, False)

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": "smollm2", "object": "model", "created": 0, "owned_by": "vllm"}]}

    return app


class Deployment:
    """A stub engine and a gateway with ``--backend vllm`` in front of it."""

    def __init__(self, engine: Any, gateway: Any, app: Any, mode: dict[str, Any], store: Any, keyring: KeyRing):
        self.engine, self.gateway, self.app, self.mode = engine, gateway, app, mode
        self.store, self.keyring = store, keyring

    @property
    def v1(self) -> str:
        return self.gateway.url + "/v1"

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self.engine.server.config.app.state.seen

    @property
    def verifier(self) -> Any:
        return self.app.state.gateway.verifier

    def sdk(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=key, max_retries=0)

    def record(self, response_id: str) -> dict[str, Any]:
        (rec,) = [r for r in self.store.iter_audit() if r["response_id"] == response_id and r["status"] != 102]
        return rec

    def metrics(self) -> str:
        return httpx.get(self.gateway.url + "/metrics").text


@contextmanager
def deployment(tmp_path, store, engine_master: MasterKey | None, **overrides: Any) -> Iterator[Deployment]:
    settings = gateway_settings(tmp_path, **{"backend": "vllm", "verify_every": 1, **overrides})
    config = settings.watermark_config()
    mode: dict[str, Any] = {"master": engine_master, "config": config}
    keyring = KeyRing(MasterKey.from_text(MASTER_KEY), tmp_path / "ring.json")
    with LiveServer(stub_engine(mode)) as engine:
        app = create_app(
            settings,
            backend=VLLMBackend(engine.url + "/v1", config, model="smollm2"),
            store=store,
            keyring=keyring,
            verify_tokenizer=WordTokenizer,
        )
        with LiveServer(app) as gateway:
            yield Deployment(engine, gateway, app, mode, store, keyring)


@pytest.fixture
def gw_store(tmp_path):
    from antidistill.store.sql import Store

    s = Store.open(f"sqlite:///{tmp_path / 'gw.db'}", settings=gateway_settings(tmp_path))
    yield s
    s.close()


GATEWAY_MASTER = MasterKey.from_text(MASTER_KEY)
ASK = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 80}


def test_xargs_name_the_keys_and_the_record_reads_like_the_local_backends(tmp_path, gw_store):
    with deployment(tmp_path, gw_store, GATEWAY_MASTER) as d:
        account, key, _ = gw_store.create_account("vllm-alice")
        with d.sdk(key) as sdk:
            r = sdk.chat.completions.create(
                **ASK,
                temperature=0.7,
                # a client's own engine arguments: replaced, never forwarded
                extra_body={
                    "vllm_xargs": {"antidistill_account": "someone-else", "antidistill_key_version": 9},
                    "logits_processors": ["x.y:Z"],
                },
            )
            chunks = list(sdk.chat.completions.create(**ASK, stream=True))
            c = sdk.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=80)
        streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert r.choices[0].message.content and streamed and c.choices[0].text
        config = d.mode["config"]
        expected = {
            "antidistill_account": account.id,
            "antidistill_key_version": 1,
            "antidistill_provider_version": 1,
            "antidistill_watermark": json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":")),
        }
        assert [b["vllm_xargs"] for b in d.seen] == [expected] * 3
        assert all(b["return_token_ids"] is True and "logits_processors" not in b for b in d.seen)
        assert d.seen[1]["stream"] is True
        for rid in (r.id, chunks[0].id, c.id):
            wm = d.record(rid)["watermark"]
            assert wm == {
                "key_id": f"acct:{account.id}:v1",
                "provider_key_id": "provider:v1",
                "config": config.to_dict(),
                "marked_by": "engine",
            }
            assert record_config(wm) == config  # what detection, attribution and the scans read
        # token ids stay between the engine and the gateway
        assert "token_ids" not in r.model_dump_json() and "token_ids" not in c.model_dump_json()
        d.keyring.rotate_account(account.id)
        with d.sdk(key) as sdk:
            r2 = sdk.chat.completions.create(**ASK)
        assert d.seen[-1]["vllm_xargs"]["antidistill_key_version"] == 2
        assert d.record(r2.id)["watermark"]["key_id"] == f"acct:{account.id}:v2"
        # no key material crossed the network: only ids and versions
        wire = json.dumps(d.seen)
        for k in (GATEWAY_MASTER.account_key(account.id, 1), GATEWAY_MASTER.provider_key(1)):
            assert str(k.value) not in wire and hex(k.value)[2:] not in wire
        assert MASTER_KEY not in wire


def test_greedy_requests_under_a_sampling_member_record_the_green_list_fallback(tmp_path, gw_store):
    # the stub engine answers unmarked tokens here: what is tested is what the gateway sends and records
    with deployment(tmp_path, gw_store, None, watermark_scheme="gumbel", verify_every=0) as d:
        _, key, _ = gw_store.create_account("vllm-greedy")
        gumbel = d.mode["config"]
        with d.sdk(key) as sdk:
            sampled = sdk.chat.completions.create(**ASK, temperature=0.8)
            greedy = sdk.chat.completions.create(**ASK, temperature=0)
        assert d.record(sampled.id)["watermark"]["config"] == gumbel.to_dict()
        fallback = Watermark(gumbel).greedy.config
        assert fallback.scheme == "antidistill-v1" and fallback != gumbel
        assert d.record(greedy.id)["watermark"]["config"] == fallback.to_dict()
        # the engine is told the deployment's configuration either way: it picks the fallback itself
        assert {b["vllm_xargs"]["antidistill_watermark"] for b in d.seen} == {
            json.dumps(gumbel.to_dict(), sort_keys=True, separators=(",", ":"))
        }


def test_an_engine_refusal_is_a_400_in_openais_shape_and_the_exchange_is_recorded(tmp_path, gw_store):
    with deployment(tmp_path, gw_store, GATEWAY_MASTER) as d:
        # the engine marks with another configuration than the gateway records: it refuses every request
        d.mode["config"] = WatermarkConfig(scheme="antidistill-v1", delta=2.0)
        account, key, _ = gw_store.create_account("vllm-refused")
        with d.sdk(key) as sdk:
            with pytest.raises(openai.BadRequestError) as plain:
                sdk.chat.completions.create(**ASK)
            with pytest.raises(openai.BadRequestError) as streamed:
                sdk.chat.completions.create(**ASK, stream=True)
        for exc in (plain.value, streamed.value):
            err = exc.body
            assert set(err) >= {"message", "type", "param", "code"}
            assert "but this engine marks with" in err["message"] and err["type"] == "invalid_request_error"
        records = [r for r in gw_store.iter_audit() if r["account_id"] == account.id]
        assert [r["status"] for r in records] == [400, 102, 400]  # the stream's opening record, then its end
        assert all(r["request"]["messages"] == ASK["messages"] for r in records)
        assert "antidistill_engine_mark_checked_total 0.0" in d.metrics()


def test_unmarked_requests_are_sent_without_xargs_and_recorded_unmarked(tmp_path, gw_store):
    with deployment(tmp_path, gw_store, None, watermark=False) as d:  # an engine that serves unmarked traffic
        _, key, _ = gw_store.create_account("vllm-unmarked")
        with d.sdk(key) as sdk:
            r = sdk.chat.completions.create(**ASK)
        assert "vllm_xargs" not in d.seen[0]
        assert d.record(r.id)["watermark"] == {"status": "unwatermarked", "reason": "request not marked"}
        assert d.verifier is None  # nothing is marked, nothing to check


def test_the_sample_check_detects_the_mark_and_alarms_when_the_engine_stops_marking(tmp_path, gw_store, caplog):
    with deployment(tmp_path, gw_store, GATEWAY_MASTER, verify_alarm_misses=3) as d:
        _, key, _ = gw_store.create_account("vllm-check")
        v = d.verifier
        with d.sdk(key) as sdk:
            sdk.chat.completions.create(**ASK)
            list(sdk.chat.completions.create(**ASK, stream=True))
            sdk.completions.create(model="smollm2", prompt="Once", max_tokens=80)
            assert v.wait_idle()
            assert [r.detected for r in v.results] == [True] * 3
            assert all(r.source == "token_ids" and r.p_value < 1e-6 for r in v.results)
            m = d.metrics()
            assert "antidistill_engine_mark_checked_total 3.0" in m
            assert "antidistill_engine_mark_detected_total 3.0" in m
            assert "antidistill_engine_mark_alarm 0.0" in m

            # the engine restarts without the plugin: its completions carry no mark
            d.mode["master"] = None
            caplog.set_level(logging.WARNING, logger="antidistill.gateway.verify")
            for i in range(3):
                sdk.chat.completions.create(**ASK)
                assert v.wait_idle()
                assert ("ALARM" in caplog.text) == (i == 2)
            m = d.metrics()
            assert "antidistill_engine_mark_missed_total 3.0" in m
            assert "antidistill_engine_mark_misses_in_a_row 3.0" in m
            assert "antidistill_engine_mark_alarm 1.0" in m
            alarm = next(r for r in caplog.records if r.levelno == logging.ERROR)
            assert d.engine.url in alarm.getMessage() and "--logits-processors" in alarm.getMessage()
            assert MASTER_KEY not in caplog.text  # no secret in the log

            # the plugin is back (the same master key): the next detection clears the alarm
            d.mode["master"] = GATEWAY_MASTER
            sdk.chat.completions.create(**ASK)
            assert v.wait_idle()
            assert "marks again" in caplog.text
            assert "antidistill_engine_mark_alarm 0.0" in d.metrics()


def test_another_master_key_in_the_engine_raises_the_alarm_too(tmp_path, gw_store):
    with deployment(tmp_path, gw_store, MasterKey(b"w" * 32), verify_alarm_misses=2) as d:
        _, key, _ = gw_store.create_account("vllm-wrong-key")
        with d.sdk(key) as sdk:
            for _ in range(2):
                sdk.chat.completions.create(**ASK)
        assert d.verifier.wait_idle()
        assert [r.detected for r in d.verifier.results] == [False, False]
        assert d.verifier.alarm.active


def test_one_in_n_long_completions_is_checked_and_short_ones_never(tmp_path, gw_store):
    with deployment(tmp_path, gw_store, GATEWAY_MASTER, verify_every=3, verify_min_tokens=64) as d:
        _, key, _ = gw_store.create_account("vllm-sampling")
        with d.sdk(key) as sdk:
            d.mode["tokens"] = 40  # shorter than verify_min_tokens: not eligible
            sdk.chat.completions.create(**ASK)
            d.mode["tokens"] = 70
            sdk.chat.completions.create(**ASK, n=4)  # four eligible choices: the 1st and the 4th are due
            sdk.chat.completions.create(**ASK, n=3)  # eligible 5-7: the 7th
        assert d.verifier.wait_idle()
        assert [(r.choice, r.tokens) for r in d.verifier.results] == [(0, 70), (3, 70), (2, 70)]
        assert all(r.detected for r in d.verifier.results)


def test_without_token_ids_the_text_is_tokenized_again(tmp_path, gw_store):
    with deployment(tmp_path, gw_store, GATEWAY_MASTER) as d:
        d.mode["token_ids"] = False  # an engine that does not return them
        _, key, _ = gw_store.create_account("vllm-text")
        with d.sdk(key) as sdk:
            sdk.chat.completions.create(**ASK)
            list(sdk.chat.completions.create(**ASK, stream=True))
        assert d.verifier.wait_idle()
        assert [(r.source, r.detected) for r in d.verifier.results] == [("text", True)] * 2


def test_serve_backend_vllm_needs_the_engines_url_and_settings_come_from_the_environment(monkeypatch, tmp_path):
    import typer

    from antidistill.cli.serve import serve

    app = typer.Typer()
    app.command()(serve)
    result = CliRunner().invoke(app, ["--backend", "vllm"])
    assert isinstance(result.exception, ConfigError) and "--backend vllm needs --upstream-url" in str(result.exception)
    monkeypatch.setenv("ANTIDISTILL_BACKEND", "vllm")
    monkeypatch.setenv("ANTIDISTILL_UPSTREAM_URL", "http://127.0.0.1:8001/v1")
    monkeypatch.setenv("ANTIDISTILL_WATERMARK_SCHEME", "gumbel")
    monkeypatch.setenv("ANTIDISTILL_VERIFY_EVERY", "16")
    settings = Settings()
    backend = make_backend(settings)
    assert isinstance(backend, VLLMBackend) and backend.marks and backend.marks_remotely
    assert backend.url == "http://127.0.0.1:8001" and backend.config == settings.watermark_config()
    assert settings.verify_every == 16 and settings.verify_min_tokens == 64
    with pytest.raises(ValueError, match="verify_every"):
        Settings(verify_every=-1)
