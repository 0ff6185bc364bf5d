"""The scheme family's registry: every member by name, and the shared instance for a set of parameters."""

from __future__ import annotations

from antidistill.errors import InputError
from antidistill.watermark.core import EntropyKGWScheme, HashScheme, HFLefthashScheme, Scheme
from antidistill.watermark.gumbel import DualGumbelScheme, GumbelScheme, MarkLLMExpScheme
from antidistill.watermark.tournament import TournamentScheme
from antidistill.watermark.vllm_native import VLLMDualGumbelScheme, VLLMGumbelScheme

_SCHEMES: dict[str, type[Scheme]] = {
    cls.name: cls
    for cls in (
        HashScheme,
        HFLefthashScheme,
        EntropyKGWScheme,
        GumbelScheme,
        DualGumbelScheme,
        TournamentScheme,
        MarkLLMExpScheme,
        VLLMGumbelScheme,
        VLLMDualGumbelScheme,
    )
}


def scheme_names() -> list[str]:
    """Every member's name, the default first."""
    return list(_SCHEMES)


def scheme_class(name: str) -> type[Scheme]:
    try:
        return _SCHEMES[name]
    except KeyError:
        raise InputError(f"scheme must be one of {', '.join(_SCHEMES)}, got {name!r}") from None


_instances: dict[tuple[str, float, int, float, int | None, float | None], Scheme] = {}


def get_scheme(
    name: str,
    gamma: float,
    context_width: int,
    entropy_threshold: float = 0.0,
    layers: int | None = None,
    key_b_probability: float | None = None,
) -> Scheme:
    """The (shared, cached) scheme object for these parameters (``layers``: the tournament's rounds;
    ``key_b_probability``: ``vllm-dual-gumbel``'s share of steps under key B)."""
    key = (name, gamma, context_width, entropy_threshold, layers, key_b_probability)
    inst = _instances.get(key)
    if inst is None:
        cls = scheme_class(name)
        if layers is not None:
            inst = TournamentScheme(gamma, context_width, entropy_threshold, layers)
        elif cls is VLLMDualGumbelScheme and key_b_probability is not None:
            inst = VLLMDualGumbelScheme(gamma, context_width, entropy_threshold, key_b_probability)
        else:
            inst = cls(gamma, context_width, entropy_threshold)
        _instances[key] = inst
    return inst
