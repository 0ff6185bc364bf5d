"""Traffic simulator: seeded personas (benign customers and distillation campaigns) that drive the real gateway
through the ``openai`` SDK on a virtual clock, with ground-truth labels written beside the traffic.

Start with :class:`Scenario` (what to simulate), :func:`run_against_gateway` (or, everything in
process, :func:`antidistill.workflows.simulation.run_simulation`), and :func:`load_labels`. Personas live in
:mod:`.personas`, prompt generators in :mod:`.prompts`, the shared world (time, networks, releases, tiers) in
:mod:`.world`.

The names below are imported on first use, so that ``antidistill --help`` does not pay for the simulator.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from antidistill.simulate.runner import (
        SimulationError,
        SimulationResult,
        load_labels,
        load_scenario,
        run_against_gateway,
    )
    from antidistill.simulate.scenario import SCALES, Plan, Scenario

_EXPORTS = {
    "SimulationError": "runner",
    "SimulationResult": "runner",
    "load_labels": "runner",
    "load_scenario": "runner",
    "run_against_gateway": "runner",
    "SCALES": "scenario",
    "Plan": "scenario",
    "Scenario": "scenario",
}
__all__ = [
    "SCALES",
    "Plan",
    "Scenario",
    "SimulationError",
    "SimulationResult",
    "load_labels",
    "load_scenario",
    "run_against_gateway",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"antidistill.simulate.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
