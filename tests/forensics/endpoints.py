"""Suspect endpoints for closed-mode tests: small OpenAI-compatible FastAPI apps served by a real uvicorn."""

from __future__ import annotations

import asyncio
import hashlib
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from antidistill.models.fake import _WORDS
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
