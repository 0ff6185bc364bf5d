"""Test data shared by the store tests and their writer subprocesses (kept free of pytest, for a fast start)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from antidistill.store.api import AuditEntry

CHECKPOINT_EVERY = 10
T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_entry(i: int, **overrides) -> AuditEntry:
    """A realistic exchange, distinct for every ``i``."""
    values = dict(
        response_id=f"resp-{i}",
        account_id="acct_test",
        api_key_id="key_test",
        created_at=T0 + timedelta(seconds=i, microseconds=i),
        endpoint="/v1/chat/completions",
        client_addr="203.0.113.7",
        user_agent="OpenAI/Python 1.40.0",
        request={
            "model": "smollm2",
            "messages": [{"role": "user", "content": f"question {i} — naïve?"}],
            "temperature": 0.7,
            "max_tokens": 64,
        },
        completion=[f"answer {i} ✓"],
        prompt_tokens=10 + i,
        completion_tokens=20 + i,
        finish_reason="stop",
        latency_ms=12.5 + i / 3,
        watermark={"key_id": "acct:acct_test:v1", "config": {"gamma": 0.25, "delta": 3.0}},
    )
    values.update(overrides)
    return AuditEntry(**values)
