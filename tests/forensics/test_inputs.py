"""What a scan reads from the audit log: typed records and exported dicts give the same fed texts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from antidistill.forensics.inputs import texts_from_records
from antidistill.keys import MasterKey
from antidistill.settings import Settings
from antidistill.store.api import PENDING_STATUS, AuditEntry
from antidistill.store.sql import Store
from antidistill.watermark.config import WatermarkConfig

T0 = datetime(2025, 3, 1, tzinfo=UTC)
MARK = {"key_id": "acct:a:v1", "config": WatermarkConfig(scheme="antidistill-v1").to_dict()}


def _entry(i: int, account: str, **kw: object) -> AuditEntry:
    values: dict[str, object] = dict(
        response_id=f"r{i}",
        account_id=account,
        api_key_id="k",
        created_at=T0 + timedelta(seconds=i),
        endpoint="/v1/chat/completions",
        client_addr=None,
        user_agent=None,
        request={"messages": [{"role": "user", "content": f"q{i}"}]},
        completion=[f"answer {i}", " "],
        prompt_tokens=1,
        completion_tokens=2,
        finish_reason="stop",
        latency_ms=1.0,
        watermark=MARK,
        request_raw=b"\xff" if i % 2 else None,
    )
    values.update(kw)
    return AuditEntry(**values)  # type: ignore[arg-type]


def test_typed_records_and_exported_dicts_feed_the_same_texts(tmp_path):
    with Store.open(
        f"sqlite:///{tmp_path / 'a.db'}", Settings(env="test", data_dir=tmp_path / "d"), master=MasterKey(bytes(32))
    ) as store:
        for i, e in enumerate(
            [
                _entry(1, "a"),
                _entry(2, "b"),
                _entry(3, "a", status=PENDING_STATUS, completion=[]),
                _entry(4, "a", status=502),
                _entry(5, "a", watermark={"status": "unwatermarked"}),
                _entry(6, "a", request={"prompt": ["one prompt"]}, endpoint="/v1/completions"),
                _entry(7, "a", request={"prompt": ["two", "prompts"]}),
                _entry(8, "b", completion=["x", "y"]),
            ]
        ):
            assert store.append_audit(e) == i + 1
        for accounts in (None, {"a"}, {"b"}, set()):
            for max_texts in (None, 1, 3):
                typed = texts_from_records(store.iter_records(), accounts, max_texts)
                dicts = texts_from_records(store.iter_audit(), accounts, max_texts)
                assert typed == dicts
        fed = texts_from_records(store.iter_records(), {"a"})
    assert [(t.prompt, t.response, t.chat, t.account) for t in fed.texts] == [
        ([{"role": "user", "content": "q1"}], "answer 1", True, "a"),
        ("one prompt", "answer 6", False, "a"),
    ]
    assert dict(fed.skipped) == {"other-account": 2, "error-status": 2, "unwatermarked": 1, "unreadable-prompt": 1}
    assert fed.config() == WatermarkConfig(scheme="antidistill-v1") and list(fed.configs.values()) == [2]
    assert json.loads(next(iter(fed.configs))) == MARK["config"]
