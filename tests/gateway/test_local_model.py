"""The gateway in front of the real embedded model (slow): the chat template applies, the completion is marked
with the account's keys, and the audit record names the key and the watermark parameters."""

from __future__ import annotations

import openai
import pytest

from antidistill.models.local_backend import LocalBackend

from .conftest import start_gateway

pytestmark = pytest.mark.slow


def test_watermarked_completion_through_the_sdk(gateway_dir, store, local_model):
    with start_gateway(gateway_dir, store, backend=LocalBackend(local_model)) as gw:
        account, key, _ = gw.account("local-model-user")
        with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as sdk:
            r = sdk.chat.completions.create(
                model=gw.backend.model_id,
                max_tokens=12,
                temperature=0.7,
                seed=1,
                messages=[{"role": "user", "content": "Name three rivers."}],
            )
            chunks = list(
                sdk.chat.completions.create(
                    model=gw.backend.model_id,
                    max_tokens=4,
                    stream=True,
                    messages=[{"role": "user", "content": "Hi"}],
                    stream_options={"include_usage": True},
                )
            )
        assert r.choices[0].message.content
        assert 0 < r.usage.completion_tokens <= 12
        assert r.usage.prompt_tokens > 5  # the chat template wrapped the message
        (rec,) = gw.audit(r.id)
        assert rec["watermark"]["key_id"] == f"acct:{account.id}:v1"
        assert rec["watermark"]["config"]["gamma"] > 0
        assert rec["completion"] == [r.choices[0].message.content]
        assert chunks[-1].usage is not None and len(gw.audit(chunks[0].id)) == 1
