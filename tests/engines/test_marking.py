"""The engine plugin's core without vLLM: batch bookkeeping (added / removed / moved rows), keys derived from the
master key by (account, version), refusals, and marks identical to the local backend's processor.

Stand-ins play vLLM's ``SamplingParams`` and ``BatchUpdate`` (same attribute names; vLLM's ``MoveDirectionality``
is an enum whose members are named UNIDIRECTIONAL and SWAP)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from antidistill.detection.detector import Detector
from antidistill.engines.marking import (
    XARG_ACCOUNT,
    XARG_KEY_VERSION,
    XARG_PROVIDER_VERSION,
    XARG_WATERMARK,
    EngineMarker,
    MarkRequest,
    SlotMarker,
    check_request,
    coin_seed,
    parse_xargs,
)
from antidistill.errors import InputError
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from antidistill.watermark.processor import WatermarkLogitsProcessor
from tests.synthetic import TEST_MASTER

VOCAB = 64


class Move(enum.Enum):  # vLLM's MoveDirectionality
    UNIDIRECTIONAL = enum.auto()
    SWAP = enum.auto()


@dataclass
class Params:  # vLLM's SamplingParams, the attributes the plugin reads
    extra_args: dict[str, Any] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class Update:  # vLLM's BatchUpdate
    batch_size: int
    removed: list[int] = field(default_factory=list)
    added: list[tuple[int, Params, list[int] | None, list[int]]] = field(default_factory=list)
    moved: list[tuple[int, int, Move]] = field(default_factory=list)


def xargs(account: str, version: int = 1, provider: int = 1, **more: Any) -> dict[str, Any]:
    return {XARG_ACCOUNT: account, XARG_KEY_VERSION: version, XARG_PROVIDER_VERSION: provider, **more}


def marker(config: WatermarkConfig | None = None, allow_unmarked: bool = False) -> EngineMarker:
    return EngineMarker(Watermark(config or WatermarkConfig(scheme="antidistill-v1")), TEST_MASTER, allow_unmarked)


def accounts(m: EngineMarker) -> list[str | None]:
    return [r.keys.account.account if r is not None and r.keys is not None else None for r in m.batch]


# ---- requests ------------------------------------------------------------------------------------------
def test_xargs_name_the_keys_and_the_engine_derives_them():
    m = marker()
    req = parse_xargs(xargs("alice", 3, 2), m.config, False)
    assert req == MarkRequest("alice", 3, 2)
    keys = m.keys(req)
    assert keys.account == TEST_MASTER.account_key("alice", 3)
    assert keys.provider == TEST_MASTER.provider_key(2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (None, "watermarks every completion"),
        ({"other": 1}, "watermarks every completion"),
        ({XARG_ACCOUNT: "alice", XARG_KEY_VERSION: 1}, XARG_PROVIDER_VERSION),
        ({XARG_ACCOUNT: "alice", XARG_PROVIDER_VERSION: 1}, XARG_KEY_VERSION),
        ({XARG_KEY_VERSION: 1, XARG_PROVIDER_VERSION: 1}, XARG_ACCOUNT),
        (xargs("alice", 0), XARG_KEY_VERSION),
        (xargs("alice", True), XARG_KEY_VERSION),
        (xargs("alice", "1"), XARG_KEY_VERSION),
        (xargs(""), XARG_ACCOUNT),
        (xargs("a\x00b"), XARG_ACCOUNT),
        (xargs("alice", antidistill_key="0x1234"), "unknown vllm_xargs: antidistill_key"),
        (xargs("alice", **{XARG_WATERMARK: "{not json"}), XARG_WATERMARK),
        (xargs("alice", **{XARG_WATERMARK: json.dumps({"gamma": 0.5})}), "but this engine marks with"),
    ],
)
def test_bad_or_missing_arguments_are_refused(args, message):
    with pytest.raises(InputError, match=message):
        parse_xargs(args, WatermarkConfig(scheme="antidistill-v1"), allow_unmarked=False)


def test_the_expected_configuration_is_accepted_when_it_is_the_engines():
    config = WatermarkConfig(scheme="gumbel", provider_fraction=0.0)
    args = xargs("alice", **{XARG_WATERMARK: json.dumps(config.to_dict())})
    assert parse_xargs(args, config, False) == MarkRequest("alice", 1, 1)


def test_unmarked_requests_only_when_allowed():
    assert parse_xargs(None, WatermarkConfig(scheme="antidistill-v1"), allow_unmarked=True) is None
    assert parse_xargs({"unrelated": 1}, WatermarkConfig(scheme="antidistill-v1"), allow_unmarked=True) is None
    with pytest.raises(InputError):  # allowing unmarked traffic does not make bad arguments acceptable
        parse_xargs({XARG_ACCOUNT: "alice"}, WatermarkConfig(scheme="antidistill-v1"), allow_unmarked=True)


def test_sampling_members_refuse_settings_that_act_after_them():
    gumbel = WatermarkConfig(scheme="gumbel", provider_fraction=0.0)
    for setting in ({"top_k": 5}, {"min_p": 0.1}, {"presence_penalty": 0.5}, {"repetition_penalty": 1.2}):
        with pytest.raises(InputError, match=next(iter(setting))):
            check_request(Params(xargs("alice"), **setting), gumbel, False)
    assert check_request(Params(xargs("alice"), top_k=-1, top_p=0.9), gumbel, False) is not None
    # greedy requests are not marked by a sampling member: nothing to refuse; bias members accept everything
    assert check_request(Params(xargs("alice"), temperature=0.0, top_k=5), gumbel, False) is not None
    assert check_request(
        Params(xargs("alice"), top_k=5, presence_penalty=1.0), WatermarkConfig(scheme="antidistill-v1"), False
    )


# ---- the batch -----------------------------------------------------------------------------------------
def test_rows_follow_added_removed_and_moved_requests():
    m = marker()
    outs = {a: [] for a in "abcd"}
    m.update(Update(3, added=[(i, Params(xargs(a)), [1, 2, 3], outs[a]) for i, a in enumerate("abc")]))
    assert accounts(m) == ["a", "b", "c"]
    m.update(None)  # no change
    assert accounts(m) == ["a", "b", "c"]
    # b finishes; vLLM condenses the batch by moving the last row into the hole
    m.update(Update(2, removed=[1], moved=[(2, 1, Move.UNIDIRECTIONAL)]))
    assert accounts(m) == ["a", "c"]
    # d joins at 2, then rows 0 and 2 are swapped
    m.update(Update(3, added=[(2, Params(xargs("d")), [5], outs["d"])], moved=[(0, 2, Move.SWAP)]))
    assert accounts(m) == ["d", "c", "a"]
    # a request added at an occupied index replaces it; a one-way move onto a row drops what was there
    m.update(Update(3, added=[(1, Params(xargs("b")), [7], outs["b"])], moved=[(0, 2, Move.UNIDIRECTIONAL)]))
    assert accounts(m) == [None, "b", "d"]
    m.update(Update(2, moved=[(2, 0, Move.UNIDIRECTIONAL)]))
    assert accounts(m) == ["d", "b"]
    # the rows keep the engine's own output lists: tokens appended there are seen at the next step
    # (a row is marked once its answer has a whole context of its own: b's has none yet)
    outs["d"].append(42)
    ctx, ready = m.contexts()
    assert ctx[0, -1] == 42 and ready.tolist() == [True, False]
    outs["b"].append(8)
    ctx, ready = m.contexts()
    assert ctx[:, -1].tolist() == [42, 8] and ready.all()


def test_rows_without_keys_or_with_too_short_a_context_are_left_alone():
    m = marker(WatermarkConfig(scheme="antidistill-v1", context_width=3), allow_unmarked=True)
    out_a: list[int] = []
    m.update(
        Update(
            3,
            added=[
                (0, Params(xargs("alice")), [9], out_a),
                (1, Params(None), [1, 2, 3], []),
                (2, Params(xargs("bob")), [4, 5, 6, 7], []),
            ],
        )
    )
    logits = torch.randn(3, VOCAB)
    out = m.apply(logits.clone())
    assert torch.equal(out[0], logits[0])  # alice: 1 token, a context needs 3
    assert torch.equal(out[1], logits[1])  # unmarked request
    # bob: 4 prompt tokens, but a context must lie in the answer (the prompt's tail is the chat template's)
    assert torch.equal(out[2], logits[2])
    out_a.extend([10, 11])
    ctx, ready = m.contexts()
    assert ready.tolist() == [False, False, False]  # alice's answer: 2 tokens
    out_a.append(12)
    ctx, ready = m.contexts()
    assert ctx[0].tolist() == [10, 11, 12] and ready.tolist() == [True, False, False]
    assert not torch.equal(m.apply(logits.clone())[0], logits[0])


@pytest.mark.parametrize("width", [1, 2])
def test_the_mark_is_the_local_backends_processor_exactly(width):
    """Same keys, same contexts: the engine's logits equal WatermarkLogitsProcessor's on the transformers path."""
    config = WatermarkConfig(scheme="antidistill-v1", context_width=width)
    m = marker(config, allow_unmarked=True)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, VOCAB, 6).tolist() for _ in range(4)]
    outs = [rng.integers(0, VOCAB, n).tolist() for n in (0, 1, 5, 3)]
    args = [xargs("alice"), None, xargs("bob", 2), xargs("carol", 1, 2)]
    m.update(Update(4, added=[(i, Params(args[i]), prompts[i], outs[i]) for i in range(4)]))
    logits = torch.randn(4, VOCAB)
    got = m.apply(logits.clone())
    keys = [
        MarkKeys(TEST_MASTER.account_key("alice"), TEST_MASTER.provider_key(1)),
        None,
        MarkKeys(TEST_MASTER.account_key("bob", 2), TEST_MASTER.provider_key(1)),
        MarkKeys(TEST_MASTER.account_key("carol"), TEST_MASTER.provider_key(2)),
    ]
    seqs = [p + o for p, o in zip(prompts, outs, strict=True)]
    for r in range(4):  # one row at a time through the transformers processor
        proc = WatermarkLogitsProcessor(Watermark(config), [keys[r]], answer_start=len(prompts[r]))
        want = proc(torch.tensor([seqs[r]]), logits[r : r + 1].clone())
        assert torch.equal(got[r], want[0])


def test_sampling_members_allow_only_the_chosen_token_and_seeds_reproduce():
    config = WatermarkConfig(scheme="gumbel-dual", context_width=1, provider_fraction=0.0)  # a fresh coin a step
    logits = torch.randn(3, VOCAB)

    def run(seed):
        m = marker(config)
        m.update(
            Update(
                3,
                added=[
                    (0, Params(xargs("alice"), temperature=0.8, seed=seed), [1, 2], [9]),
                    (1, Params(xargs("bob"), temperature=0.0), [3], [9]),  # greedy: the green-list fallback
                    (2, Params(xargs("carol"), temperature=1.0, top_p=0.5, seed=seed), [4], [9]),
                ],
            )
        )
        return m.apply(logits.clone())

    out = run(7)
    for r in (0, 2):
        assert torch.isfinite(out[r]).sum() == 1 and out[r].max() == 0.0
    bias = out[1] - logits[1]  # greedy: +delta on the fallback's green list (Watermark.greedy), nothing else
    assert torch.all((bias.abs() < 1e-5) | ((bias - 3.0).abs() < 1e-5)) and bool((bias > 1).any())
    assert torch.equal(run(7), out)  # seeded: the same choice again
    # top_p 0.5: the chosen token lies in row 2's nucleus
    probs = torch.softmax(logits[2], -1)
    order = torch.argsort(probs, descending=True)
    nucleus = order[: int((torch.cumsum(probs[order], 0) < 0.5).sum()) + 1]
    assert int(out[2].argmax()) in nucleus.tolist()
    assert coin_seed(7) != 7 and coin_seed(7) == coin_seed(7)


def test_generated_tokens_are_detected_and_attributed_to_their_own_account():
    """A toy engine loop: random logits per step, the plugin marks, the row samples; the detector attributes each
    text to its account among many."""
    config = WatermarkConfig(scheme="antidistill-v1")
    m = marker(config)
    names = ["alice", "bob", "carol"]
    outs: list[list[int]] = [[] for _ in names]
    m.update(Update(3, added=[(i, Params(xargs(a)), [i + 1], outs[i]) for i, a in enumerate(names)]))
    gen = torch.Generator().manual_seed(3)
    for _ in range(200):
        logits = m.apply(torch.randn(3, VOCAB * 8, generator=gen))
        tokens = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
        for out, t in zip(outs, tokens.tolist(), strict=True):
            out.append(t)
    det = Detector(config)
    candidates = [TEST_MASTER.account_key(a) for a in [*names, "dave", "erin"]]
    for i, a in enumerate(names):
        res = det.attribute([i + 1, *outs[i]], candidates, provider=TEST_MASTER.provider_key(1))
        assert res.account == a


def test_logits_for_another_batch_size_or_an_unknown_token_are_errors():
    m = marker()
    out: list[int] = []
    m.update(Update(1, added=[(0, Params(xargs("alice")), [1], out)]))
    with pytest.raises(RuntimeError, match="rows"):
        m.apply(torch.zeros(2, VOCAB))
    out.append(-1)  # vLLM's placeholder under async scheduling
    with pytest.raises(RuntimeError, match="async"):
        m.apply(torch.zeros(1, VOCAB))


def test_the_slot_marker_marks_as_the_row_marker_does():
    """vLLM's V2 runner: requests by slot, contexts handed over per step. The same requests in the same order
    give the same logits as the V1 bookkeeping; a recycled slot starts anew; unmarked slots cost nothing."""
    config = WatermarkConfig(scheme="gumbel", context_width=2, provider_fraction=0.0)
    rng = np.random.default_rng(9)
    seqs = [rng.integers(0, VOCAB, 5).tolist() for _ in range(3)]
    args = [xargs("alice"), xargs("bob", 2), None]
    rows = marker(config, allow_unmarked=True)
    rows.update(Update(3, added=[(i, Params(args[i]), seqs[i][:3], seqs[i][3:]) for i in range(3)]))
    slots = SlotMarker(Watermark(config), TEST_MASTER, allow_unmarked=True)
    order = np.array([7, 3, 5])  # row i of the batch is slot order[i]
    assert [slots.add(int(s), Params(a)) for s, a in zip(order, args, strict=True)] == [True, True, False]
    assert slots.marks_any(order) and not slots.marks_any(np.array([5]))
    logits = torch.randn(3, VOCAB)
    ctx = np.array([s[-2:] for s in seqs])
    got = slots.apply_slots(logits.clone(), order, ctx, np.ones(3, dtype=bool))
    assert torch.equal(got, rows.apply(logits.clone()))
    assert torch.equal(got[2], logits[2])  # the unmarked slot
    # the same contexts again: repeated, so sampled unmarked (fresh-contexts rule) ...
    again = slots.apply_slots(logits.clone(), order, ctx, np.ones(3, dtype=bool))
    assert torch.equal(again, logits)
    # ... until the slot is given to a new request, which starts with no history
    slots.add(7, Params(xargs("alice")))
    assert torch.equal(slots.apply_slots(logits.clone(), order, ctx, np.ones(3, dtype=bool))[0], got[0])
    not_ready = slots.apply_slots(logits[:1].clone(), order[:1], ctx[:1], np.zeros(1, dtype=bool))
    assert torch.equal(not_ready, logits[:1])
    with pytest.raises(RuntimeError, match="rows"):
        slots.apply_slots(logits, order[:2], ctx, np.ones(3, dtype=bool))
