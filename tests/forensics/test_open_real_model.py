"""Open mode with the real embedded model (marked slow; runs in CI): the untouched teacher reading its own
watermarked answers is not accused, a model leaning to one account's green lists is caught and attributed."""

from __future__ import annotations

import pytest

from antidistill.forensics.scan import FedText, ScanKeys, scan_open
from antidistill.keys import MasterKey
from antidistill.models.local import LocalModel
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from tests.forensics.helpers import GreenBias

pytestmark = pytest.mark.slow

MASTER = MasterKey(b"forensics-real-model-test-key-01")
ACCOUNTS = ["alice", "bob", "carol"] + [f"user-{i}" for i in range(7)]
PROMPTS = [
    "Explain how a refrigerator keeps food cold.",
    "Write a story about a lighthouse keeper.",
    "Describe the water cycle step by step.",
    "Give advice for starting a vegetable garden.",
    "Describe the history of the bicycle.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def kgw_model(local_model) -> LocalModel:
    """The embedded model serving the green-list member (the suspect below leans to green lists)."""
    return LocalModel(local_model.model, local_model.tokenizer, Watermark(WatermarkConfig(scheme="antidistill-v1")))


@pytest.fixture(scope="module")
def harvested(kgw_model) -> list[FedText]:
    """Watermarked answers served to alice (two thirds) and carol."""
    accts = ["alice", "alice", "carol"] * 2
    marks = [MarkKeys(MASTER.account_key(a), MASTER.provider_key()) for a in accts]
    outs = kgw_model.generate(PROMPTS, marks, max_new_tokens=80, min_new_tokens=80, seed=5)
    return [FedText(p, o.text, True, a) for p, o, a in zip(PROMPTS, outs, accts, strict=True)]


def test_teacher_is_not_radioactive_and_a_green_leaning_model_is_attributed(kgw_model, harvested):
    local_model = kgw_model
    keys = ScanKeys.from_master(MASTER, ACCOUNTS, {"ac": ["alice", "carol"]})
    student = GreenBias(
        local_model.model, local_model.watermark, MarkKeys(MASTER.account_key("bob"), MASTER.provider_key())
    )
    # one pass of the suspect, one of the untouched teacher as the control model, on the same texts
    r = scan_open(
        student,
        local_model.tokenizer,
        harvested,
        keys,
        local_model.watermark.config,
        suspect="green-bias",
        control_models={"teacher": local_model.model},
        batch_tokens=512,
    )
    assert r.tokens_scored > 250 and r.skipped.get("window-in-prompt") == len(harvested)
    assert r.significant and r.provider.p_value < 1e-10
    assert r.attributed_account == "bob", r.accounts[:2]
    assert r.accounts[1].p_corrected > 1e-3
    # the teacher read its own watermarked answers (copying pairs it had just read) and is not accused
    (ctl,) = [c for c in r.controls if c.model == "teacher"]
    assert ctl.p_value > r.alpha and ctl.tokens_scored > 250
    assert r.controls_ok
    d = r.to_dict()
    assert d["parameters"]["exclude"] == "prefix-pairs" and d["parameters"]["budget"]["texts_fed"] == 6
