"""LocalBackend: continuous batching, per-row sampling and marks, stop strings, streaming, cancellation.

Scheduler tests run on a tiny random Llama with the real tokenizer (fast); the tests marked slow run the real
embedded model through one backend shared by the module.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import torch

from antidistill.detection.detector import Detector
from antidistill.models.base import BackendError, GenerationChunk, GenerationRequest, GenerationResult
from antidistill.models.local import LocalModel
from antidistill.models.local_backend import IncrementalDetokenizer, LocalBackend, LocalResult, StopFilter
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from tests.synthetic import TEST_MASTER

ALICE, BOB = TEST_MASTER.account_key("alice"), TEST_MASTER.account_key("bob")
PROVIDER = TEST_MASTER.provider_key()
PROMPTS = [
    "Hi",
    "Write a short poem about the sea at night, please.",
    "Why?",
    "Tell me about the history of the printing press in Europe and how it changed the world.",
]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def collect(backend: LocalBackend, request: GenerationRequest) -> tuple[list[GenerationChunk], LocalResult]:
    chunks, result = [], None
    async for item in backend.stream(request):
        if isinstance(item, GenerationResult):
            result = item
        else:
            assert result is None, "chunks after the result"
            chunks.append(item)
    assert isinstance(result, LocalResult)
    return chunks, result


def joined(chunks: list[GenerationChunk], index: int = 0) -> str:
    return "".join(c.text for c in chunks if c.index == index)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread for this module: on a machine shared with other jobs, two OpenMP threads spin-waiting
    for each other made decode steps 3-10x slower than one (on a quiet 2-core machine one is as fast as two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- text helpers (no model) --------------------------------------------------------------------------------


def test_detokenizer_holds_back_incomplete_characters(tokenizer):
    text = "héllo 日本語 🎉 wörld — ok ✓ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    d = IncrementalDetokenizer(
        lambda x: tokenizer.decode(x, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    )
    pieces = [d.push(t) for t in ids]
    pieces.append(d.flush())
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    assert any(p == "" for p in pieces)  # some characters span several tokens and were held back


def test_detokenizer_flushes_an_unfinished_character():
    d = IncrementalDetokenizer(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    assert [d.push(b) for b in "a€".encode()[:3]] == ["a", "", ""]
    assert d.flush() == "\ufffd"


@pytest.mark.parametrize("seed", range(40))
def test_stop_filter_never_emits_part_of_a_stop_string(seed):
    rng = random.Random(seed)
    stops = ["END", "\n\n", "aab"]
    text = "".join(rng.choice(["E", "N", "D", "a", "b", "x", "\n", "EN", "aa"]) for _ in range(30))
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[: min(cuts)] if cuts else text
    f, out, stopped, i = StopFilter(stops), "", False, 0
    while i < len(text) and not stopped:
        j = i + rng.randint(1, 4)
        piece, stopped = f.feed(text[i:j])
        out += piece
        assert expected.startswith(out)  # what was emitted is never taken back, nor part of a stop string
        i = j
    if not stopped:
        out += f.flush()
    assert out == expected
    assert stopped == bool(cuts)


# ---- the scheduler on a tiny random model -------------------------------------------------------------------


class SlowModel:
    """A model whose every forward pass takes at least ``delay`` seconds (to observe the scheduler at work)."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.config, self.generation_config = inner.config, inner.generation_config

    def __call__(self, **kwargs):
        time.sleep(self.delay)
        return self.inner(**kwargs)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LocalModel(
        LlamaForCausalLM(cfg).eval(), tokenizer, Watermark(WatermarkConfig(scheme="antidistill-v1")), "tiny"
    )


@pytest.fixture
def tiny(tiny_model):
    backend = LocalBackend(tiny_model, max_batch=8)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.aclose())


def test_backend_identity(tiny):
    assert (tiny.name, tiny.marks, tiny.model_id) == ("local", True, "tiny")


def test_batched_equals_alone_greedy_and_seeded(tiny):
    # raw and chat prompts of mixed lengths, greedy and sampled, one with n=2: prefilled in groups and decoded together
    reqs = [
        GenerationRequest(prompt=p, max_tokens=8 + 7 * i, temperature=t, seed=5)
        for t in (0.0, 0.9)
        for i, p in enumerate(PROMPTS)
    ]
    reqs += [
        GenerationRequest(messages=chat(p), max_tokens=12, temperature=t, top_p=0.9, seed=7, n=1 + (i == 1))
        for t in (0.0, 1.0)
        for i, p in enumerate(PROMPTS[:2])
    ]

    async def main():
        alone = [await tiny.generate(r) for r in reqs]
        together = await asyncio.gather(*(tiny.generate(r) for r in reqs))
        return alone, together

    alone, together = asyncio.run(main())
    assert tiny.stats["max_rows"] == tiny.max_batch  # 14 rows: the batch filled up, the rest queued
    for a, b in zip(alone, together, strict=True):
        assert a.token_ids == b.token_ids
        assert a.choices == b.choices


def test_a_newcomer_joins_the_running_batch_and_short_rows_leave_early(tiny_model):
    backend = LocalBackend(LocalModel(SlowModel(tiny_model.model, 0.01), tiny_model.tokenizer, name="slow"))
    long_req = GenerationRequest(prompt=PROMPTS[1], max_tokens=60, temperature=0)
    short_req = GenerationRequest(prompt=PROMPTS[3], max_tokens=5, temperature=0)

    async def main():
        await backend.start()
        try:
            alone = await backend.generate(short_req)
            order = []

            async def run(name, req, delay):
                await asyncio.sleep(delay)
                r = await backend.generate(req)
                order.append(name)
                return r

            _, joined_short = await asyncio.gather(run("long", long_req, 0), run("short", short_req, 0.15))
            return alone, joined_short, order
        finally:
            await backend.aclose()

    alone, joined_short, order = asyncio.run(main())
    assert order == ["short", "long"]  # the short request did not wait for the long one
    assert backend.stats["max_rows"] == 2  # ... because it joined the long one's batch
    assert joined_short.token_ids == alone.token_ids  # and joining (with padding) changed nothing


def test_max_batch_is_respected_and_queued_requests_are_served(tiny_model):
    backend = LocalBackend(tiny_model, max_batch=3)

    async def main():
        await backend.start()
        try:
            return await asyncio.gather(
                *(
                    backend.generate(
                        GenerationRequest(prompt=PROMPTS[i % 4], max_tokens=6, n=1 + i % 2, temperature=0.7)
                    )
                    for i in range(7)
                )
            )
        finally:
            await backend.aclose()

    results = asyncio.run(main())
    assert [len(r.choices) for r in results] == [1 + i % 2 for i in range(7)]
    assert backend.stats["max_rows"] <= 3
    assert all(c.completion_tokens >= 1 for r in results for c in r.choices)


def test_n_choices_share_one_prefill_and_choice_zero_matches_n1(tiny):
    async def main():
        three = await tiny.generate(GenerationRequest(prompt=PROMPTS[1], max_tokens=12, temperature=1.0, seed=9, n=3))
        one = await tiny.generate(GenerationRequest(prompt=PROMPTS[1], max_tokens=12, temperature=1.0, seed=9))
        return three, one

    prefills = tiny.stats["prefills"]
    three, one = asyncio.run(main())
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert tiny.stats["prefills"] == prefills + 2
    assert three.token_ids[0] == one.token_ids[0]
    assert len({tuple(t) for t in three.token_ids}) == 3  # the choices draw from different generators
    assert three.prompt_tokens == one.prompt_tokens
    assert three.completion_tokens == sum(c.completion_tokens for c in three.choices)


def test_chat_prompts_reuse_the_cached_template_head(tiny):
    async def prefilled(req):
        before = tiny.stats["prefill_tokens"]
        r = await tiny.generate(req)
        return tiny.stats["prefill_tokens"] - before, r.prompt_tokens

    plain = asyncio.run(prefilled(GenerationRequest(messages=chat("Hello there, who are you?"), max_tokens=2)))
    custom = [{"role": "system", "content": "Be brief."}, *chat("Hello there, who are you?")]
    own_system = asyncio.run(prefilled(GenerationRequest(messages=custom, max_tokens=2)))
    assert plain[0] < plain[1] / 2  # only the user's part ran through the model
    assert own_system[0] == own_system[1]  # another system message: no shared head, the whole prompt


def test_stream_chunks_add_up_to_the_result(tiny):
    req = GenerationRequest(messages=chat("Tell me a story."), max_tokens=25, temperature=0.8, seed=3, n=2)
    chunks, result = asyncio.run(collect(tiny, req))
    for c in result.choices:
        assert joined(chunks, c.index) == c.text
        assert sum(ch.tokens for ch in chunks if ch.index == c.index) == c.completion_tokens
        finals = [ch for ch in chunks if ch.index == c.index and ch.finish_reason]
        assert len(finals) == 1 and finals[0].finish_reason == c.finish_reason
    again = asyncio.run(tiny.generate(req))
    assert again.choices == result.choices


def test_stop_string_cuts_the_text_and_is_never_streamed(tiny):
    base = asyncio.run(tiny.generate(GenerationRequest(prompt=PROMPTS[3], max_tokens=30, temperature=0)))
    text = base.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # three characters from the middle, likely across tokens
    req = GenerationRequest(prompt=PROMPTS[3], max_tokens=30, temperature=0, stop=["@@never@@", stop])
    chunks, result = asyncio.run(collect(tiny, req))
    choice = result.choices[0]
    assert choice.text == text[: text.find(stop)]
    assert choice.finish_reason == "stop"
    assert joined(chunks) == choice.text


def test_each_row_is_marked_with_its_own_keys_as_rows_come_and_go(tiny_model):
    # delta 50 makes every greedy token green under the row's own key: one wrong key in the processor shows at once
    cfg = WatermarkConfig(scheme="antidistill-v1", delta=50.0, provider_fraction=0.0)
    model = LocalModel(tiny_model.model, tiny_model.tokenizer, Watermark(cfg), "tiny")
    backend = LocalBackend(model)
    accounts = [TEST_MASTER.account_key(f"acct-{i}") for i in range(4)]
    reqs = [
        GenerationRequest(
            prompt=PROMPTS[i], max_tokens=10 + 15 * i, temperature=0, mark=MarkKeys(accounts[i]) if i != 2 else None
        )
        for i in range(4)
    ]

    async def main():
        await backend.start()
        try:

            async def later(i):
                await asyncio.sleep(0.02 * i)
                return await backend.generate(reqs[i])

            return await asyncio.gather(*(later(i) for i in range(4)))
        finally:
            await backend.aclose()

    results = asyncio.run(main())
    d = Detector(cfg)
    for i, r in enumerate(results):
        ids = list(r.token_ids[0])  # the answer alone: its first token's context lies in the prompt (unmarked)
        own = d.score(ids, accounts[i]) if i != 2 else None
        others = [d.score(ids, accounts[j]) for j in range(4) if j != i]
        if i == 2:
            assert r.watermark == {"status": "unwatermarked", "reason": "request not marked"}
        else:
            assert own.green == own.tokens_scored, (i, own)
            assert r.watermark == {"key_id": accounts[i].key_id, "provider_key_id": None, "config": cfg.to_dict()}
        assert all(o.green_fraction < 0.75 for o in others), (i, others)


@pytest.mark.parametrize("scheme", ["gumbel", "gumbel-dual", "tournament"])
def test_sampling_members_mark_each_row_with_its_own_key(tiny_model, scheme):
    # The backend's own sampler, batched: each sampled row carries its account's mark, seeded rows reproduce, and
    # a greedy row (no sampling, so no distortion-free mark) carries the green-list fallback.
    cfg = WatermarkConfig(scheme=scheme, provider_fraction=0.0)
    model = LocalModel(tiny_model.model, tiny_model.tokenizer, Watermark(cfg), "tiny")
    accounts = [TEST_MASTER.account_key(f"acct-{i}") for i in range(3)]

    def req(i, seed, temperature=1.0):
        return GenerationRequest(
            prompt=PROMPTS[i], max_tokens=60, temperature=temperature, seed=seed, mark=MarkKeys(accounts[i])
        )

    async def main():
        backend = LocalBackend(model)
        await backend.start()
        try:
            batch = [req(0, 1), req(1, 2), req(2, 3), req(0, 1), req(0, 99), req(1, 5, temperature=0)]
            return await asyncio.gather(*(backend.generate(r) for r in batch))
        finally:
            await backend.aclose()

    results = asyncio.run(main())
    d = Detector(cfg, model.vocab_size)
    h = cfg.context_width
    for i in range(3):
        r = results[i]
        ids = r.token_ids[0]  # the answer alone: contexts reaching into the prompt are not marked
        assert len(ids) > 40
        assert d.score(ids, accounts[i]).p_value < 1e-6, (scheme, i)
        assert all(d.score(ids, accounts[j]).p_value > 1e-4 for j in range(3) if j != i)
        assert r.watermark["key_id"] == accounts[i].key_id and r.watermark["config"]["scheme"] == scheme
    assert results[3].token_ids == results[0].token_ids  # the same seed gives the same answer
    # another seed, another answer, even for plain Gumbel-max under one key: the answer's first h tokens (whose
    # contexts reach into the prompt) come from the ordinary sampler
    assert results[4].token_ids != results[0].token_ids
    # a greedy row cannot carry a sampling mark: it carries the green-list fallback, and its record says so
    assert results[5].watermark["config"]["scheme"] == "antidistill-v1"
    assert results[5].watermark["config"]["context_width"] == h
    fallback = Detector(
        WatermarkConfig(scheme="antidistill-v1", context_width=h, provider_fraction=0.0), model.vocab_size
    )
    ids = results[5].token_ids[0]
    assert fallback.score(ids, accounts[1]).green_fraction > 0.5


def test_cancelled_stream_leaves_the_batch_at_once(tiny_model):
    backend = LocalBackend(LocalModel(SlowModel(tiny_model.model, 0.02), tiny_model.tokenizer, name="slow"))

    async def main():
        await backend.start()
        try:
            other = asyncio.create_task(backend.generate(GenerationRequest(prompt=PROMPTS[0], max_tokens=40)))
            agen = backend.stream(GenerationRequest(prompt=PROMPTS[1], max_tokens=150))
            got = 0
            async for item in agen:
                got += isinstance(item, GenerationChunk)
                if got == 3:
                    break
            await agen.aclose()
            t0 = time.monotonic()
            while backend.stats["cancelled_rows"] == 0 and time.monotonic() - t0 < 2:
                await asyncio.sleep(0.005)
            freed_after = time.monotonic() - t0
            rows_now = backend.active_rows
            return freed_after, rows_now, await other
        finally:
            await backend.aclose()

    freed_after, rows_now, other = asyncio.run(main())
    assert freed_after < 0.5  # one step is 20 ms: the row left at the next step, not after 150 tokens
    assert rows_now <= 1
    assert other.choices[0].completion_tokens == 40 or other.choices[0].finish_reason == "stop"


def test_cancelled_generate_task_frees_its_row(tiny_model):
    backend = LocalBackend(LocalModel(SlowModel(tiny_model.model, 0.02), tiny_model.tokenizer, name="slow"))

    async def main():
        await backend.start()
        try:
            task = asyncio.create_task(backend.generate(GenerationRequest(prompt=PROMPTS[1], max_tokens=150)))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            t0 = time.monotonic()
            while backend.stats["cancelled_rows"] == 0 and time.monotonic() - t0 < 2:
                await asyncio.sleep(0.005)
            return time.monotonic() - t0
        finally:
            await backend.aclose()

    assert asyncio.run(main()) < 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "x " * 300}, "context of 256 tokens"),
        ({"prompt": "hello", "max_tokens": 300}, "context of 256 tokens"),
        ({"prompt": "hello", "n": 9}, "n must be"),
        ({"prompt": "hello", "top_p": 0.0}, "top_p"),
        ({"prompt": "hello", "temperature": -1.0}, "temperature"),
        ({"prompt": "hello", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hello", "messages": chat("hello")}, "exactly one"),
        ({}, "exactly one"),
        ({"prompt": "hello", "stop": [3]}, "stop"),
    ],
)
def test_bad_requests_raise_value_error_before_queueing(tiny, kwargs, message):
    req = GenerationRequest(**kwargs)
    with pytest.raises(ValueError, match=message):
        tiny.stream(req)
    with pytest.raises(ValueError, match=message):
        asyncio.run(tiny.generate(req))
    assert tiny.stats["requests"] == 0


def test_close_fails_running_requests_and_refuses_new_ones(tiny_model):
    backend = LocalBackend(LocalModel(SlowModel(tiny_model.model, 0.02), tiny_model.tokenizer, name="slow"))

    async def main():
        await backend.start()
        task = asyncio.create_task(backend.generate(GenerationRequest(prompt="hello", max_tokens=150)))
        await asyncio.sleep(0.1)
        await backend.aclose()
        with pytest.raises(BackendError, match="shutting down"):
            await task
        with pytest.raises(BackendError, match="closed"):
            await backend.generate(GenerationRequest(prompt="hello", max_tokens=2))

    asyncio.run(main())


# ---- the real embedded model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(local_model):
    backend = LocalBackend(local_model)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.aclose())


REAL_PROMPTS = [
    "Write a short poem about the sea.",
    "Hi",
    "Why is the sky blue? Explain in detail, with examples.",
    "List three fruits.",
]


@pytest.mark.slow
def test_real_batched_equals_alone(real):
    """Greedy and seeded rows give the same tokens alone and inside a batch of mixed-length others (one of which
    joins while the batch is running)."""
    greedy = GenerationRequest(messages=chat(REAL_PROMPTS[0]), max_tokens=20, temperature=0)
    seeded = GenerationRequest(messages=chat(REAL_PROMPTS[0]), max_tokens=20, temperature=0.9, top_p=0.95, seed=42)
    others = [
        GenerationRequest(messages=chat(p), max_tokens=6 + 4 * i, temperature=0.7)
        for i, p in enumerate(REAL_PROMPTS[1:])
    ]

    async def main():
        alone = [await real.generate(greedy), await real.generate(seeded)]

        async def late(req):
            await asyncio.sleep(0.3)
            return await real.generate(req)

        together = await asyncio.gather(
            real.generate(others[0]),
            real.generate(greedy),
            late(others[1]),
            real.generate(seeded),
            real.generate(others[2]),
            late(greedy),
        )
        return alone, together

    rows_before = real.stats["max_rows"]
    alone, together = asyncio.run(main())
    assert real.stats["max_rows"] >= max(rows_before, 4)
    assert together[1].token_ids == alone[0].token_ids
    assert together[5].token_ids == alone[0].token_ids
    assert together[3].token_ids == alone[1].token_ids
    assert together[3].choices[0].text == alone[1].choices[0].text


@pytest.mark.slow
def test_real_stop_strings_n_and_streaming(real):
    base = asyncio.run(real.generate(GenerationRequest(messages=chat(REAL_PROMPTS[2]), max_tokens=24, temperature=0)))
    text = base.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    req = GenerationRequest(messages=chat(REAL_PROMPTS[2]), max_tokens=24, temperature=0, stop=[stop, "zzzz"])
    n3 = GenerationRequest(messages=chat(REAL_PROMPTS[0]), max_tokens=12, temperature=1.0, seed=1, n=3)

    async def main():
        return await asyncio.gather(collect(real, req), collect(real, n3), real.generate(n3))

    (chunks, stopped), (n3_chunks, n3_streamed), n3_plain = asyncio.run(main())
    assert stopped.choices[0].text == text[: text.find(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    assert joined(chunks) == stopped.choices[0].text  # no piece of the stop string was ever streamed
    assert [c.index for c in n3_streamed.choices] == [0, 1, 2]
    for c in n3_streamed.choices:
        assert joined(n3_chunks, c.index) == c.text
    assert n3_plain.choices == n3_streamed.choices


@pytest.mark.slow
def test_real_marks_are_per_account_and_detected(real):
    """Two accounts and an unmarked request in one batch: each marked row is detected and attributed to its own
    account (default config, provider component included); the unmarked row is not detected."""
    prompts = [
        "Write a long story about a lighthouse keeper.",
        "Explain in detail how a refrigerator keeps food cold.",
        "Describe the water cycle step by step.",
    ]
    marks = [MarkKeys(ALICE, PROVIDER), MarkKeys(BOB, PROVIDER), None]
    reqs = [
        GenerationRequest(messages=chat(p), max_tokens=96, temperature=0.7, seed=11, mark=m)
        for p, m in zip(prompts, marks, strict=True)
    ]

    async def main():
        return await asyncio.gather(*(real.generate(r) for r in reqs))

    results = asyncio.run(main())
    config = real.model.watermark.config  # the default member
    d = Detector(config, real.model.vocab_size)
    decoys = [TEST_MASTER.account_key(f"decoy-{i}") for i in range(8)]
    candidates = [ALICE, BOB, *decoys]
    for (res, mark), own in zip(zip(results[:2], marks[:2], strict=True), ("alice", "bob"), strict=True):
        ids = res.token_ids[0]
        assert len(ids) >= 64, res.choices[0]
        report = d.detect(ids, [PROVIDER], candidates)
        assert report.watermarked, report.p_value
        assert report.account == own, report.attribution.ranking[:2]
        other = BOB if own == "alice" else ALICE
        assert d.attribute(ids, [other], PROVIDER).best.p_value > 1e-3  # the batch-mate's key is not in this row
        assert res.watermark == {
            "key_id": mark.account.key_id,
            "provider_key_id": PROVIDER.key_id,
            "config": config.to_dict(),
        }
    plain = d.detect(results[2].token_ids[0], [PROVIDER], candidates)
    assert not plain.watermarked and plain.account is None
    assert results[2].watermark["status"] == "unwatermarked"


@pytest.mark.slow
def test_real_cancel_frees_the_row_while_others_are_served(real):
    async def main():
        cancelled_before = real.stats["cancelled_rows"]
        other = asyncio.create_task(
            real.generate(GenerationRequest(messages=chat(REAL_PROMPTS[2]), max_tokens=16, temperature=0))
        )
        agen = real.stream(GenerationRequest(messages=chat(REAL_PROMPTS[0]), max_tokens=200, temperature=0))
        got = 0
        async for item in agen:
            got += isinstance(item, GenerationChunk)
            if got == 2:
                break
        await agen.aclose()
        t0 = time.monotonic()
        while real.stats["cancelled_rows"] == cancelled_before and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.01)
        freed = real.stats["cancelled_rows"] == cancelled_before + 1
        return freed, await other

    freed, other = asyncio.run(main())
    assert freed
    assert other.choices[0].completion_tokens == 16 or other.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_real_prompt_longer_than_the_context_is_refused(real):
    limit = real.context_length
    assert limit == 8192
    req = GenerationRequest(prompt="word " * limit, max_tokens=16)
    with pytest.raises(ValueError, match=f"context of {limit} tokens"):
        asyncio.run(real.generate(req))
