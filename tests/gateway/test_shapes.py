"""Every body and stream chunk the gateway emits is exactly one of the OpenAI shapes in gateway/schemas.py.

The gateway builds them as dicts (antidistill.gateway.exchange); these tests tie the dicts to the models: each
one validates (no field added, every literal right) and has every field the model has (none missing), and the
official SDK's own types accept it too. Cases: chat and completions, streamed or not, n = 1 and 3, with and without
the usage chunk, both finish reasons, a stop sequence, error bodies and a stream's error event.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from antidistill.gateway import schemas
from antidistill.models.base import BackendError, GenerationChunk
from antidistill.models.fake import FakeBackend
from tests.gateway.conftest import auth, start_gateway

MESSAGES = [{"role": "user", "content": "Tell me about rivers."}]


@pytest.fixture(scope="module")
def api_key(gateway) -> str:
    return gateway.account("shapes")[1]


@pytest.fixture(scope="module")
def sdk(gateway, api_key):
    with openai.OpenAI(base_url=gateway.v1, api_key=api_key, max_retries=0) as c:
        yield c


def via_sdk(sdk, kind: str, **body: Any) -> list[dict[str, Any]]:
    """The same request through the official SDK: what it parsed, as dicts (one per body or chunk)."""
    _, payload = request(kind, **body)
    payload.pop("model")
    create = sdk.chat.completions.create if kind == "chat" else sdk.completions.create
    out = create(model="antidistill-fake", **payload)
    return [c.to_dict() for c in out] if body.get("stream") else [out.to_dict()]


def same_but_ids(parsed: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
    """The SDK's objects hold what was sent (every field; the ids and times are the two requests' own)."""

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k not in ("id", "created")}

    assert [strip(d) for d in parsed] == [strip(d) for d in sent]


def exactly(model: type[BaseModel], data: dict[str, Any], absent: frozenset[str] = frozenset()) -> BaseModel:
    """``data`` validates against ``model`` and has each of its fields, but the ``absent`` ones, at every level."""
    obj = model.model_validate(data)
    want = obj.model_dump(mode="json")
    for key in absent:
        want.pop(key, None)
    if model is schemas.ChatCompletionChunk:  # a delta leaves out what it does not add
        for wc, dc in zip(want["choices"], data["choices"], strict=True):
            wc["delta"] = {k: v for k, v in wc["delta"].items() if k in dc["delta"]}
    assert data == want, f"{model.__name__}: {data} != {want}"
    return obj


def events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON of each server-sent event, checking the stream's framing and its final ``[DONE]``."""
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.read().decode()
    assert raw.endswith("\n\n")
    frames = raw[:-2].split("\n\n")
    assert all(f.startswith("data: ") for f in frames), raw
    assert frames[-1] == "data: [DONE]"
    return [json.loads(f[6:]) for f in frames[:-1]]


def request(kind: str, **body: Any) -> tuple[str, dict[str, Any]]:
    """The path and body of a request of this kind."""
    prompt = {"messages": MESSAGES} if kind == "chat" else {"prompt": "Once upon a time"}
    return ("/chat/completions" if kind == "chat" else "/completions"), {
        "model": "antidistill-fake",
        "seed": 4,
        **prompt,
        **body,
    }


def post(client, gateway, api_key, kind: str, **body: Any) -> httpx.Response:
    path, payload = request(kind, **body)
    return client.post(gateway.v1 + path, headers=auth(api_key), json=payload)


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize(("max_tokens", "reason"), [(4, "length"), (200, "stop")])
def test_bodies(gateway, client, api_key, sdk, kind, n, max_tokens, reason):
    r = post(client, gateway, api_key, kind, n=n, max_tokens=max_tokens)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    obj = exactly(schemas.ChatCompletion if kind == "chat" else schemas.Completion, body)
    same_but_ids(via_sdk(sdk, kind, n=n, max_tokens=max_tokens), [body])
    assert [c.index for c in obj.choices] == list(range(n))
    assert {c.finish_reason for c in obj.choices} == {reason}
    assert obj.usage.total_tokens == obj.usage.prompt_tokens + obj.usage.completion_tokens


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize(("max_tokens", "reason"), [(4, "length"), (200, "stop")])
def test_stream_chunks(gateway, client, api_key, sdk, kind, n, include_usage, max_tokens, reason):
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    path, payload = request(kind, n=n, max_tokens=max_tokens, stream=True, **options)
    with client.stream("POST", gateway.v1 + path, headers=auth(api_key), json=payload) as r:
        assert r.status_code == 200
        chunks = events(r)
    ours = schemas.ChatCompletionChunk if kind == "chat" else schemas.CompletionChunk
    absent = frozenset() if include_usage else frozenset({"usage"})
    objs = [exactly(ours, c, absent) for c in chunks]
    same_but_ids(via_sdk(sdk, kind, n=n, max_tokens=max_tokens, stream=True, **options), chunks)
    assert len({o.id for o in objs}) == 1 and len({o.created for o in objs}) == 1
    if include_usage:  # the last chunk carries the usage and no choice; every other one says null
        *objs, last = objs
        assert last.choices == [] and last.usage is not None and all(o.usage is None for o in objs)
    assert all(len(o.choices) == 1 for o in objs)
    finished = {o.choices[0].index: o.choices[0].finish_reason for o in objs if o.choices[0].finish_reason}
    assert finished == dict.fromkeys(range(n), reason)
    for o in objs:  # a finishing chunk adds no text
        c = o.choices[0]
        if c.finish_reason is not None:
            assert (c.delta.model_dump(exclude_none=True) == {}) if kind == "chat" else c.text == ""
    if kind == "chat":  # each choice opens with the role (and empty content), text chunks carry only content
        openers = [o.choices[0] for o in objs[:n]]
        assert [c.index for c in openers] == list(range(n))
        assert all(c.delta.role == "assistant" and c.delta.content == "" for c in openers)
        assert all(o.choices[0].delta.role is None for o in objs[n:])


def test_a_stop_sequence_finishes_with_stop(gateway, client, api_key):
    text = post(client, gateway, api_key, "completion", max_tokens=200).json()["choices"][0]["text"]
    stop = text.split(" ")[3]
    body = post(client, gateway, api_key, "completion", max_tokens=200, stop=[" " + stop]).json()
    obj = exactly(schemas.Completion, body)
    assert obj.choices[0].finish_reason == "stop" and len(obj.choices[0].text) < len(text)


def test_error_bodies(gateway, client, api_key):
    bad = post(client, gateway, api_key, "chat", max_tokens="ten")
    assert bad.status_code == 400
    exactly(schemas.ErrorResponse, bad.json())
    unknown = client.get(gateway.v1 + "/models/nope", headers=auth(api_key))
    assert unknown.status_code == 404
    exactly(schemas.ErrorResponse, unknown.json())
    models = client.get(gateway.v1 + "/models", headers=auth(api_key)).json()
    exactly(schemas.ModelList, models)


class _FailsMidStream(FakeBackend):
    """Sends one piece of text, then fails."""

    async def stream(self, request):
        yield GenerationChunk(index=0, text="Hello", finish_reason=None, tokens=1)
        raise BackendError("the model fell over")


def test_a_stream_error_event_is_an_error_body(tmp_path, store):
    with start_gateway(tmp_path, store, backend=_FailsMidStream()) as gw, httpx.Client(timeout=30) as c:
        key = gw.account("fails")[1]
        with c.stream(
            "POST",
            gw.v1 + "/chat/completions",
            headers=auth(key),
            json={"model": "m", "messages": MESSAGES, "stream": True},
        ) as r:
            assert r.status_code == 200
            raw = r.read().decode()
    frames = [json.loads(f[6:]) for f in raw.strip().split("\n\n")]
    *chunks, error = frames
    for ch in chunks:
        exactly(schemas.ChatCompletionChunk, ch, frozenset({"usage"}))
    assert exactly(schemas.ErrorResponse, error).error.message.startswith("the model backend failed")
