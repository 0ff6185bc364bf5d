"""The watermarking logits processor for transformers' ``generate``, the local backend and the engines' plugins
(batched, one account per row), for every member of the scheme family.

Where the work runs: the per-row part of a step (each row's key and context hash, O(batch)) is the scheme core's,
in numpy on the host. The vocabulary-sized part (a hash of every (row, token), then a green bit or a keyed
uniform and the Gumbel-max race) runs where the logits are when they are on an accelerator (CUDA, or any
non-CPU torch device): the kernels of :mod:`antidistill.watermark.device`, bit-identical to the core, so no
(batch, vocabulary) array crosses between host and device at a step. On the CPU the core's numpy code stays,
because it is the faster of the two there (measured: ``benchmarks/marking_device.py``). Members without a device
kernel (``hf-lefthash``, ``markllm-exp``, ``tournament``) run on the host on every device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from antidistill.watermark import device as device_kernels
from antidistill.watermark.core import U64, Scheme, Workspace
from antidistill.watermark.marker import MarkKeys, Watermark

try:  # transformers' base class, for generate(); an engine (vLLM) or a GPU benchmark may run without transformers
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover - transformers is a dependency of the package

    class LogitsProcessor:  # type: ignore[no-redef]
        """Stand-in for transformers' ``LogitsProcessor`` where transformers is not installed."""


def step_entropy(scores: torch.Tensor) -> torch.Tensor:
    """(B,) entropy in nats of each row's next-token distribution ``softmax(scores)`` (``-inf`` logits allowed)."""
    logp = torch.log_softmax(scores.float(), dim=-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1)


def final_probs(scores: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """(B, V) the distribution each row samples from: ``softmax(scores / T)`` restricted to its top-p nucleus
    (the tokens ranked before the cumulative mass reaches ``top_p``; the most likely token always stays)."""
    probs = torch.softmax(scores.float() / temperature[:, None], dim=-1)
    narrow = top_p < 1.0
    if bool(narrow.any()):
        sub = probs[narrow]
        sp, order = torch.sort(sub, dim=-1, descending=True, stable=True)
        drop_sorted = (torch.cumsum(sp, dim=-1) - sp) >= top_p[narrow][:, None]
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        sub = sub.masked_fill(drop, 0.0)
        probs[narrow] = sub / sub.sum(dim=-1, keepdim=True)
    return probs


class WatermarkLogitsProcessor(LogitsProcessor):
    """Marks every row of a batch with its own account's keys, with the configured member of the family.

    * Green-list members add ``delta`` to the green logits (``kgw-entropy``: only on rows whose next-token
      entropy reaches the threshold).
    * Sampling members (Gumbel-max, tournament) choose the token themselves from the row's final distribution
      (temperature, top-p) and return logits that allow only that token, so whatever sampler follows emits it.
      A step whose context already occurred in the row's answer is left to the sampler, unmarked (repeated-context
      masking, for the members with :attr:`~antidistill.watermark.core.Scheme.fresh_contexts_only`).
      Rows decoded greedily (temperature 0) get the green-list fallback (:attr:`Watermark.greedy`): a
      distortion-free mark needs sampling, and temperature 0 must not be a way to get unmarked answers.

    Only tokens whose whole context lies in the answer are marked (the answer's first ``context_width`` tokens are
    not: their contexts hold the prompt's last tokens, the chat template's for every prompt alike, so one account's
    keyed choice there would be the same for every prompt it sends; a detector reading the answer's text cannot
    score those positions anyway). ``answer_start`` tells :meth:`__call__` where the answers begin; engines that
    call :meth:`mark` pass ``ready`` accordingly.

    Rows whose entry in ``row_keys`` is ``None`` are left unmarked (e.g. an unwatermarked request sharing the
    batch). The keyed randomness comes from :class:`Watermark`, the object the detector uses, so generation and
    detection cannot drift apart. The work per step is vectorised over (batch, vocabulary): no Python loop over
    tokens (the O(batch) bookkeeping, such as the repeated-context check and seeded coins, reads each row once).
    With logits on an accelerator the vocabulary-sized work runs there (see the module docstring).

    Args:
        watermark: the watermark (configuration and scheme).
        row_keys: per batch row, the keys to mark with, or ``None``.
        temperature, top_p: the sampling settings of every row (sampling members; rows can be set one by one
            with :meth:`set_row_sampling`).
        answer_start: the length of ``input_ids`` at the first generated token (the padded prompt length in a
            transformers ``generate`` call): :meth:`__call__` marks only once ``context_width`` tokens of the answers
            exist. ``None``: every step with a full context is marked (a caller that passes contexts alone).
        on_device: where the vocabulary-sized work runs: ``None`` (default) on the logits' device when it is not
            the CPU, in numpy on the host otherwise (faster on a CPU); ``True`` on the logits' device always,
            ``False`` on the host always. Members without a device kernel run on the host whatever it says.

    Example:
        >>> from antidistill.keys import MasterKey
        >>> from antidistill.watermark.config import WatermarkConfig
        >>> mk = MasterKey(b"k" * 32)
        >>> proc = WatermarkLogitsProcessor(Watermark(WatermarkConfig(scheme="antidistill-v1")),
        ...                                 [MarkKeys(mk.account_key("alice"), mk.provider_key())])
        >>> out = proc(torch.tensor([[1, 2, 3]]), torch.zeros(1, 5000))
        >>> abs(float((out > 0).float().mean()) - 0.25) < 0.03  # about gamma of the vocabulary is green
        True
    """

    def __init__(
        self,
        watermark: Watermark,
        row_keys: Sequence[MarkKeys | None],
        temperature: float = 1.0,
        top_p: float = 1.0,
        on_device: bool | None = None,
        answer_start: int | None = None,
    ) -> None:
        self.watermark = watermark
        self.answer_start = answer_start
        self.on_device = on_device
        self.sampling = watermark.scheme.kind == "sample"
        self._workspace = Workspace()  # (B, V) scratch reused at every step: one processor per generate call
        self.set_row_keys(row_keys)
        n = len(self.row_keys)
        self._temps = np.full(n, float(temperature))
        self._top_p = np.full(n, float(top_p))
        self._generators: list[Any] | None = None

    def set_row_keys(
        self, row_keys: Sequence[MarkKeys | None], seen: Sequence[set[tuple[int, ...]]] | None = None
    ) -> None:
        """Replace the per-row keys (dynamic batching changes rows between steps).

        ``seen``: per row, the contexts its answer has had so far (members that mask repeated contexts, see
        :attr:`~antidistill.watermark.core.Scheme.fresh_contexts_only`): a set the caller keeps with the row, so
        the history follows the row when the batch changes; this processor adds each step's context to it.
        Without it every row starts a new answer.
        """
        self.row_keys = list(row_keys)
        self._seen = list(seen) if seen is not None else [set() for _ in self.row_keys]
        if len(self._seen) != len(self.row_keys):
            raise ValueError(f"{len(self._seen)} context histories for {len(self.row_keys)} rows")
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

    def set_row_sampling(
        self, temperatures: Sequence[float], top_ps: Sequence[float], generators: Sequence[Any] | None = None
    ) -> None:
        """Per-row sampling settings, and per-row ``torch.Generator`` s for the fresh uniforms some members draw
        (``gumbel-dual``'s coin, the tournament's final draw), so seeded requests stay reproducible (``None`` for a
        row: its uniforms come from torch's global generator)."""
        self._temps = np.asarray(temperatures, dtype=np.float64)
        self._top_p = np.asarray(top_ps, dtype=np.float64)
        self._generators = list(generators) if generators is not None else None

    def _keys(self, ctx: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) the key that marks each row's next token (provider or account, by context)."""
        account = self._account[rows]
        if self._provider is None or self._provider_rows is None:
            return self.watermark.row_keys(ctx, account, None)
        # Rows without a provider key are marked with the account key at every position.
        with_provider = self._provider_rows[rows]
        provider = np.where(with_provider, self._provider[rows], 0).astype(U64)
        keys = self.watermark.row_keys(ctx, account, provider)
        keys[~with_provider] = account[~with_provider]
        return keys

    def _device_for(self, scores: torch.Tensor, scheme: Scheme) -> bool:
        """Whether this step's vocabulary-sized work for ``scheme`` runs on ``scores``' device (see ``on_device``)."""
        # On the CPU the core's numpy code is faster than the same kernels in torch (B=16, V=49152, one thread:
        # green mask 0.9 ms against 2.1 ms, gumbel-dual's choice 5.1 ms against 10.6 ms), so the host is the
        # default there; elsewhere the device avoids copying (B, V) probabilities and masks every step.
        wanted = self.on_device if self.on_device is not None else scores.device.type != "cpu"
        return wanted and device_kernels.supported(scheme)

    def _green_mask(
        self, scheme: Scheme, scores: torch.Tensor, keys: np.ndarray, ctx: np.ndarray
    ) -> np.ndarray | torch.Tensor:
        """(rows, V) the green lists, as a bool tensor on ``scores``' device or a numpy array on the host."""
        if self._device_for(scores, scheme):
            return device_kernels.green_mask(scheme, keys, ctx, scores.shape[-1], scores.device)
        return scheme.green_mask(keys, ctx, scores.shape[-1], self._workspace)

    def _coins(self, rows: np.ndarray) -> np.ndarray:
        if self._generators is None:
            return torch.rand(len(rows), dtype=torch.float64).numpy()
        # rows with a generator (a seeded request) draw from it; the others in one draw from torch's global one
        gens = [self._generators[i] for i in rows]
        coins = np.array(
            [float(torch.rand((), generator=g, dtype=torch.float64)) if g is not None else 0.0 for g in gens]
        )
        unseeded = np.array([g is None for g in gens], dtype=bool)
        if unseeded.any():
            coins[unseeded] = torch.rand(int(unseeded.sum()), dtype=torch.float64).numpy()
        return coins

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        h = self.watermark.config.context_width
        if input_ids.shape[-1] < h + (self.answer_start or 0) or not self._active.any():
            return scores
        if input_ids.shape[0] != len(self.row_keys):
            raise ValueError(f"batch has {input_ids.shape[0]} rows but {len(self.row_keys)} row keys were given")
        return self.mark(input_ids[:, -h:].cpu().numpy(), scores)  # type: ignore[return-value]

    def mark(self, contexts: np.ndarray, scores: torch.Tensor, ready: np.ndarray | None = None) -> torch.Tensor:
        """Mark the next token of every row: ``contexts`` (B, context_width) are each row's last tokens, ``scores``
        (B, V) its logits. Rows where ``ready`` (B,) is False (e.g. too few tokens yet for a context) are left as
        they are. What ``__call__`` runs; engines that keep the tokens themselves (vLLM) call it directly."""
        if not self._active.any():
            return scores
        if len(contexts) != len(self.row_keys) or scores.shape[0] != len(self.row_keys):
            raise ValueError(f"batch has {scores.shape[0]} rows but {len(self.row_keys)} row keys were given")
        active = self._active if ready is None else self._active & np.asarray(ready, dtype=bool)
        if self.sampling:
            if len(self._temps) != len(self.row_keys):
                raise ValueError(f"{len(self._temps)} sampling settings for {len(self.row_keys)} rows")
            greedy = np.flatnonzero(active & (self._temps <= 0))
            if len(greedy):  # greedy rows carry the green-list fallback (see Watermark.greedy)
                ctx = np.asarray(contexts)[greedy]
                fallback = self.watermark.greedy
                mask = self._green_mask(fallback.scheme, scores, self._keys(ctx, greedy), ctx)
                scores = self._apply(scores, greedy, mask, fallback.config.delta)
            active = active & (self._temps > 0)
        rows = np.flatnonzero(active)
        if self.sampling and self.watermark.scheme.fresh_contexts_only and len(rows):
            rows = rows[self._fresh(np.asarray(contexts), rows)]
        if self.watermark.config.entropy_threshold > 0 and len(rows):
            ent = step_entropy(scores[torch.from_numpy(rows).to(scores.device)]).cpu().numpy()
            rows = rows[self.watermark.scheme.marks_step(ent)]
        if not len(rows):
            return scores
        ctx = np.asarray(contexts)[rows]
        keys = self._keys(ctx, rows)
        if self.sampling:
            return self._sample(scores, rows, ctx, keys)
        mask = self._green_mask(self.watermark.scheme, scores, keys, ctx)
        return self._apply(scores, rows, mask)

    def _fresh(self, contexts: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) bool: whether each row's context is new to its answer; records the contexts as seen.
        A repeated context is sampled unmarked (the logits pass through to the engine's sampler)."""
        out = np.zeros(len(rows), dtype=bool)
        for j, (r, c) in enumerate(zip(rows.tolist(), contexts[rows].tolist(), strict=True)):
            seen = self._seen[r]
            ctx = tuple(c)
            if ctx not in seen:
                seen.add(ctx)
                out[j] = True
        return out

    def _sample(self, scores: torch.Tensor, rows: np.ndarray, ctx: np.ndarray, keys: np.ndarray) -> torch.Tensor:
        idx = torch.from_numpy(rows).to(scores.device)
        probs = final_probs(
            scores[idx],
            torch.from_numpy(self._temps[rows]).float().to(scores.device),
            torch.from_numpy(self._top_p[rows]).float().to(scores.device),
        )
        scheme = self.watermark.scheme
        coins = self._coins(rows) if scheme.needs_coins else None
        if self._device_for(scores, scheme):
            chosen = device_kernels.choose(scheme, probs, keys, ctx, coins)
        else:
            chosen = torch.from_numpy(scheme.choose(probs.cpu().numpy(), keys, ctx, coins, self._workspace))
        out = scores.clone()
        sub = torch.full((len(rows), scores.shape[-1]), float("-inf"), dtype=scores.dtype, device=scores.device)
        sub[torch.arange(len(rows), device=scores.device), chosen.to(scores.device)] = 0.0
        out[idx] = sub
        return out

    def _apply(
        self, scores: torch.Tensor, rows: np.ndarray, mask: np.ndarray | torch.Tensor, delta: float | None = None
    ) -> torch.Tensor:
        delta = self.watermark.config.delta if delta is None else delta
        if isinstance(mask, torch.Tensor):  # made on the device: the same values as the conversions below
            bias = mask.to(dtype=scores.dtype).mul_(delta)
        elif scores.dtype == torch.float32 and scores.device.type == "cpu":
            # the same float32 values as the torch conversion below, into a reused buffer
            bias_np = self._workspace.array("bias", mask.shape, np.float32)
            np.multiply(mask, np.float32(delta), out=bias_np)
            bias = torch.from_numpy(bias_np)
        else:
            bias = torch.from_numpy(mask).to(device=scores.device, dtype=scores.dtype)
            bias.mul_(delta)
        if len(rows) == scores.shape[0]:
            return scores + bias
        out = scores.clone()
        idx = torch.from_numpy(rows).to(scores.device)
        out[idx] += bias
        return out
