"""The official openai SDK, unchanged but for base_url and api_key, against a real uvicorn serving the gateway."""

from __future__ import annotations

import asyncio

import openai
import pytest

from antidistill.models.fake import UNWATERMARKED

MODEL = "antidistill-fake"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about rivers."}]


@pytest.fixture(scope="module")
def key(gateway):
    account, api_key, info = gateway.account("sdk-user")
    return {"account": account, "api_key": api_key, "info": info}


@pytest.fixture
def sdk(gateway, key):
    with openai.OpenAI(base_url=gateway.v1, api_key=key["api_key"], max_retries=0) as c:
        yield c


def test_chat_non_stream(gateway, key, sdk):
    r = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64, temperature=0.7, seed=3, top_p=0.9)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == MODEL
    (choice,) = r.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens == len(choice.message.content.split())
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    (rec,) = gateway.audit(r.id)  # exactly one record, under the id the client saw
    assert rec["account_id"] == key["account"].id
    assert rec["api_key_id"] == key["info"].id
    assert rec["endpoint"] == "/v1/chat/completions"
    assert rec["client_addr"] == "127.0.0.1"
    assert rec["user_agent"].startswith("OpenAI/Python")
    assert rec["request"]["messages"] == MESSAGES and rec["request"]["max_tokens"] == 64
    assert rec["request"]["seed"] == 3
    assert rec["completion"] == [choice.message.content]
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (r.usage.prompt_tokens, r.usage.completion_tokens)
    assert rec["finish_reason"] == choice.finish_reason
    assert rec["latency_ms"] > 0
    assert rec["watermark"] == UNWATERMARKED
    assert rec["status"] == 200


def test_same_request_same_answer_and_max_tokens(sdk):
    a = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, seed=11)
    b = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, seed=11)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.id != b.id
    short = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, seed=11, max_completion_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"


def test_chat_stream_with_usage(gateway, sdk):
    stream = sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=32, seed=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    ids = {c.id for c in chunks}
    assert len(ids) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == len(text.split())
    assert all(c.usage is None for c in chunks[:-1])
    # the same request without streaming gives the same text
    whole = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=32, seed=5)
    assert whole.choices[0].message.content == text

    (rec,) = gateway.audit(ids.pop())
    assert rec["completion"] == [text]
    assert rec["completion_tokens"] == usage.completion_tokens
    assert rec["finish_reason"] == finishes[0]


def test_stream_without_usage(sdk):
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, stream=True))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason is not None


def test_async_client_concurrently(gateway, key):
    async def main():
        async with openai.AsyncOpenAI(base_url=gateway.v1, api_key=key["api_key"], max_retries=0) as c:
            plain = [
                c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=12, seed=i
                )
                for i in range(8)
            ]
            results = await asyncio.gather(*plain)
            stream = await c.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=10, stream=True, stream_options={"include_usage": True}
            )
            chunks = [ch async for ch in stream]
            return results, chunks

    results, chunks = asyncio.run(main())
    assert len({r.id for r in results}) == 8
    assert all(r.choices[0].message.content for r in results)
    assert chunks[-1].usage is not None
    for r in results:
        assert len(gateway.audit(r.id)) == 1


def test_completions_endpoint(gateway, sdk):
    r = sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=20, seed=1)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert r.choices[0].text
    (rec,) = gateway.audit(r.id)
    assert rec["endpoint"] == "/v1/completions" and rec["request"]["prompt"] == "Once upon a time"

    chunks = list(
        sdk.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=20,
            seed=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_n_choices(gateway, sdk):
    r = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, n=3, max_tokens=40, seed=2)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) == 3
    assert r.usage.completion_tokens == sum(len(c.message.content.split()) for c in r.choices)
    (rec,) = gateway.audit(r.id)
    assert rec["completion"] == [c.message.content for c in r.choices]

    chunks = list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, n=3, max_tokens=40, seed=2, stream=True))
    texts = {
        i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        for i in range(3)
    }
    assert [texts[i] for i in range(3)] == [c.message.content for c in r.choices]


def test_stop_sequences(sdk):
    full = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64, seed=9).choices[0].message
    words = full.content.split(" ")
    stop_word = " " + words[len(words) // 2]
    cut = full.content[: full.content.index(stop_word)]
    r = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64, seed=9, stop=[stop_word, "zzz"])
    assert r.choices[0].message.content == cut
    assert r.choices[0].finish_reason == "stop"
    r2 = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64, seed=9, stop=stop_word)
    assert r2.choices[0].message.content == cut


def test_content_parts_and_developer_role(gateway, sdk):
    r = sdk.chat.completions.create(
        model=MODEL,
        max_tokens=8,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
        ],
    )
    assert r.choices[0].message.content
    sent = gateway.backend.requests[-1].messages
    assert sent == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


def test_watermark_keys_reach_the_backend(gateway, key, sdk):
    sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    mark = gateway.backend.requests[-1].mark
    assert mark.account.key_id == f"acct:{key['account'].id}:v1"
    assert mark.provider.key_id == "provider:v1"


def test_models(gateway, sdk):
    models = sdk.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert sdk.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-nonexistent")


def test_sdk_error_classes(gateway):
    with (
        openai.OpenAI(base_url=gateway.v1, api_key="sk-ad-unknown", max_retries=0) as c,
        pytest.raises(openai.AuthenticationError) as exc,
    ):
        c.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert exc.value.body["code"] == "invalid_api_key"
