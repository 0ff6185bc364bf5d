"""The demo's checks: generating again what is too short to test, and one list of decoy accounts."""

from __future__ import annotations

from antidistill.demo.checks import DECOY_ACCOUNTS, demo_detector, regenerate_short
from tests.demo.fakes import FakeModel, fake_ring


def test_regenerate_short_keeps_the_longest_try_and_stops_when_enough():
    items, counts = ["a0", "b0", "c0"], [10, 80, 30]
    tries = []

    def redo(indices, attempt):
        tries.append((list(indices), attempt))
        return [f"{'abc'[i]}{attempt}" for i in indices]

    got = {"a1": 5, "c1": 70, "a2": 40}
    again = regenerate_short(items, counts, [64, 64, 64], redo, lambda x: got[x])
    assert again == [0, 2]
    assert tries == [([0, 2], 1), ([0], 2)]  # c was long enough after one try; b was never redone
    assert items == ["a2", "b0", "c1"] and counts == [40, 80, 70]  # a keeps its longest try, still short
    assert regenerate_short(["x"], [99], [64], redo, len) == [] and len(tries) == 2


def test_the_detector_has_every_key_of_the_accounts_and_of_the_decoys():
    ring = fake_ring()
    td = demo_detector(FakeModel(), ring, ["alice"])
    ids = {k.key_id for k in td.candidates}
    assert {k.key_id for k in ring.account_keys("alice")} <= ids
    assert {ring.account_key(a).key_id for a in DECOY_ACCOUNTS} <= ids
    assert len(DECOY_ACCOUNTS) == len(set(DECOY_ACCOUNTS)) == 8
