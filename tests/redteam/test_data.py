"""Pairs: loading and validation, exact mixing shares, splits by prompt, and the `distill mix` command."""

from __future__ import annotations

import json

import pytest

from antidistill.errors import InputError
from antidistill.redteam.data import Pair, load_pairs, mix, save_pairs, split, watermarked_count

from .conftest import run_cli


def pairs(prefix: str, n: int) -> list[Pair]:
    return [Pair(f"{prefix} prompt {i}", f"{prefix} answer {i}", "stop") for i in range(n)]


@pytest.mark.parametrize(
    ("share", "n", "k"),
    [(1.0, 200, 200), (0.25, 200, 50), (0.05, 200, 10), (0.01, 200, 2), (0.0, 200, 0), (0.01, 300, 3), (0.07, 100, 7)],
)
def test_mix_has_exactly_the_share(share, n, k):
    wm, un = pairs("wm", 300), pairs("un", 300)
    mixed = mix(wm, un, share, n, seed=5)
    assert len(mixed) == n
    assert sum(p.watermarked for p in mixed) == k
    assert sum(p.prompt.startswith("wm") for p in mixed) == k  # the tag matches the source
    assert len({p.prompt for p in mixed}) == n  # drawn without replacement
    assert mixed == mix(wm, un, share, n, seed=5)
    if 0 < k < n:
        assert mixed != mix(wm, un, share, n, seed=6)
        # shuffled together, not k watermarked examples in a block
        positions = [i for i, p in enumerate(mixed) if p.watermarked]
        assert positions != list(range(k)) and positions != list(range(n - k, n))


def test_mix_refuses_what_it_cannot_do_exactly():
    wm, un = pairs("wm", 10), pairs("un", 10)
    with pytest.raises(ValueError, match="not a whole number"):
        mix(wm, un, 0.05, 10)
    with pytest.raises(ValueError, match="needs 8 watermarked examples, only 5"):
        mix(wm[:5], un, 0.5, 16)
    with pytest.raises(ValueError, match="needs 12 unwatermarked"):
        mix(wm, un, 0.25, 16)
    with pytest.raises(ValueError, match="share must be in"):
        watermarked_count(1.5, 10)
    with pytest.raises(ValueError, match="prompts appear in both"):
        mix(wm, wm, 0.5, 4)


def test_split_by_prompt():
    ps = [*pairs("x", 20), Pair("x prompt 3", "another answer", "stop")]
    train, held = split(ps, 0.25, seed=1)
    assert len({p.prompt for p in held}) == 5
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert len(train) + len(held) == 21
    with pytest.raises(ValueError):
        split(ps, 20)


def test_load_validates_and_tolerates_a_torn_tail(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "a", "response": "x", "finish_reason": "stop", "model": "m"},
        {"prompt": "b", "response": "", "finish_reason": "length"},
        {"prompt": "c", "response": "z", "finish_reason": None, "watermarked": True},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"prompt": "d", "resp', encoding="utf-8")
    loaded = load_pairs(path)
    assert [p.prompt for p in loaded] == ["a", "c"]  # empty answer dropped, torn line ignored
    assert loaded[0].record["model"] == "m" and loaded[1].watermarked is True
    assert len(load_pairs(path, keep_empty=True)) == 3
    out = save_pairs(loaded, tmp_path / "out.jsonl")
    assert load_pairs(out) == loaded
    path.write_text('{"prompt": "a", "response": "x"}\nnot json\n{"prompt": "b", "response": "y"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 2: not valid JSON"):
        load_pairs(path)
    path.write_text('{"prompt": "", "response": "x"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 1: 'prompt'"):
        load_pairs(path)


def test_cli_mix(tmp_path, capsys):
    wm, un = tmp_path / "wm.jsonl", tmp_path / "un.jsonl"
    save_pairs(pairs("wm", 50), wm)
    save_pairs(pairs("un", 150), un)
    out = tmp_path / "mixed.jsonl"
    code, stdout, err = run_cli(
        capsys,
        "distill",
        "mix",
        "--watermarked",
        str(wm),
        "--unwatermarked",
        str(un),
        "--share",
        "0.05",
        "--n",
        "100",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["n"], summary["watermarked"]) == (100, 5)
    mixed = load_pairs(out)
    assert sum(p.watermarked for p in mixed) == 5 and all(p.watermarked is not None for p in mixed)
    code, _, err = run_cli(
        capsys,
        "distill",
        "mix",
        "--watermarked",
        str(wm),
        "--unwatermarked",
        str(un),
        "--share",
        "0.05",
        "--n",
        "30",
        "--out",
        str(out),
    )
    assert code == 2 and "not a whole number" in err and "Traceback" not in err
