"""Prompt/response pairs: loading and validating harvest files, mixing sources at an exact share, splitting.

The radioactivity question is "would a scan notice if x % of a student's training data came from us?". To
answer it the training set must contain *exactly* that share of watermarked examples, not about that share:
:func:`mix` draws ``round(share * n)`` watermarked and ``n - round(share * n)`` unwatermarked examples (and
refuses a share that ``n`` cannot represent exactly), each without replacement, and shuffles them together.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from antidistill.errors import InputError


@dataclass(frozen=True)
class Pair:
    """One training example: a user prompt and the teacher's answer.

    Args:
        prompt: the user message.
        response: the teacher's answer.
        finish_reason: ``"stop"`` (the answer ended; the student learns to end it too), ``"length"`` (cut off at
            ``max_tokens``) or ``None`` (unknown, treated as cut off).
        watermarked: whether it comes from the watermarked source (set by :func:`mix`; ``None``: unknown).
        record: the full JSONL record it was read from (model, response id, usage, ...).

    Example:
        >>> Pair("Hi", "Hello!", "stop").to_record()["response"]
        'Hello!'
    """

    prompt: str
    response: str
    finish_reason: str | None = None
    watermarked: bool | None = None
    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_record(self) -> dict[str, Any]:
        rec = dict(self.record)
        rec.update(prompt=self.prompt, response=self.response, finish_reason=self.finish_reason)
        if self.watermarked is not None:
            rec["watermarked"] = self.watermarked
        return rec


def pair_from_record(rec: Any, where: str = "record") -> Pair:
    """A :class:`Pair` from one JSONL object, checking the fields it needs."""
    if not isinstance(rec, dict):
        raise InputError(f"{where}: expected a JSON object")
    prompt, response = rec.get("prompt"), rec.get("response")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{where}: 'prompt' must be a non-empty string")
    if not isinstance(response, str):
        raise InputError(f"{where}: 'response' must be a string")
    finish = rec.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise InputError(f"{where}: 'finish_reason' must be a string or null")
    wm = rec.get("watermarked")
    if wm is not None and not isinstance(wm, bool):
        raise InputError(f"{where}: 'watermarked' must be true, false or null")
    return Pair(prompt, response, finish, wm, rec)


def load_pairs(path: str | os.PathLike, *, keep_empty: bool = False) -> list[Pair]:
    """The pairs of a JSONL file (harvest output or :func:`save_pairs` output).

    Empty responses are dropped unless ``keep_empty``: they teach a student nothing. A last line without its
    newline (an interrupted writer) is ignored; any other malformed line is an error naming the line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {p}: {type(exc).__name__}: {exc}") from None
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # tail: after the last newline ("" for a complete file)
    pairs = []
    for i, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise InputError(f"{p} line {i}: not valid JSON") from None
        pair = pair_from_record(rec, f"{p} line {i}")
        if keep_empty or pair.response.strip():
            pairs.append(pair)
    if tail.strip():
        try:
            json.loads(tail)
        except ValueError:
            pass  # a line cut short by an interrupted writer
        else:
            pair = pair_from_record(json.loads(tail), f"{p} line {len(lines)}")
            if keep_empty or pair.response.strip():
                pairs.append(pair)
    if not pairs:
        raise InputError(f"{p} contains no prompt/response pairs")
    return pairs


def save_pairs(pairs: Iterable[Pair], path: str | os.PathLike) -> Path:
    """Write pairs as JSONL (atomically: a temporary file renamed into place)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.to_record(), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    return p


def watermarked_count(share: float, n: int) -> int:
    """How many of ``n`` examples are watermarked at ``share``; the product must be a whole number.

    Example:
        >>> watermarked_count(0.05, 300)
        15
        >>> watermarked_count(0.05, 30)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        InputError: share 0.05 of n=30 is 1.5 examples, not a whole number
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0 or share != share:
        raise InputError(f"share must be in [0, 1], got {share}")
    exact = share * n
    k = round(exact)
    if not math.isclose(exact, k, rel_tol=0.0, abs_tol=1e-6):
        raise InputError(
            f"share {share} of n={n} is {exact:g} examples, not a whole number; choose n so that share * n is one"
        )
    return k


def mix(watermarked: Sequence[Pair], unwatermarked: Sequence[Pair], share: float, n: int, seed: int = 0) -> list[Pair]:
    """A training set of ``n`` pairs of which exactly ``share`` come from ``watermarked``.

    Examples are drawn without replacement from each source (seeded), tagged ``watermarked=True/False`` and
    shuffled together. Prompts that appear in both sources are refused: the two halves of the experiment
    must not share prompts, or the control would not be one.

    Example:
        >>> wm = [Pair(f"w{i}", "a") for i in range(10)]
        >>> un = [Pair(f"u{i}", "b") for i in range(10)]
        >>> sum(p.watermarked for p in mix(wm, un, 0.25, 8, seed=1))
        2
    """
    k = watermarked_count(share, n)
    if k > len(watermarked):
        raise InputError(f"share {share} of n={n} needs {k} watermarked examples, only {len(watermarked)} given")
    if n - k > len(unwatermarked):
        raise InputError(
            f"share {share} of n={n} needs {n - k} unwatermarked examples, only {len(unwatermarked)} given"
        )
    overlap = {p.prompt for p in watermarked} & {p.prompt for p in unwatermarked}
    if overlap:
        raise InputError(f"{len(overlap)} prompts appear in both sources, e.g. {next(iter(overlap))[:60]!r}")
    rng = random.Random(seed)
    chosen = [replace(p, watermarked=True) for p in rng.sample(list(watermarked), k)]
    chosen += [replace(p, watermarked=False) for p in rng.sample(list(unwatermarked), n - k)]
    rng.shuffle(chosen)
    return chosen


def split(pairs: Sequence[Pair], heldout: float | int, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """``(train, held_out)``: a seeded split by prompt (all answers to one prompt land on the same side).

    Args:
        pairs: the pairs.
        heldout: a fraction in (0, 1) of the distinct prompts, or a number of distinct prompts.
        seed: the shuffle seed.

    Example:
        >>> train, held = split([Pair(f"p{i}", "r") for i in range(10)], 0.2)
        >>> len(train), len(held), {p.prompt for p in train} & {p.prompt for p in held}
        (8, 2, set())
    """
    prompts = list(dict.fromkeys(p.prompt for p in pairs))
    if isinstance(heldout, float) and not isinstance(heldout, bool):
        if not 0.0 < heldout < 1.0:
            raise InputError(f"heldout fraction must be in (0, 1), got {heldout}")
        m = max(1, round(heldout * len(prompts)))
    elif isinstance(heldout, int) and not isinstance(heldout, bool):
        m = heldout
    else:
        raise InputError(f"heldout must be a fraction or a count, got {heldout!r}")
    if not 0 < m < len(prompts):
        raise InputError(f"cannot hold out {m} of {len(prompts)} distinct prompts")
    random.Random(seed).shuffle(prompts)
    held = set(prompts[:m])
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]
