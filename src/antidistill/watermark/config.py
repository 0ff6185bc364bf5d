"""Watermark parameters: one frozen, validated object that every result and report carries.

Defaults and why
----------------
* ``gamma = 0.25``: a quarter of the vocabulary is green in each context (Kirchenbauer et al. 2023,
  https://arxiv.org/abs/2301.10226, found 0.25 a good balance of detectability and quality).
* ``delta = 3.0``: the logit bias on green tokens. Small instruct models answer with low entropy, so many
  steps are nearly deterministic and a bias cannot move them; with the embedded SmolLM2-135M at temperature
  0.7, delta = 2 raised the green fraction of 120-token answers only to 0.52 (gamma 0.25) and left several
  undetectable at alpha 1e-3, while delta = 3 raised it to 0.70 with text of the same fluency. A stronger
  mark is also what a distilled student inherits, which forensics needs.
* ``context_width = 1`` (green-list members): the green list depends on the previous token alone. A small
  context is what makes the mark survive distillation: a student learns the bias of frequent (context, token)
  pairs, and with h = 1 every occurrence of a token re-teaches the same green list (Sander et al. 2024, https://arxiv.org/abs/2402.14904,
  and Pan et al. 2025, https://arxiv.org/abs/2502.11598: h = 1-2 strongly radioactive, h = 3 barely). It is also
  the most robust to edits (one substituted token spoils at most two scored pairs). Its known cost is that
  green lists are easier to estimate from many outputs; per-account keys and key rotation bound what such an
  estimate is worth.
* ``provider_fraction = 0.5``: half of the contexts are marked with the provider-wide key, half with the
  account key (see :mod:`antidistill.keys`).
* The sampling members (``gumbel``, ``gumbel-dual``, ``tournament``) default to ``context_width = 3``: they mask
  repeated contexts, and a wider context leaves more positions fresh (TPR at 200 tokens 88-91% at h = 3 against
  59-69% at h = 1, same quality).
* The default member is ``gumbel-dual`` at h = 3 (the green-list parameters above apply to the green-list members
  and to the greedy fallback of temperature-0 requests). The rule that chose it: a provider must not degrade
  answers, so perplexity, diversity, loops and task score come first, then detection, then radioactivity. The
  green list at delta 3 costs perplexity x1.4-1.75 and the task score; gumbel-dual leaves perplexity, loops and the
  task score at the unmarked level and binds only on diversity across repeated samples of one prompt and on
  TPR at 200 tokens. The table behind it: ``docs/watermark-schemes.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from antidistill.errors import InputError
from antidistill.watermark.schemes import scheme_class, scheme_names
from antidistill.watermark.tournament import DEFAULT_LAYERS, MAX_LAYERS
from antidistill.watermark.vllm_native import DEFAULT_KEY_B_PROBABILITY

#: the widest context of the native members (read-only interoperability members may accept wider ones:
#: ``Scheme.max_context_width``)
MAX_CONTEXT_WIDTH = 4
#: the member a configuration that names none gets (see "Defaults and why" above; records keep the member that
#: marked them, so a change of default leaves older completions detectable with their own)
DEFAULT_SCHEME = "gumbel-dual"


@dataclass(frozen=True)
class WatermarkConfig:
    """Parameters of a watermark: the member of the scheme family and its parameters.

    Args:
        scheme: the member: ``"antidistill-v1"`` (KGW green lists by a fast keyed hash), ``"kgw-entropy"`` (the same
            lists, applied only at steps whose entropy reaches ``entropy_threshold``), ``"gumbel"`` (Gumbel-max
            sampling: no change to the text's distribution), ``"gumbel-dual"`` (Gumbel-max under one of two keys
            per step: repeated prompts keep their diversity), ``"tournament"`` (SynthID-style tournament sampling,
            distortion-free and as random as plain sampling); for interoperability ``"hf-lefthash"``
            (transformers' ``WatermarkLogitsProcessor`` lists) and ``"markllm-exp"`` (MarkLLM's EXP); read-only,
            to detect vLLM's native marks, ``"vllm-gumbel"`` and ``"vllm-dual-gumbel"`` (the key is vLLM's integer
            key).
        gamma: fraction of the vocabulary that is green, in (0, 1) (green-list members only).
        delta: logit bias added to green tokens, >= 0 (green-list members only).
        context_width: number of preceding tokens that seed the keyed randomness, 1-4 (1-16 for the vLLM members;
            when not given: 3 for the native sampling members, 4 for the vLLM members, 1 for the others).
        provider_fraction: share of contexts marked with the provider key instead of the account key, in [0, 1).
            0 gives a plain single-key watermark (what other implementations expect).
        entropy_threshold: ``kgw-entropy`` only: the entropy (nats, of the raw next-token distribution) below
            which a step is left unmarked.
        layers: ``tournament`` only: the number of rounds (1-32; 16 when not given).
        key_b_probability: ``vllm-dual-gumbel`` only: vLLM's ``alpha``, the share of steps drawn under key B, in
            [0, 1] (0.1, vLLM's default, when not given). vLLM's detector weighs the two keys' scores by it.

    Example:
        >>> WatermarkConfig(gamma=0.5).to_dict()["gamma"]
        0.5
        >>> WatermarkConfig.from_dict({"gamma": 0.5}) == WatermarkConfig(gamma=0.5)
        True
    """

    scheme: str = DEFAULT_SCHEME
    gamma: float = 0.25
    delta: float = 3.0
    # None: the member's own default (Scheme.default_context_width), set by __post_init__, so it is an int after it
    context_width: int = None  # type: ignore[assignment]
    provider_fraction: float = 0.5
    entropy_threshold: float = 0.0
    layers: int | None = None
    key_b_probability: float | None = None

    def __post_init__(self) -> None:

        if self.scheme not in scheme_names():
            raise InputError(f"scheme must be one of {', '.join(scheme_names())}, got {self.scheme!r}")
        if self.context_width is None:
            object.__setattr__(self, "context_width", scheme_class(self.scheme).default_context_width)
        if not isinstance(self.gamma, (int, float)) or not 0.0 < self.gamma < 1.0:
            raise InputError(f"gamma must be in (0, 1), got {self.gamma}")
        if not isinstance(self.delta, (int, float)) or not 0.0 <= self.delta <= 100.0 or self.delta != self.delta:
            raise InputError(f"delta must be in [0, 100], got {self.delta}")
        if isinstance(self.context_width, bool) or not isinstance(self.context_width, int):
            raise InputError(f"context_width must be an integer, got {self.context_width!r}")
        widest = scheme_class(self.scheme).max_context_width
        if not 1 <= self.context_width <= widest:
            raise InputError(f"context_width must be in 1..{widest}, got {self.context_width}")
        if not isinstance(self.provider_fraction, (int, float)) or not 0.0 <= self.provider_fraction < 1.0:
            raise InputError(f"provider_fraction must be in [0, 1), got {self.provider_fraction}")
        cls = scheme_class(self.scheme)
        if cls.single_key and self.provider_fraction != 0.0:
            raise InputError(f"scheme {self.scheme} is single-key: provider_fraction must be 0")
        t = self.entropy_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 20.0:
            raise InputError(f"entropy_threshold must be in [0, 20] nats, got {t!r}")
        if t != 0.0 and self.scheme != "kgw-entropy":
            raise InputError(f"entropy_threshold applies to scheme kgw-entropy only, not {self.scheme}")
        self._check_member_parameters()

    def _check_member_parameters(self) -> None:
        """The parameters of one member only: the tournament's ``layers``, ``vllm-dual-gumbel``'s
        ``key_b_probability`` (each gets its default for its member and is refused for the others)."""
        if self.scheme == "tournament":
            if self.layers is None:
                object.__setattr__(self, "layers", DEFAULT_LAYERS)
            m = self.layers
            if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_LAYERS:
                raise InputError(f"layers must be an integer in 1..{MAX_LAYERS}, got {m!r}")
        elif self.layers is not None:
            raise InputError(f"layers applies to scheme tournament only, not {self.scheme}")
        if self.scheme == "vllm-dual-gumbel":
            if self.key_b_probability is None:
                object.__setattr__(self, "key_b_probability", DEFAULT_KEY_B_PROBABILITY)
            q = self.key_b_probability
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
                raise InputError(f"key_b_probability must be in [0, 1], got {q!r}")
            object.__setattr__(self, "key_b_probability", float(q))
        elif self.key_b_probability is not None:
            raise InputError(f"key_b_probability applies to scheme vllm-dual-gumbel only, not {self.scheme}")

    @property
    def kind(self) -> str:
        """``"bias"`` (a green-list logit bias) or ``"sample"`` (the scheme chooses each token: Gumbel-max)."""
        return scheme_class(self.scheme).kind

    @property
    def generates(self) -> bool:
        """Whether the member can mark (False for the read-only interoperability members)."""
        return scheme_class(self.scheme).generates

    def to_dict(self) -> dict[str, Any]:
        """The parameters; ``entropy_threshold``, ``layers`` and ``key_b_probability`` only where they are set, so
        records of other schemes read as before."""
        d = asdict(self)
        if not d["entropy_threshold"]:
            del d["entropy_threshold"]
        if d["layers"] is None:
            del d["layers"]
        if d["key_b_probability"] is None:
            del d["key_b_probability"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WatermarkConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown watermark parameter(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    @classmethod
    def interop(cls, gamma: float = 0.25, delta: float = 2.0, context_width: int = 1) -> WatermarkConfig:
        """Settings that read and write the same marks as transformers' ``WatermarkingConfig`` (lefthash)."""
        return cls(scheme="hf-lefthash", gamma=gamma, delta=delta, context_width=context_width, provider_fraction=0.0)
