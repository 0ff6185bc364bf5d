"""The watermarking logits processor for transformers' ``generate`` (batched, one account per row)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from antidistill.watermark.core import U64, Workspace
from antidistill.watermark.marker import MarkKeys, Watermark


class WatermarkLogitsProcessor(LogitsProcessor):
    """Adds ``delta`` to the green logits of every row, each row with its own account's keys.

    Rows whose entry in ``row_keys`` is ``None`` are left unmarked (e.g. an upstream or an unwatermarked
    request sharing the batch). The green lists come from :class:`Watermark`, the same object the detector
    uses, so generation and detection cannot drift apart. The work per step is a few vectorised 64-bit
    operations over (batch, vocabulary): no Python loop over rows or tokens.

    Args:
        watermark: the watermark (configuration and scheme).
        row_keys: per batch row, the keys to mark with, or ``None``.

    Example:
        >>> from antidistill.keys import MasterKey
        >>> from antidistill.watermark.config import WatermarkConfig
        >>> mk = MasterKey(b"k" * 32)
        >>> proc = WatermarkLogitsProcessor(Watermark(WatermarkConfig()),
        ...                                 [MarkKeys(mk.account_key("alice"), mk.provider_key())])
        >>> out = proc(torch.tensor([[1, 2, 3]]), torch.zeros(1, 5000))
        >>> abs(float((out > 0).float().mean()) - 0.25) < 0.03  # about gamma of the vocabulary is green
        True
    """

    def __init__(self, watermark: Watermark, row_keys: Sequence[MarkKeys | None]) -> None:
        self.watermark = watermark
        self._workspace = Workspace()  # (B, V) scratch reused at every step: one processor per generate call
        self.set_row_keys(row_keys)

    def set_row_keys(self, row_keys: Sequence[MarkKeys | None]) -> None:
        """Replace the per-row keys (dynamic batching changes rows between steps)."""
        self.row_keys = list(row_keys)
        self._active = np.array([k is not None for k in self.row_keys], dtype=bool)
        self._account = np.array([k.account.value if k else 0 for k in self.row_keys], dtype=U64)
        has_provider = any(k is not None and k.provider is not None for k in self.row_keys)
        self._provider = (
            np.array([k.provider.value if (k and k.provider) else 0 for k in self.row_keys], dtype=U64)
            if has_provider
            else None
        )
        self._provider_rows = (
            np.array([bool(k and k.provider) for k in self.row_keys], dtype=bool) if has_provider else None
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        h = self.watermark.config.context_width
        if input_ids.shape[-1] < h or not self._active.any():
            return scores
        if input_ids.shape[0] != len(self.row_keys):
            raise ValueError(f"batch has {input_ids.shape[0]} rows but {len(self.row_keys)} row keys were given")
        rows = np.flatnonzero(self._active)
        ctx = input_ids[:, -h:].cpu().numpy()[rows]
        provider = None
        account = self._account[rows]
        if self._provider is not None and self._provider_rows is not None:
            # Rows without a provider key are marked with the account key at every position.
            with_provider = self._provider_rows[rows]
            provider = np.where(with_provider, self._provider[rows], 0).astype(U64)
            if not with_provider.all():
                account_only = ~with_provider
                keys = self.watermark.row_keys(ctx, account, provider)
                keys[account_only] = account[account_only]
                mask = self.watermark.scheme.green_mask(keys, ctx, scores.shape[-1], self._workspace)
                return self._apply(scores, rows, mask)
        mask = self.watermark.green_mask(ctx, account, provider, scores.shape[-1], self._workspace)
        return self._apply(scores, rows, mask)

    def _apply(self, scores: torch.FloatTensor, rows: np.ndarray, mask: np.ndarray) -> torch.FloatTensor:
        if scores.dtype == torch.float32 and scores.device.type == "cpu":
            # the same float32 values as the torch conversion below, into a reused buffer
            bias_np = self._workspace.array("bias", mask.shape, np.float32)
            np.multiply(mask, np.float32(self.watermark.config.delta), out=bias_np)
            bias = torch.from_numpy(bias_np)
        else:
            bias = torch.from_numpy(mask).to(device=scores.device, dtype=scores.dtype)
            bias.mul_(self.watermark.config.delta)
        if len(rows) == scores.shape[0]:
            # transformers' signature says FloatTensor; arithmetic on one is typed as a plain Tensor
            return scores + bias  # type: ignore[return-value]
        out = scores.clone()
        idx = torch.from_numpy(rows).to(scores.device)
        out[idx] += bias
        return out  # type: ignore[return-value]
