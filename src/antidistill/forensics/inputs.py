"""What a scan reads: watermarked exchanges from the audit log or a JSONL file, prompts, account clusters."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from antidistill.errors import InputError
from antidistill.forensics.scan import FedText, Messages
from antidistill.store.api import AuditRecord
from antidistill.watermark.config import WatermarkConfig


@dataclass
class AuditTexts:
    """Watermarked exchanges taken from the audit log.

    Each text carries the watermark configuration its own record names (:attr:`FedText.config`), so a scan scores
    it with the scheme that marked it, whatever the server's configuration is now.

    Args:
        texts: one :class:`FedText` per served choice, in log order.
        configs: watermark configs seen (as canonical JSON) -> number of records.
        skipped: records not used, by reason (``other-account``, ``unwatermarked``, ``error-status``, ...).
    """

    texts: list[FedText]
    configs: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def config(self) -> WatermarkConfig | None:
        """The watermark config most records were marked with (``None`` if no record was marked)."""
        if not self.configs:
            return None
        return WatermarkConfig.from_dict(json.loads(self.configs.most_common(1)[0][0]))

    def all_configs(self) -> list[WatermarkConfig]:
        """Every watermark config the records were marked with, the most frequent first."""
        return [WatermarkConfig.from_dict(json.loads(c)) for c, _ in self.configs.most_common()]


def record_config(watermark: Mapping[str, Any]) -> WatermarkConfig | None:
    """The configuration an audit record's ``watermark`` field names (``None``: the record is not marked).

    Raises:
        InputError: the record names a configuration this version cannot read (an unknown scheme or parameter).
    """
    cfg = watermark.get("config") if watermark.get("key_id") else None
    if not isinstance(cfg, Mapping):
        return None
    # every record names its scheme; should one not, it predates the others (antidistill-v1), whatever the default
    # is now: a record is never read with the current default
    try:
        return WatermarkConfig.from_dict({"scheme": "antidistill-v1", **cfg})
    except (InputError, TypeError, ValueError) as exc:
        raise InputError(f"an audit record names a watermark configuration that cannot be read: {exc}") from None


def _prompt_of(request: Mapping[str, Any]) -> tuple[str | Messages | None, bool] | None:
    if isinstance(request.get("messages"), list):
        return request["messages"], True
    p = request.get("prompt")
    if isinstance(p, str):
        return p, False
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        return p[0], False
    return None


def texts_from_records(
    records: Iterable[AuditRecord | Mapping[str, Any]],
    accounts: Collection[str] | None = None,
    max_texts: int | None = None,
) -> AuditTexts:
    """Watermarked exchanges of ``accounts`` (all if ``None``) from audit records (``Store.iter_records``; dicts as
    ``Store.iter_audit`` yields them or an export holds are read too)."""
    out = AuditTexts([])
    for rec in records:
        if max_texts is not None and len(out.texts) >= max_texts:
            break
        account, status, wm, request, completion = _fields(rec)
        if accounts is not None and account not in accounts:
            out.skipped["other-account"] += 1
            continue
        if int(status or 200) != 200:
            out.skipped["error-status"] += 1
            continue
        if not wm.get("key_id") or not isinstance(wm.get("config"), dict):
            out.skipped["unwatermarked"] += 1
            continue
        try:
            config = record_config(wm)
        except InputError:
            out.skipped["unreadable-watermark"] += 1
            continue
        prompt = _prompt_of(request)
        if prompt is None:
            out.skipped["unreadable-prompt"] += 1
            continue
        assert config is not None  # key_id and a config dict, checked above
        out.configs[json.dumps(config.to_dict(), sort_keys=True)] += 1
        for text in completion:
            if isinstance(text, str) and text.strip():
                out.texts.append(FedText(prompt[0], text, prompt[1], account, config))
    if max_texts is not None:
        out.texts = out.texts[:max_texts]
    return out


def _fields(rec: AuditRecord | Mapping[str, Any]) -> tuple[Any, Any, Mapping[str, Any], Mapping[str, Any], list[Any]]:
    """``(account, status, watermark, request, completion)`` of a record; a dict's missing fields read as empty
    (a missing status as 200)."""
    if isinstance(rec, AuditRecord):
        return rec.account_id, rec.status, rec.watermark, rec.request, rec.completion
    return (
        rec.get("account_id"),
        rec.get("status"),
        rec.get("watermark") or {},
        rec.get("request") or {},
        rec.get("completion") or [],
    )


def read_texts_file(path: Path, max_texts: int | None = None) -> list[FedText]:
    """JSONL of ``{"prompt": str | messages, "response": str}`` (``messages`` is accepted for ``prompt``)."""
    texts = []
    for lineno, obj in _jsonl(path):
        prompt = obj.get("messages", obj.get("prompt"))
        response = obj.get("response")
        if not isinstance(response, str):
            raise InputError(f"{path}:{lineno}: no string field 'response'")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise InputError(f"{path}:{lineno}: 'prompt' must be a string or a list of chat messages")
        texts.append(FedText(prompt, response, bool(obj.get("chat", True)), obj.get("account")))
        if max_texts is not None and len(texts) >= max_texts:
            break
    return texts


def read_prompts_file(path: Path) -> list[str | Messages]:
    """Prompts: JSONL of ``{"prompt": ...}`` / ``{"messages": [...]}``, or plain text with one prompt a line."""
    if path.suffix.lower() in (".jsonl", ".json"):
        prompts: list[str | Messages] = []
        for lineno, obj in _jsonl(path):
            p = obj.get("messages", obj.get("prompt"))
            if not isinstance(p, (str, list)) or not p:
                raise InputError(f"{path}:{lineno}: no 'prompt' or 'messages'")
            prompts.append(p)
        return prompts
    return [line.strip() for line in _read(path).splitlines() if line.strip()]


def unique_prompts(texts: Iterable[FedText]) -> list[str | Messages]:
    """The distinct prompts of ``texts``, in first-seen order."""
    seen: dict[str, str | Messages] = {}
    for t in texts:
        if t.prompt is not None:
            seen.setdefault(json.dumps(t.prompt, sort_keys=True), t.prompt)
    return list(seen.values())


def parse_cluster(value: str) -> list[str]:
    """A cluster given as a comma-separated list of account ids, or as a file of ids (one a line, # comments)."""
    p = Path(value)
    if "," not in value and p.is_file():
        ids = [s.strip() for s in _read(p).splitlines()]
        ids = [s for s in ids if s and not s.startswith("#")]
    else:
        ids = [s.strip() for s in value.split(",") if s.strip()]
    if not ids:
        raise InputError(f"cluster {value!r} names no account")
    return list(dict.fromkeys(ids))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {type(exc).__name__}") from None


def _jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object")
        yield lineno, obj
