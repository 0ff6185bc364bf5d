"""A persona file: a small YAML file in which a user describes the traffic to evaluate the monitor on.

Each entry names a persona kind (``antidistill simulate personas`` lists them), how many of it, and parameter
values to use instead of drawn ones (the fields of the kind's ``Params`` dataclass in
:mod:`antidistill.simulate.personas`); a scale's population can sit underneath (``base``). The file becomes a
:class:`~antidistill.simulate.scenario.Scenario`, so ``antidistill simulate plan|run|eval --personas FILE`` treat
it as they treat a scale. An example is ``docs/examples/personas.yaml``::

    seed: 1030            # held-out seeds (>= 1028) are never used to train or calibrate the monitor
    days: 2
    base: none            # none, small, default or large: that scale's population under yours
    perturb: false        # perturb the attackers' max_tokens, wording and timing
    personas:
      - kind: agent_loop
        count: 2
        params: {per_day: 120, max_tokens: 700}
      - kind: casual
        count: 50

Every problem is reported as one :class:`~antidistill.errors.InputError` line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from antidistill.errors import InputError
from antidistill.simulate.personas import PERSONAS
from antidistill.simulate.scenario import SCALES, Plan, Scenario
from antidistill.simulate.world import Draw, World

#: the seed a persona file gets when it names none: the first of the held-out seeds
DEFAULT_SEED = 1028
_TOP = {
    "seed",
    "days",
    "split",
    "base",
    "volume",
    "perturb",
    "hydra_members",
    "hydra_daily_budget",
    "personas",
}
_ENTRY = {"kind", "count", "params"}


def load_persona_file(path: str | Path) -> Scenario:
    """The scenario a persona file describes.

    Raises:
        InputError: the file is missing, not YAML, or any field is wrong (one line, naming the field).
    """
    import yaml  # PyYAML: only persona files need it here

    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"persona file {p} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read persona file {p}: {exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed"
        raise InputError(f"{p}: not valid YAML{where}: {problem}") from None
    try:
        return scenario_from_dict(doc)
    except InputError as exc:
        raise InputError(f"{p}: {exc}") from None


def scenario_from_dict(doc: Any) -> Scenario:
    """The scenario of a parsed persona file (see the module docstring for the fields)."""
    if not isinstance(doc, Mapping):
        raise InputError("a persona file is a mapping with a 'personas' list")
    unknown = sorted(set(map(str, doc)) - _TOP)
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP))})")
    seed = doc.get("seed", DEFAULT_SEED)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    base_name = doc.get("base", "none")
    if base_name != "none" and base_name not in SCALES:
        raise InputError(f"base must be none or one of {', '.join(SCALES)}, got {base_name!r}")
    base = SCALES.get(base_name) if base_name != "none" else None
    days = doc.get("days", base.days if base else 1.0)
    if isinstance(days, bool) or not isinstance(days, int | float):
        raise InputError(f"days must be a number, got {days!r}")
    perturb = doc.get("perturb", False)
    if not isinstance(perturb, bool):
        raise InputError(f"perturb must be true or false, got {perturb!r}")
    entries = doc.get("personas")
    if not isinstance(entries, list) or not entries:
        raise InputError("personas must be a non-empty list of {kind, count, params} entries")
    counts: dict[str, int] = dict(base.counts) if base else {}
    overrides = _entries(entries, counts)
    hydra = doc.get("hydra_members", base.hydra_members if base else (20, 500))
    if not (
        isinstance(hydra, list | tuple)
        and len(hydra) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in hydra)
    ):
        raise InputError(f"hydra_members must be two integers [lo, hi], got {hydra!r}")
    budget = doc.get("hydra_daily_budget", base.hydra_daily_budget if base else 1200.0)
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0):
        raise InputError(f"hydra_daily_budget must be a positive number or null, got {budget!r}")
    return Scenario(
        seed=seed,
        days=float(days),
        counts=counts,
        split=doc.get("split", "heldout"),
        scale=None,
        hydra_members=(int(hydra[0]), int(hydra[1])),
        hydra_daily_budget=None if budget is None else float(budget),
        volume=doc.get("volume", base.volume if base else 1.0),
        persona_volume=dict(base.persona_volume) if base else {},
        overrides=overrides,
        perturb=perturb,
    )


def _entries(entries: list[Any], counts: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Check the ``personas`` entries; set their counts in ``counts``; return their parameter overrides."""
    overrides: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"personas[{i}]"
        if not isinstance(entry, Mapping):
            raise InputError(f"{where} must be a mapping with kind, count and params")
        extra = sorted(set(map(str, entry)) - _ENTRY)
        if extra:
            raise InputError(f"{where}: unknown field(s) {', '.join(extra)} (known: count, kind, params)")
        kind = entry.get("kind")
        if kind not in PERSONAS:
            raise InputError(f"{where}.kind: unknown persona {kind!r} (known: {', '.join(PERSONAS)})")
        if kind in seen:
            raise InputError(f"{where}.kind: {kind} is listed twice; one entry per kind (its count says how many)")
        seen.add(kind)
        count = entry.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 10_000:
            raise InputError(f"{where}.count must be an integer in [0, 10000], got {count!r}")
        counts[kind] = count  # in place of the base's count of this kind
        params = entry.get("params") or {}
        if not isinstance(params, Mapping):
            raise InputError(f"{where}.params must be a mapping of parameter names to values")
        if params:
            overrides[kind] = check_params(kind, params, f"{where}.params")
    return overrides


def build_plan(scenario: Scenario) -> Plan:
    """``scenario.build()``, with a parameter value the persona cannot use (a profile it does not know, a template
    without its fields) reported as one :class:`InputError` line instead of a traceback."""
    try:
        return scenario.build()
    except InputError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise InputError(f"a persona parameter value cannot be used: {type(exc).__name__}: {exc}") from None


def param_types(kind: str) -> dict[str, str]:
    """The kind's parameter names and their declared types (as written in its ``Params`` dataclass)."""
    cls = PERSONAS[kind]
    # the Params dataclass is what draw returns: draw once in a throwaway world to find it
    sample = cls.draw(Draw(random.Random(0), "train"), World(0, "train", 0.0, 1.0))
    return {f.name: str(f.type) for f in dataclasses.fields(sample)}


def check_params(kind: str, params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``params`` checked against the kind's parameter types; lists become tuples where a tuple is declared."""
    types = param_types(kind)
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name not in types:
            raise InputError(f"{where}: {kind} has no parameter {name!r} (its parameters: {', '.join(types)})")
        out[str(name)] = _coerce(value, types[name], f"{where}.{name}")
    return out


def _coerce(value: Any, declared: str, where: str) -> Any:
    options = [t.strip() for t in declared.split("|")]
    if value is None:
        if "None" in options:
            return None
        raise InputError(f"{where} must be a {declared}, got null")
    for t in options:
        if t == "bool" and isinstance(value, bool):
            return value
        if t == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t == "float" and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if t == "str" and isinstance(value, str):
            return value
        if t.startswith("tuple[str") and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    raise InputError(f"{where} must be a {declared}, got {value!r}")
