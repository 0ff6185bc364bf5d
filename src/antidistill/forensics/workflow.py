"""Forensic workflows that put the parts together: the audit log's watermarked exchanges of some accounts, their
keys from the key ring, the suspect's weights, and the open-weights scan (reading mode, Sander et al. 2024,
https://arxiv.org/abs/2402.14904).

``antidistill report --suspect-model PATH`` scans through :func:`scan_open_on_audit` before it gathers the evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from antidistill.errors import InputError
from antidistill.forensics.inputs import texts_from_records
from antidistill.forensics.scan import ScanKeys, ScanReport, check_same_tokenizer, scan_open
from antidistill.keys import KeyRing
from antidistill.models.embedded import load_causal_lm, load_tokenizer, resolve_model
from antidistill.settings import Settings, get_settings
from antidistill.store.api import AuditLog

#: the files that make a weights directory carry its own tokenizer
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def scan_open_on_audit(store: AuditLog, suspect_model: str, account_ids: Sequence[str], *,
                       cluster_id: str | None = None, settings: Settings | None = None,
                       max_texts: int | None = None, teacher_control: bool = True) -> ScanReport:
    """Scan the open weights at ``suspect_model``, feeding it the watermarked exchanges of ``account_ids`` from the
    audit log (reading mode, :func:`antidistill.forensics.scan.scan_open`).

    The provider key and every version of each account's key are tested (pooled as ``cluster_id`` when given), and
    the served model itself is scanned the same way as a control (``teacher_control``): it produced the marked text
    but was never trained on it, so it must come out not significant.

    Args:
        store: the installation's store (its audit log feeds the suspect).
        suspect_model: a weights directory or GGUF file.
        account_ids: the accounts whose exchanges are fed and whose keys are tested.
        cluster_id: test the accounts' keys pooled under this cluster id too.
        settings: the settings (the served model, the cache, the master key); default: the environment's.
        max_texts: feed at most this many exchanges.
        teacher_control: scan the served model as a control.

    Raises:
        InputError: no such model, no watermarked exchange to feed, a different tokenizer.
        ConfigError: no master key here (the scan needs the keys the gateway marked with).
    """
    settings = settings or get_settings()
    if not Path(suspect_model).exists():
        raise InputError(f"suspect model not found: {suspect_model}")
    fed = texts_from_records(store.iter_records(), accounts=set(account_ids), max_texts=max_texts)
    if not fed.texts:
        who = f"cluster {cluster_id}" if cluster_id is not None else f"account {', '.join(account_ids)}"
        raise InputError(f"the audit log holds no watermarked exchange of {who} to feed the suspect model")
    ring = KeyRing.open(settings, create=False)
    clusters = {cluster_id: list(account_ids)} if cluster_id is not None else None
    try:
        keys = ScanKeys.from_keyring(ring, account_ids, clusters)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    teacher = resolve_model(settings.model)
    tokenizer = load_tokenizer(teacher, settings.cache_dir)
    source = resolve_model(suspect_model)
    # a weights directory without tokenizer files is read with ours (as `antidistill scan` does)
    if source.kind != "dir" or any((source.path / f).exists() for f in _TOKENIZER_FILES):
        check_same_tokenizer(tokenizer, load_tokenizer(source, settings.cache_dir))
    model, _ = load_causal_lm(source, settings.cache_dir)
    controls: dict[str, Any] = {"teacher": load_causal_lm(teacher, settings.cache_dir)[0]} if teacher_control else {}
    return scan_open(model, tokenizer, fed.texts, keys, fed.config(), control_models=controls,
                     suspect=str(suspect_model), max_texts=max_texts)


__all__ = ["scan_open_on_audit"]
