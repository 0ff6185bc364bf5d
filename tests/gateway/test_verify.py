"""The sample check's parts without a gateway: the alarm's rule, what is skipped and counted, a missing tokenizer."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from antidistill.gateway.verify import MarkAlarm, MarkVerifier, Sample, TooShort, VerifyMetrics
from antidistill.models.base import Choice, GenerationResult
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from tests.synthetic import TEST_MASTER, sample, uniform_tokens

VOCAB = 500
CONFIG = WatermarkConfig(scheme="antidistill-v1")
KEYS = MarkKeys(TEST_MASTER.account_key("alice"), TEST_MASTER.provider_key(1))


class Vocab:
    """The vocabulary size, and a tokenizer that finds no tokens in any text."""

    def __len__(self) -> int:
        return VOCAB

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": []}


def _verifier(**kwargs) -> tuple[MarkVerifier, CollectorRegistry]:
    registry = CollectorRegistry()
    return MarkVerifier(VerifyMetrics(registry), Vocab, **kwargs), registry


def _sample(ids: list[int]) -> Sample:
    return Sample("r1", 0, KEYS, CONFIG.to_dict(), "", ids)


def _metric(registry: CollectorRegistry, line: str) -> bool:
    return line in generate_latest(registry).decode()


@pytest.mark.parametrize(
    ("misses", "outcomes", "expected", "active"),
    [
        (1, [False, False, True, False], ["raised", None, "cleared", "raised"], True),
        (3, [False, False, True, False, False, False, False], [None, None, None, None, None, "raised", None], True),
        (2, [True, True, False, True, False, False, True], [None, None, None, None, None, "raised", "cleared"], False),
    ],
)
def test_the_alarm_needs_misses_in_a_row_and_a_detection_clears_it(misses, outcomes, expected, active):
    alarm = MarkAlarm(misses)
    assert [alarm.record(d) for d in outcomes] == expected
    assert alarm.active is active


@pytest.mark.parametrize("misses", [0, -1, True, 1.5])
def test_the_alarm_refuses_a_run_that_is_no_positive_integer(misses):
    with pytest.raises(ValueError, match="misses must be an integer >= 1"):
        MarkAlarm(misses)


def test_a_marked_sample_is_detected_an_unmarked_one_missed_a_short_one_refused():
    v, _ = _verifier()
    rng = np.random.default_rng(3)
    marked = sample(rng, Watermark(CONFIG), KEYS.account, KEYS.provider, 80, VOCAB)[0].tolist()
    r = v.check(_sample(marked))
    assert r.detected and r.p_value < 1e-6 and r.key_id == "acct:alice:v1+provider:v1" and r.pairs > 60
    assert not v.check(_sample(uniform_tokens(rng, 80, VOCAB).tolist())).detected
    with pytest.raises(TooShort):
        v.check(_sample([1, 2] * 40))  # 80 tokens, 2 distinct pairs


def test_a_full_queue_and_a_short_text_are_skipped_and_counted_never_waited_for():
    v, registry = _verifier(every=1, min_tokens=16, queue_size=1)  # not started: the queue stays full
    long = GenerationResult([Choice(0, "x", "length", 20), Choice(1, "y", "length", 20)], 5, {}, "m")
    long.watermark = {"key_id": KEYS.account.key_id, "config": CONFIG.to_dict()}
    assert v.offer("r1", long, KEYS) == 1
    assert _metric(registry, 'antidistill_engine_mark_skipped_total{reason="queue_full"} 1.0')
    assert v.offer("r2", long, None) == 0  # a request that was not marked: nothing to check
    unmarked = GenerationResult(long.choices, 5, {"status": "unwatermarked"}, "m")
    assert v.offer("r3", unmarked, KEYS) == 0
    v.start()
    assert v.wait_idle()
    assert _metric(registry, 'antidistill_engine_mark_skipped_total{reason="too_short"} 1.0')  # "x": no pairs
    v.stop()


def test_a_tokenizer_that_does_not_load_is_logged_once_and_counted(caplog):
    def broken():
        raise OSError("no such model")

    registry = CollectorRegistry()
    v = MarkVerifier(VerifyMetrics(registry), broken, every=1, min_tokens=1, engine="the vllm engine at http://e")
    result = GenerationResult([Choice(0, "some words", "stop", 30)], 5, {}, "m")
    result.watermark = {"key_id": KEYS.account.key_id, "config": CONFIG.to_dict()}
    v.start()
    caplog.set_level(logging.WARNING, logger="antidistill.gateway.verify")
    for i in range(3):
        v.offer(f"r{i}", result, KEYS)
    assert v.wait_idle()
    v.stop()
    assert [r.getMessage() for r in caplog.records].count(
        "the mark check of the vllm engine at http://e cannot run: the served model's tokenizer did not load "
        "(no such model); set ANTIDISTILL_MODEL to the model the engine serves"
    ) == 1
    assert len(caplog.records) == 1
    assert _metric(registry, 'antidistill_engine_mark_skipped_total{reason="error"} 3.0')
