"""The scheme family's registry: every member by name, and the shared instance for a set of parameters."""

from __future__ import annotations

from antidistill.errors import InputError
from antidistill.watermark.core import EntropyKGWScheme, HashScheme, HFLefthashScheme, Scheme
from antidistill.watermark.gumbel import DualGumbelScheme, GumbelScheme, MarkLLMExpScheme

_SCHEMES: dict[str, type[Scheme]] = {
    cls.name: cls
    for cls in (HashScheme, HFLefthashScheme, EntropyKGWScheme, GumbelScheme, DualGumbelScheme, MarkLLMExpScheme)
}


def scheme_names() -> list[str]:
    """Every member's name, the default first."""
    return list(_SCHEMES)


def scheme_class(name: str) -> type[Scheme]:
    try:
        return _SCHEMES[name]
    except KeyError:
        raise InputError(f"scheme must be one of {', '.join(_SCHEMES)}, got {name!r}") from None


_instances: dict[tuple[str, float, int, float], Scheme] = {}


def get_scheme(name: str, gamma: float, context_width: int, entropy_threshold: float = 0.0) -> Scheme:
    """The (shared, cached) scheme object for these parameters."""
    key = (name, gamma, context_width, entropy_threshold)
    inst = _instances.get(key)
    if inst is None:
        inst = _instances[key] = scheme_class(name)(gamma, context_width, entropy_threshold)
    return inst
