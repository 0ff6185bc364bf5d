"""Suspect endpoints for closed-mode tests: small OpenAI-compatible FastAPI apps served by a real uvicorn."""

from __future__ import annotations

import asyncio
import hashlib
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from antidistill.models.fake import _WORDS
from antidistill.watermark.core import U64
from antidistill.watermark.marker import MarkKeys, Watermark
from tests.forensics.helpers import green_words, word_tokens


def suspect_app(
    tokenizer,
    watermark: Watermark,
    mark: MarkKeys | None,
    echo: bool = False,
    delay: float = 0.0,
    limited: int = 0,
    retry_after: float = 0.2,
) -> FastAPI:
    """A suspect model behind ``/v1``: it writes words green under ``mark`` (a student that learnt that account's
    watermark), unmarked words when ``mark`` is None, or echoes the last message when ``echo``.

    ``delay``: seconds before each answer (a slow model); ``limited``: the first ``limited`` requests are answered
    HTTP 429 with ``Retry-After: retry_after``; ``app.state.hold`` (set by a test) keeps new requests waiting.
    ``app.state.answered`` lists ``(prompt, seed, time)`` of the requests answered, ``app.state.limited`` the times
    of the 429s."""
    app = FastAPI()
    vocab = word_tokens(tokenizer, _WORDS)
    app.state.requests = []
    app.state.answered = []
    app.state.limited = []
    app.state.hold = False

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "suspect-1", "object": "model", "created": 0, "owned_by": "x"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.requests.append(body)
        prompt = body["messages"][-1]["content"]
        if len(app.state.limited) < limited:
            app.state.limited.append((prompt, body.get("seed"), time.monotonic()))
            return JSONResponse({"error": {"message": "slow down"}}, 429, {"Retry-After": str(retry_after)})
        while app.state.hold:
            await asyncio.sleep(0.02)
        await asyncio.sleep(delay)
        n_tok = int(body.get("max_tokens") or 32)
        seed = int.from_bytes(hashlib.sha256(f"{prompt}|{body.get('seed')}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        text = prompt if echo else green_words(tokenizer, watermark, mark, vocab, n_tok, rng)
        app.state.answered.append((prompt, body.get("seed"), time.monotonic()))
        usage = {"prompt_tokens": 5, "completion_tokens": n_tok, "total_tokens": 5 + n_tok}
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
        }

    return app


def logprob_suspect_app(
    tokenizer, watermark: Watermark, mark: MarkKeys | None, tilt: float = 1.0, k: int = 8
) -> FastAPI:
    """A suspect that returns ``top_logprobs`` when asked: at each step ``k`` candidate words with random base
    probabilities, tilted by ``exp(tilt * score)`` toward the words that score high under ``mark``'s key of the step
    (a student that learnt the mark; untilted when ``mark`` is None); the word sent is drawn from the tilted
    probabilities, and the candidates' logprobs are the tilted ones. ``app.state.requests`` lists the bodies."""
    app = FastAPI()
    vocab = np.array(word_tokens(tokenizer, _WORDS), dtype=np.int64)
    h = watermark.config.context_width
    app.state.requests = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.requests.append(body)
        prompt = body["messages"][-1]["content"]
        n_tok = int(body.get("max_tokens") or 32)
        seed = int.from_bytes(hashlib.sha256(f"{prompt}|{body.get('seed')}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        ids = [int(t) for t in rng.choice(vocab, h)]
        content = [_position(tokenizer, i, [(i, 0.0)]) for i in ids]
        for _ in range(n_tok - h):
            cands = rng.choice(vocab, k, replace=False)
            w = rng.dirichlet(np.full(k, 0.5))
            if mark is not None:
                ctx = np.array([ids[-h:]], dtype=np.int64)
                prov = np.array([mark.provider.value], dtype=U64) if mark.provider else None
                key = watermark.row_keys(ctx, np.array([mark.account.value], dtype=U64), prov)
                s = watermark.scheme.pair_scores(key[:1], np.repeat(ctx, k, axis=0), cands, None)[0]
                w = w * np.exp(tilt * s)
                w /= w.sum()
            j = int(rng.choice(k, p=w))
            ids.append(int(cands[j]))
            content.append(
                _position(tokenizer, int(cands[j]), list(zip(cands.tolist(), np.log(w).tolist(), strict=True)))
            )
        text = tokenizer.decode(ids)
        lp = {"content": content} if body.get("logprobs") else None
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model"),
            "usage": {"prompt_tokens": 5, "completion_tokens": n_tok, "total_tokens": 5 + n_tok},
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": lp,
                    "finish_reason": "length",
                }
            ],
        }

    return app


def _position(tokenizer, tid: int, cands: list[tuple[int, float]]) -> dict:
    top = [{"token": tokenizer.decode([c]), "logprob": float(lp), "bytes": None} for c, lp in cands]
    return {"token": tokenizer.decode([tid]), "logprob": 0.0, "bytes": None, "top_logprobs": top}
