"""A mixed deployment (slow, the real embedded model): the server marks with one scheme, its configuration changes
to another (a new server on the same database), and every audit record is still detected and attributed, each
with the scheme its own record names."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest

from antidistill.detection.detector import Detector
from antidistill.forensics.records import detect_record, detect_records
from antidistill.gateway import create_app
from antidistill.keys import KeyRing, MasterKey
from antidistill.watermark.config import WatermarkConfig

from .conftest import MASTER_KEY, LiveServer, auth, gateway_settings

pytestmark = pytest.mark.slow

#: a raw continuation (not a chat answer, which this small model may end after a few words)
PROMPT = "Once upon a time, in a village by a wide river, there lived a fox who carried a lantern. Every night"


def _serve_one(gateway_dir, store, model_cache_dir, scheme: str, key: str, seed: int = 7) -> str:
    """Start a gateway whose settings name ``scheme`` (ANTIDISTILL_WATERMARK_SCHEME), ask it one completion."""
    settings = gateway_settings(gateway_dir, backend="local", cache_dir=model_cache_dir, watermark_scheme=scheme)
    keyring = KeyRing(MasterKey.from_text(MASTER_KEY))
    app = create_app(settings, store=store, keyring=keyring)  # the backend is built from the settings
    with LiveServer(app) as srv, httpx.Client(timeout=120) as client:
        r = client.post(
            srv.url + "/v1/completions",
            headers=auth(key),
            json={
                "model": "any",
                "prompt": PROMPT,
                # 160: under gumbel (h = 3, repeated contexts unmarked) an 80-token answer's account half was too
                # short to attribute under some account keys (the store draws a new account id each run)
                "max_tokens": 160,
                "temperature": 1.0,
                "seed": seed,
            },
        )
        assert r.status_code == 200, r.text
        return r.json()["id"]


def test_records_of_two_schemes_are_each_read_with_their_own(gateway_dir, store, model_cache_dir, tokenizer):
    account, key, _ = store.create_account("mixed-user")
    other, _, _ = store.create_account("mixed-other")
    ids = {
        scheme: _serve_one(gateway_dir, store, model_cache_dir, scheme, key) for scheme in ("antidistill-v1", "gumbel")
    }
    # a second answer of each: one 160-token answer is not always attributable alone under a random account id (one
    # fresh-clone run had the green list's at corrected p 4.3e-3); the account's two answers together are
    seconds = {s: _serve_one(gateway_dir, store, model_cache_dir, s, key, seed=8) for s in ids}
    ring = KeyRing(MasterKey.from_text(MASTER_KEY))
    records = {r.response_id: r for r in store.iter_records()}
    for scheme, rid in ids.items():
        rec = records[rid]
        assert rec.watermark["config"]["scheme"] == scheme and rec.watermark["key_id"] == f"acct:{account.id}:v1"
        found = detect_record(rec, tokenizer, ring, accounts=[account.id, other.id])
        assert found.config.scheme == scheme
        (report,) = found.reports
        assert not isinstance(report, Exception), report
        assert report.config["scheme"] == scheme
        assert report.watermarked and report.account in (account.id, None), (scheme, report.p_value, report.attribution)
        pair = replace(rec, completion=["\n\n".join(records[r].completion[0] for r in (rid, seconds[scheme]))])
        (pooled,) = detect_record(pair, tokenizer, ring, accounts=[account.id, other.id]).reports
        assert not isinstance(pooled, Exception) and pooled.account == account.id, (scheme, pooled.attribution)
    # every marked record of the log, each with its own configuration
    both = detect_records([records[r] for r in ids.values()], tokenizer, ring)
    assert [d.config.scheme for d in both] == list(ids) and all(d.reports[0].watermarked for d in both)
    # the Gumbel-max record read with the (default) green-list configuration would show nothing: why it must not be
    gumbel_text = records[ids["gumbel"]].completion[0]
    ids_ = tokenizer(gumbel_text, add_special_tokens=False)["input_ids"]
    wrong = Detector(WatermarkConfig(scheme="antidistill-v1"), vocab_size=len(tokenizer)).detect(
        ids_, ring.provider_keys(), ring.account_keys(account.id)
    )
    assert not wrong.watermarked
