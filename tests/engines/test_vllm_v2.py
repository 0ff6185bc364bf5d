"""The plugin under vLLM's V2 model runner (skipped unless ``make vllm`` made ``.venv-vllm``).

The V2 runner is vLLM's default wherever Triton runs (GPUs); vLLM's CPU build cannot start it ("Model Runner V2
requires Triton"), so no engine here runs it. What can be checked here is checked with vLLM's own code, in
``.venv-vllm``: its V2 loader accepts the plugin by name and by entry point (it rejects every V1-only processor,
which would stop a GPU engine at start), its V1 loader still does, and the class driven through V2's interface
(``add_request`` per slot, ``apply(logits, LogitsContext)``, the request state as V2's ``LogitsProcRequestState``
with the token history in a slot x position tensor) marks each row exactly as the local backend's processor marks
the same context with the same keys; chunked-prefill rows, rows whose context would reach before the sequence,
unmarked slots and a recycled slot are handled.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .conftest import FQCN, MASTER_HEX, VLLM_PYTHON

pytestmark = pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no .venv-vllm (make vllm)")

SCRIPT = r"""
import json, sys
from types import SimpleNamespace as NS

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns, _load_logitsprocs_plugins
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState
from vllm.v1.worker.gpu.sample.logits_processor import loader as v2_loader

from antidistill.engines.xargs import engine_xargs
from antidistill.keys import MasterKey
from antidistill.settings import get_settings
from antidistill.watermark.marker import MarkKeys, Watermark
from antidistill.watermark.processor import WatermarkLogitsProcessor

FQCN = sys.argv[1]
out = {}
(v2,) = v2_loader._load_v2_logitsprocs_by_fqcns([FQCN])
out["v2_by_name"] = v2.__name__
out["v2_entry_points"] = [c.__name__ for c in v2_loader._load_v2_logitsprocs_plugins()]
out["v1_by_name"] = [c.__name__ for c in _load_logitsprocs_by_fqcns([FQCN])]
out["v1_entry_points"] = [c.__name__ for c in _load_logitsprocs_plugins()]

import os

alive = []  # the engine's config objects: the plugin counts its copies per config object (by id)

def check(watermark):
    os.environ.update(watermark)
    get_settings.cache_clear()
    out = {}
    settings = get_settings()
    config = settings.watermark_config()
    h, V, SLOTS, LEN = config.context_width, 512, 8, 64
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (SLOTS, LEN), generator=g, dtype=torch.int32)
    prefill = np.zeros(SLOTS, dtype=np.int32)
    prompt = np.zeros(SLOTS, dtype=np.int32)
    states = LogitsProcRequestState(
        device=torch.device("cpu"), max_num_reqs=SLOTS, vocab_size=V,
        all_token_ids=NS(gpu=tokens), prompt_len=NS(np=prompt), prefill_len=NS(np=prefill),
        total_len=NS(gpu=torch.zeros(SLOTS, dtype=torch.int32)),
    )
    vllm_config = NS(model_config=NS(logits_processors=[FQCN]), scheduler_config=NS(async_scheduling=True))
    alive.append(vllm_config)
    proc = v2(vllm_config, states)
    assert proc.active, "the only instance must mark"

    def params(account=None, **kw):
        return SamplingParams(temperature=1.0, extra_args=engine_xargs(account, 1, 1) if account else None, **kw)

    marked = {5: "alice", 2: "bob", 6: "carol", 7: "erin"}
    for slot, acct in marked.items():
        out.setdefault("added", []).append(proc.add_request(slot, params(acct)))
    prefill[[5, 2, 6, 7]] = prompt[[5, 2, 6, 7]] = [10, 20, 30, 16]
    # a step: slot 5 decodes at position 40, slot 2 is in chunked prefill (position 12 < 20), slot 6 decodes at
    # position 1 (its context would reach before the sequence), slot 7's answer has h - 1 tokens (its context
    # would hold a prompt token: left unmarked)
    rows = np.array([5, 2, 6, 7])
    pos = torch.tensor([40, 12, 1, 16 + h - 2])
    input_ids = tokens[torch.tensor(rows), pos].clone()
    ctx = LogitsContext(
        expanded_idx_mapping=torch.tensor(rows), idx_mapping=torch.tensor(rows), idx_mapping_np=rows,
        expanded_local_pos=torch.zeros(4, dtype=torch.int64), input_ids=input_ids, pos=pos,
        seq_lens_upper_bound_np=(pos + 1).numpy(),
    )
    logits = torch.randn(4, V, generator=g)
    got = proc.apply(logits.clone(), ctx)

    master = MasterKey.load(settings, create=False)
    wm = Watermark(config)
    ref = WatermarkLogitsProcessor(wm, [MarkKeys(master.account_key("alice", 1), master.provider_key(1))])
    ref.set_row_sampling([1.0], [1.0], [None])
    context = tokens[5, 40 - h + 1 : 41].numpy()[None, :].astype(np.int64)
    want = ref.mark(context, logits[:1].clone())
    out["row0_equal"] = bool(torch.equal(got[:1], want))
    out["row0_changed"] = not bool(torch.equal(got[0], logits[0]))
    out["prefill_row_untouched"] = bool(torch.equal(got[1], logits[1]))
    out["short_row_untouched"] = (h == 1) or bool(torch.equal(got[2], logits[2]))
    out["young_answer_untouched"] = bool(torch.equal(got[3], logits[3]))

    # the slot of alice is recycled by an unmarked request (allowed only when the engine allows unmarked traffic)
    try:
        proc.add_request(5, params(None))
        out["unmarked_refused"] = False
    except Exception as exc:
        out["unmarked_refused"] = "antidistill" in str(exc)
    # ... and by dave: the same step now marks with dave's keys
    proc.add_request(5, params("dave"))
    ref_d = WatermarkLogitsProcessor(wm, [MarkKeys(master.account_key("dave", 1), master.provider_key(1))])
    ref_d.set_row_sampling([1.0], [1.0], [None])
    got_d = proc.apply(logits.clone(), ctx)
    out["recycled_slot_equal"] = bool(torch.equal(got_d[:1], ref_d.mark(context, logits[:1].clone())))
    out["recycled_differs"] = not bool(torch.equal(got_d[:1], got[:1]))
    for k in watermark:
        del os.environ[k]
    return out

for watermark in json.loads(sys.argv[2]):
    out.setdefault("configs", []).append(check(watermark))
print(json.dumps(out))
"""


#: the green-list member at h = 1 (the input token alone) and at h = 3 (read from the token history), and a sampling
#: member (one allowed token, fresh-context record). The default, gumbel-dual, draws a fresh coin at every step, so a
#: second processor cannot replay its row: its engine path is the one gumbel takes (tests/engines/test_vllm_*.py
#: serve it end to end)
GREEN = {"ANTIDISTILL_WATERMARK_SCHEME": "antidistill-v1"}
WATERMARKS = [GREEN, {**GREEN, "ANTIDISTILL_WATERMARK_CONTEXT_WIDTH": "3"}, {"ANTIDISTILL_WATERMARK_SCHEME": "gumbel"}]


def test_the_plugin_runs_under_the_v2_model_runner_interface(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTIDISTILL_", "VLLM_"))}
    env.update(ANTIDISTILL_MASTER_KEY=MASTER_HEX, ANTIDISTILL_DATA_DIR=str(tmp_path), ANTIDISTILL_ENV="test")
    r = subprocess.run(
        [str(VLLM_PYTHON), "-c", SCRIPT, FQCN, json.dumps(WATERMARKS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    name = "AntidistillLogitsProcessor"
    assert out["v2_by_name"] == name and name in out["v2_entry_points"]
    assert out["v1_by_name"] == [name] and name in out["v1_entry_points"]
    assert len(out["configs"]) == len(WATERMARKS)
    for watermark, got in zip(WATERMARKS, out["configs"], strict=True):
        assert got["added"] == [True] * 4, watermark
        assert got["row0_equal"] and got["row0_changed"], watermark
        assert got["prefill_row_untouched"] and got["short_row_untouched"], watermark
        assert got["young_answer_untouched"], watermark
        assert got["unmarked_refused"], watermark
        assert got["recycled_slot_equal"] and got["recycled_differs"], watermark
