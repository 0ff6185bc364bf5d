"""Mixed deployments: an audit log holding records of two schemes is scanned with each record's own scheme."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest

from antidistill.errors import InputError
from antidistill.forensics.attribution import Attribution, combine_groups
from antidistill.forensics.inputs import record_config, texts_from_records
from antidistill.forensics.scan import FedText, ScanKeys, encode_prompt, encode_text, scan_open
from antidistill.keys import MasterKey
from antidistill.settings import Settings
from antidistill.store.api import AuditEntry
from antidistill.store.sql import Store
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64
from antidistill.watermark.marker import MarkKeys, Watermark

from .helpers import word_tokens

MASTER = MasterKey(bytes(range(32)))
KGW = WatermarkConfig(scheme="antidistill-v1")
GUMBEL = WatermarkConfig(scheme="gumbel")
_WORDS = (
    "the a of and to in is it that was for on are with as his they be at one have this from or had by word but "
    "what some we can out other were all there when up use your how said an each she which do their time if will "
    "way about many then them write would like so these her long make thing see him two has look more day could "
    "go come did number sound no most people my over know water than call first who may down side been now find "
    "any new work part take get place made live where after back little only round man year came show every good"
)
WORDS = _WORDS.split()


def _marked_ids(wm: Watermark, mark: MarkKeys, vocab: np.ndarray, v: int, length: int, rng) -> list[int]:
    """Single-token words, each chosen by the scheme under ``mark`` (green for KGW, Gumbel-max for gumbel)."""
    h = wm.config.context_width
    ids = [int(t) for t in rng.choice(vocab, h)]
    for _ in range(length - h):
        ctx = np.array([ids[-h:]], dtype=np.int64)
        prov = np.array([mark.provider.value], dtype=U64) if mark.provider else None
        key = wm.row_keys(ctx, np.array([mark.account.value], dtype=U64), prov)
        if wm.scheme.kind == "sample":
            probs = np.zeros((1, v))
            probs[0, vocab] = 1.0 / len(vocab)
            ids.append(int(wm.scheme.choose(probs, key, ctx, rng.random(1))[0]))
        else:
            green = wm.scheme.is_green(key, np.repeat(ctx, len(vocab), axis=0), vocab, None)[0]
            ids.append(int(rng.choice(vocab[green] if green.any() else vocab)))
    return ids


class Memoriser:
    """A suspect that learnt the fed answers by heart: it predicts each sequence's actual next token."""

    def __init__(self, sequences: list[list[int]], vocab_size: int) -> None:
        self.sequences = sequences
        self.v = vocab_size

    def __call__(self, input_ids, attention_mask=None, **kwargs):
        import torch

        b, length = input_ids.shape
        logits = torch.zeros((b, length, self.v))
        for r in range(b):
            row = input_ids[r].tolist()
            seq = next(s for s in self.sequences if row[: len(s)] == s)
            for j in range(len(seq) - 1):
                logits[r, j, seq[j + 1]] = 1.0
        return SimpleNamespace(logits=logits)


def _entry(i: int, account: str, text: str, config: WatermarkConfig) -> AuditEntry:
    return AuditEntry(
        response_id=f"r{i}",
        account_id=account,
        api_key_id="k",
        created_at=datetime(2025, 3, 1, tzinfo=UTC) + timedelta(seconds=i),
        endpoint="/v1/completions",
        client_addr=None,
        user_agent=None,
        request={"prompt": f"Question {i}:"},
        completion=[text],
        prompt_tokens=3,
        completion_tokens=60,
        finish_reason="length",
        latency_ms=1.0,
        watermark={"key_id": f"acct:{account}:v1", "provider_key_id": "provider:v1", "config": config.to_dict()},
    )


@pytest.fixture
def mixed_log(tmp_path, tokenizer):
    """An audit log: account ``alice``'s answers, the first half marked antidistill-v1, the rest gumbel."""
    vocab = np.array(word_tokens(tokenizer, WORDS), dtype=np.int64)
    v = len(tokenizer)
    mark = MarkKeys(MASTER.account_key("alice"), MASTER.provider_key())
    rng = np.random.default_rng(5)
    store = Store.open(
        f"sqlite:///{tmp_path / 'mixed.db'}", Settings(env="test", data_dir=tmp_path / "d"), master=MasterKey(bytes(32))
    )
    for i in range(12):
        config = KGW if i < 6 else GUMBEL
        ids = _marked_ids(Watermark(config), mark, vocab, v, 60, rng)
        store.append_audit(_entry(i, "alice", tokenizer.decode(ids), config))
    yield store
    store.close()


def test_records_carry_their_own_config(mixed_log):
    fed = texts_from_records(mixed_log.iter_records())
    assert [t.config for t in fed.texts] == [KGW] * 6 + [GUMBEL] * 6
    assert set(fed.all_configs()) == {KGW, GUMBEL}
    assert record_config({"key_id": "x", "config": {"gamma": 0.5}}) == WatermarkConfig(
        scheme="antidistill-v1", gamma=0.5
    )
    assert record_config({"status": "unwatermarked"}) is None
    with pytest.raises(InputError, match="cannot be read"):
        record_config({"key_id": "x", "config": {"scheme": "future-scheme"}})


def _scan(fed_texts, tokenizer, config):
    seqs = [encode_prompt(tokenizer, t.prompt, t.chat) + encode_text(tokenizer, t.response) for t in fed_texts]
    keys = ScanKeys.from_master(MASTER, ["alice", "bob", "carol"])
    return scan_open(Memoriser(seqs, len(tokenizer)), tokenizer, fed_texts, keys, config, batch_tokens=512)


def test_scan_over_a_log_of_two_schemes(mixed_log, tokenizer):
    fed = texts_from_records(mixed_log.iter_records())
    assert not any(t.chat for t in fed.texts)  # raw prompts: encoded the same way by the scan and the memoriser
    r = _scan(fed.texts, tokenizer, fed.config())
    groups = r.parameters["watermark_groups"]
    assert {g["watermark"]["scheme"] for g in groups} == {"antidistill-v1", "gumbel"}
    # each group, scored with its own scheme, carries the mark on its own
    assert all(g["p_value"] < 1e-6 for g in groups), groups
    assert r.significant and r.attributed_account == "alice" and r.controls_ok
    # the overall p-value is the best group's, corrected for the two groups (Bonferroni)
    assert r.p_value == pytest.approx(min(1.0, 2 * min(g["p_value"] for g in groups)), rel=1e-9, abs=1e-300)
    assert r.tokens_scored == sum(g["tuples"] for g in groups)

    # the Gumbel-max half read with the green-list default, as a scan without per-record configs would: no mark
    from dataclasses import replace

    gumbel_only = [replace(t, config=None) for t in fed.texts[6:]]
    wrong = _scan(gumbel_only, tokenizer, KGW)
    assert not wrong.significant
    right = _scan([replace(t, config=None) for t in fed.texts[6:]], tokenizer, GUMBEL)
    assert right.significant and right.attributed_account == "alice"


def _att(p: float) -> Attribution:
    return Attribution(0.25, 10, None, 0, [], 0, 0, None, [], [], [], p, ["provider"])


def test_combine_groups_is_bonferroni_over_groups():
    i, a = combine_groups([_att(0.3), _att(1e-4), _att(0.02)])
    assert i == 1 and a.p_value == pytest.approx(3e-4) and a.groups == 3
    i, a = combine_groups([_att(0.5)])
    assert i == 0 and a.p_value == 0.5 and a.groups == 1
    with pytest.raises(InputError):
        combine_groups([])


@pytest.mark.parametrize(
    "config",
    [
        KGW,
        WatermarkConfig(scheme="kgw-entropy", entropy_threshold=1.0),
        GUMBEL,
        WatermarkConfig(scheme="gumbel-dual"),
        WatermarkConfig(scheme="tournament"),
    ],
    ids=lambda c: c.scheme,
)
def test_open_mode_finds_every_member(tmp_path, tokenizer, config):
    # a suspect that learnt alice's answers, for each member: the open-mode scan (reading mode) finds the mark
    # and names alice; the same suspect fed unmarked answers of the same words shows nothing
    vocab = np.array(word_tokens(tokenizer, WORDS), dtype=np.int64)
    mark = MarkKeys(MASTER.account_key("alice"), MASTER.provider_key())
    rng = np.random.default_rng(11)
    wm = Watermark(config)
    marked = [_marked_ids(wm, mark, vocab, len(tokenizer), 60, rng) for _ in range(6)]
    plain = [[int(t) for t in rng.choice(vocab, 60)] for _ in range(6)]
    for seqs, expect in ((marked, True), (plain, False)):
        fed = [
            FedText(f"Question {i}:", tokenizer.decode(ids), chat=False, account="alice", config=config)
            for i, ids in enumerate(seqs)
        ]
        r = _scan(fed, tokenizer, config)
        assert r.significant is expect, (config.scheme, r.p_value)
        assert r.controls_ok
        if expect:
            assert r.attributed_account == "alice"
