"""Binds a :class:`WatermarkConfig` to its scheme and decides, per position, which key marks it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.core import U64, Workspace, context_hash, provider_positions
from antidistill.watermark.schemes import get_scheme

if TYPE_CHECKING:  # the keys module reads the settings; the watermark needs only the key type
    from antidistill.keys import WatermarkKey


@dataclass(frozen=True)
class MarkKeys:
    """The keys that mark one row of generation: the account's key and (optionally) the provider's key."""

    account: WatermarkKey
    provider: WatermarkKey | None = None


class Watermark:
    """A watermark configuration with its green-list scheme: the one object generation and detection share.

    Args:
        config: the parameters.

    Example:
        >>> import numpy as np
        >>> wm = Watermark(WatermarkConfig(scheme="antidistill-v1", provider_fraction=0.0))
        >>> mask = wm.green_mask(np.array([[5]]), np.array([123], dtype=np.uint64), None, vocab_size=20)
        >>> mask.shape
        (1, 20)
    """

    def __init__(self, config: WatermarkConfig | None = None) -> None:
        self.config = config or WatermarkConfig()
        self.scheme = get_scheme(
            self.config.scheme,
            self.config.gamma,
            self.config.context_width,
            self.config.entropy_threshold,
            self.config.layers,
            self.config.key_b_probability,
        )
        self._greedy: Watermark | None = None

    @property
    def greedy(self) -> Watermark:
        """The watermark of rows decoded greedily (temperature 0).

        A sampling member marks by choosing among the tokens sampling could emit; a greedy row emits the most
        likely token, so it could carry no mark, and a harvester would only have to ask for temperature 0 to get
        unmarked answers. Greedy rows are therefore marked with the green-list member (``antidistill-v1``, its
        default gamma and delta) at the same context width and provider share; the audit record of such an answer
        names that configuration. For a green-list member this is the watermark itself.
        """
        if self.scheme.kind != "sample":
            return self
        if self._greedy is None:
            self._greedy = Watermark(
                WatermarkConfig(
                    scheme="antidistill-v1",
                    context_width=self.config.context_width,
                    provider_fraction=self.config.provider_fraction,
                )
            )
        return self._greedy

    def position_kinds(self, contexts: np.ndarray, provider_key: int | None) -> np.ndarray:
        """(N,) bool: True where the context is a provider position."""
        if provider_key is None or self.config.provider_fraction == 0.0:
            return np.zeros(len(contexts), dtype=bool)
        return provider_positions(provider_key, context_hash(contexts), self.config.provider_fraction)

    def row_keys(self, contexts: np.ndarray, account_keys: np.ndarray, provider_keys: np.ndarray | None) -> np.ndarray:
        """(B,) uint64: the key that marks each row's next token (provider or account, by context)."""
        keys = np.asarray(account_keys, dtype=U64).copy()
        if provider_keys is None or self.config.provider_fraction == 0.0:
            return keys
        provider_keys = np.asarray(provider_keys, dtype=U64)
        ctx_h = context_hash(contexts)
        # Rows may carry different provider keys (after a rotation), so the split is computed per key value.
        for p in np.unique(provider_keys):
            rows = provider_keys == p
            use_p = provider_positions(int(p), ctx_h[rows], self.config.provider_fraction)
            sub = keys[rows]
            sub[use_p] = p
            keys[rows] = sub
        return keys

    def green_mask(
        self,
        contexts: np.ndarray,
        account_keys: np.ndarray,
        provider_keys: np.ndarray | None,
        vocab_size: int,
        workspace: Workspace | None = None,
    ) -> np.ndarray:
        """(B, V) bool: the green list of each row's next token (in ``workspace`` if given)."""
        keys = self.row_keys(contexts, account_keys, provider_keys)
        return self.scheme.green_mask(keys, contexts, vocab_size, workspace)
