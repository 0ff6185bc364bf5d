"""What an inference engine's plugin needs to mark its batches, independent of the engine's package.

An engine such as vLLM keeps a persistent batch: requests join it, leave it and move between rows between decode
steps, and a logits processor is told so (``added``/``removed``/``moved``) before it is asked for the logits of
the next token of every row. :class:`EngineMarker` keeps one small record per row (its keys, its sampling
settings and a reference to its growing list of output tokens; a row is marked once its answer holds a whole
context) and marks the batch's logits through
:class:`~antidistill.watermark.processor.WatermarkLogitsProcessor`, the object the local backend and ``generate``
mark with: the mark is the scheme core's, never a copy of it.

Requests name their keys, never carry them: the request's extra arguments (vLLM's ``vllm_xargs``) give the account
id and the key versions, and the engine derives the keys from the master key in its own environment
(:func:`parse_xargs`, :meth:`EngineMarker.keys`). The watermark configuration is the engine's
(``ANTIDISTILL_WATERMARK_*`` in its environment, :meth:`~antidistill.settings.Settings.watermark_config`); a request
may name the configuration it expects (``antidistill_watermark``, the JSON of ``WatermarkConfig.to_dict()``), and
is refused when it is not the engine's, so a gateway never records a configuration that did not mark the text.

Nothing here imports an engine: :mod:`antidistill.engines.vllm` is the thin vLLM shell over it, and the tests
drive this module with stand-ins for vLLM's ``SamplingParams`` and ``BatchUpdate``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

# the wire format (names, the greedy threshold) is the gateway's too: it lives where torch is not imported
from antidistill.engines.xargs import (
    SAMPLING_EPS,
    XARG_ACCOUNT,
    XARG_KEY_VERSION,
    XARG_PREFIX,
    XARG_PROVIDER_VERSION,
    XARG_WATERMARK,
    XARGS,
)
from antidistill.errors import InputError
from antidistill.keys import MasterKey, _validate_account_id, _validate_version
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from antidistill.watermark.processor import WatermarkLogitsProcessor

__all__ = [
    "SAMPLING_EPS",
    "XARGS",
    "XARG_ACCOUNT",
    "XARG_KEY_VERSION",
    "XARG_PROVIDER_VERSION",
    "XARG_WATERMARK",
    "BatchUpdateLike",
    "EngineMarker",
    "MarkRequest",
    "RequestParams",
    "Row",
    "SlotMarker",
    "check_request",
    "coin_seed",
    "parse_xargs",
]


class RequestParams(Protocol):
    """What is read of a request's sampling parameters (vLLM's ``SamplingParams`` has all of it)."""

    extra_args: dict[str, Any] | None
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int | None
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float


@dataclass(frozen=True)
class MarkRequest:
    """What a request asks the engine to mark with: whose keys, at which versions."""

    account: str
    key_version: int
    provider_version: int


def _version(args: Mapping[str, Any], name: str) -> int:
    v = args.get(name)
    if v is None:
        raise InputError(f"vllm_xargs.{name} is required (an integer >= 1)")
    try:
        return _validate_version(v)
    except InputError as exc:
        raise InputError(f"vllm_xargs.{name}: {exc}") from None


def parse_xargs(
    extra_args: Mapping[str, Any] | None, config: WatermarkConfig, allow_unmarked: bool
) -> MarkRequest | None:
    """The request's antidistill arguments, checked; ``None`` for a request without any (served unmarked only if
    ``allow_unmarked``).

    Raises:
        InputError: missing, unknown or invalid arguments, or an expected configuration other than ``config``.

    Example:
        >>> parse_xargs({"antidistill_account": "alice", "antidistill_key_version": 2,
        ...              "antidistill_provider_version": 1}, WatermarkConfig(), False)
        MarkRequest(account='alice', key_version=2, provider_version=1)
    """
    args = {k: v for k, v in (extra_args or {}).items() if isinstance(k, str) and k.startswith(XARG_PREFIX)}
    if not args:
        if allow_unmarked:
            return None
        raise InputError(
            "this engine watermarks every completion: send vllm_xargs "
            f"{XARG_ACCOUNT}, {XARG_KEY_VERSION} and {XARG_PROVIDER_VERSION} "
            "(or start the engine with ANTIDISTILL_ALLOW_UNMARKED=1 to serve requests without them unmarked)"
        )
    unknown = sorted(set(args) - set(XARGS))
    if unknown:
        raise InputError(f"unknown vllm_xargs: {', '.join(unknown)} (known: {', '.join(XARGS)})")
    account = args.get(XARG_ACCOUNT)
    if account is None:
        raise InputError(f"vllm_xargs.{XARG_ACCOUNT} is required")
    try:
        _validate_account_id(account)
    except InputError as exc:
        raise InputError(f"vllm_xargs.{XARG_ACCOUNT}: {exc}") from None
    request = MarkRequest(account, _version(args, XARG_KEY_VERSION), _version(args, XARG_PROVIDER_VERSION))
    expected = args.get(XARG_WATERMARK)
    if expected is not None:
        try:
            wanted = WatermarkConfig.from_dict(json.loads(expected) if isinstance(expected, str) else expected)
        except (ValueError, TypeError) as exc:  # InputError is a ValueError
            raise InputError(f"vllm_xargs.{XARG_WATERMARK} is not a watermark configuration: {exc}") from None
        if wanted != config:
            raise InputError(
                f"vllm_xargs.{XARG_WATERMARK} asks for {json.dumps(wanted.to_dict(), sort_keys=True)} but this "
                f"engine marks with {json.dumps(config.to_dict(), sort_keys=True)}"
            )
    return request


def check_request(params: RequestParams, config: WatermarkConfig, allow_unmarked: bool) -> MarkRequest | None:
    """:func:`parse_xargs`, and for sampling members the sampling settings they reproduce.

    A sampling member draws the token itself from ``softmax(logits / temperature)`` within ``top_p`` (the logits
    as the engine's logits processors leave them: ``logit_bias``, ``min_tokens`` and allowed/bad words are in).
    The penalties and ``top_k``/``min_p`` act after it in vLLM's sampler, so the token would not come from the
    distribution the client asked for: such requests are refused rather than served with a silently different
    distribution. Green-list members add their bias before all of these and accept every setting.
    """
    request = parse_xargs(params.extra_args, config, allow_unmarked)
    if request is None or config.kind != "sample" or params.temperature < SAMPLING_EPS:
        return request
    unsupported = [
        name
        for name, value, neutral in (
            ("top_k", params.top_k, (0, -1)),
            ("min_p", params.min_p, (0.0,)),
            ("presence_penalty", params.presence_penalty, (0.0,)),
            ("frequency_penalty", params.frequency_penalty, (0.0,)),
            ("repetition_penalty", params.repetition_penalty, (1.0,)),
        )
        if value not in neutral
    ]
    if unsupported:
        raise InputError(
            f"the watermark scheme {config.scheme} samples from temperature and top_p only: "
            f"leave {', '.join(unsupported)} at the default"
        )
    return request


def coin_seed(seed: int) -> int:
    """The seed of a seeded request's generator of watermark coins: a fixed function of the request seed, apart
    from the engine's own generator seeded with it."""
    raw = hashlib.sha256(b"antidistill/engine-coins\x00" + str(int(seed)).encode()).digest()
    return int.from_bytes(raw[:8], "little") >> 1  # torch seeds are below 2**63 on every platform


class BatchUpdateLike(Protocol):
    """vLLM's ``BatchUpdate``: the batch size after the changes, and the changes (applied removed, added, moved)."""

    @property
    def batch_size(self) -> int: ...
    @property
    def removed(self) -> Sequence[int]: ...
    @property
    def added(self) -> Sequence[tuple[int, Any, Sequence[int] | None, Sequence[int]]]: ...
    @property
    def moved(self) -> Sequence[tuple[int, int, Any]]: ...


@dataclass
class Row:
    """One request in the engine's batch."""

    keys: MarkKeys | None
    temperature: float
    top_p: float
    generator: torch.Generator | None
    output: Sequence[int]  # the engine's own list of the request's output tokens (it grows in place)
    seen: set[tuple[int, ...]] = field(default_factory=set)  # contexts of the answer so far (context masking)


class EngineMarker:
    """Marks an engine's persistent batch, one account per row.

    Args:
        watermark: the engine's watermark (configuration and scheme).
        master: the master key the row keys are derived from.
        allow_unmarked: serve requests without antidistill arguments, unmarked (otherwise they are refused).

    :meth:`update` takes the engine's batch changes (per-row bookkeeping, once per change); :meth:`apply` marks
    the logits of a step: it reads each marked row's last ``context_width`` tokens (the engine hands them over
    as Python lists only, so this is one short read per row) and leaves the rest to the scheme core, vectorised
    over (rows, vocabulary).
    """

    def __init__(self, watermark: Watermark, master: MasterKey, allow_unmarked: bool = False) -> None:
        self.watermark = watermark
        self.config = watermark.config
        self.allow_unmarked = allow_unmarked
        self.core = WatermarkLogitsProcessor(watermark, [])
        self._master = master
        self._rows: dict[int, Row] = {}
        self._batch: list[Row | None] = []
        self._marked = False
        self._keys: dict[MarkRequest, MarkKeys] = {}

    # ---- requests ---------------------------------------------------------------------------------------
    def keys(self, request: MarkRequest) -> MarkKeys:
        """The keys of one request, derived here from the master key (and kept: a few per account)."""
        keys = self._keys.get(request)
        if keys is None:
            keys = MarkKeys(
                self._master.account_key(request.account, request.key_version),
                self._master.provider_key(request.provider_version),
            )
            if len(self._keys) >= 100_000:
                self._keys.clear()
            self._keys[request] = keys
        return keys

    def row(self, params: RequestParams, output: Sequence[int]) -> Row:
        """The record of a request joining the batch (checked again: the engine must never mark by guesswork).

        The prompt is not an argument: a row is marked only where its whole context lies in ``output`` (the
        answer-context rule), so no prompt token ever seeds a mark."""
        request = check_request(params, self.config, self.allow_unmarked)
        temperature = float(params.temperature) if params.temperature >= SAMPLING_EPS else 0.0
        generator = None
        if request is not None and params.seed is not None and self.watermark.scheme.needs_coins:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(coin_seed(params.seed))
        return Row(
            keys=self.keys(request) if request is not None else None,
            temperature=temperature,
            top_p=float(params.top_p),
            generator=generator,
            output=output,
        )

    # ---- the batch -------------------------------------------------------------------------------------
    def update(self, batch_update: BatchUpdateLike | None) -> None:
        """Apply the engine's batch changes: removed, then added (replacing a row at the same index), then moved
        (one-way ``a -> b`` replaces ``b`` and empties ``a``; a swap exchanges them)."""
        if batch_update is None:
            return
        rows = self._rows
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            rows[index] = self.row(params, output)
        for a, b, direction in batch_update.moved:
            ra, rb = rows.pop(a, None), rows.pop(b, None)
            if ra is not None:
                rows[b] = ra
            if rb is not None and getattr(direction, "name", direction) == "SWAP":
                rows[a] = rb
        n = batch_update.batch_size
        for index in [i for i in rows if i >= n]:
            del rows[index]
        self._bind([rows.get(i) for i in range(n)])

    def _bind(self, batch: list[Row | None]) -> None:
        self._batch = batch
        self._marked = any(r is not None and r.keys is not None for r in batch)
        self.core.set_row_keys(
            [r.keys if r is not None else None for r in batch], [r.seen if r is not None else set() for r in batch]
        )
        self.core.set_row_sampling(
            [r.temperature if r is not None else 0.0 for r in batch],
            [r.top_p if r is not None else 1.0 for r in batch],
            [r.generator if r is not None else None for r in batch],
        )

    @property
    def batch(self) -> list[Row | None]:
        """The rows as the engine numbers them (``None``: an empty row)."""
        return list(self._batch)

    def contexts(self) -> tuple[np.ndarray, np.ndarray]:
        """(B, context_width) int64 each row's last tokens, and (B,) bool whether the row is marked at this step
        (it has keys and enough tokens for a context)."""
        h = self.config.context_width
        n = len(self._batch)
        ctx = np.zeros((n, h), dtype=np.int64)
        ready = np.zeros(n, dtype=bool)
        for i, r in enumerate(self._batch):
            if r is None or r.keys is None:
                continue
            out = r.output
            if len(out) >= h:  # the answer's own tokens only (see WatermarkLogitsProcessor)
                ctx[i] = list(out[-h:])
                ready[i] = True
        return ctx, ready

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Mark the (B, V) logits of the batch's next tokens (B: the rows :meth:`update` was told of)."""
        if not self._marked:
            return logits
        if logits.shape[0] != len(self._batch):
            raise RuntimeError(f"the engine gave logits for {logits.shape[0]} rows, its batch has {len(self._batch)}")
        ctx, ready = self.contexts()
        if (ctx[ready] < 0).any():
            # vLLM's placeholder for a token still on its way (async scheduling): marking on it would mark wrongly
            raise RuntimeError("a row's last token is not known yet (async scheduling): the mark needs it")
        return self.core.mark(ctx, logits, ready)


class SlotMarker(EngineMarker):
    """Marks a batch of an engine that keys its requests by slot and keeps their tokens on the device (vLLM's V2
    model runner): a request is announced once with its slot (:meth:`add`; a slot is recycled by the next request
    given it, so everything about it is set anew), and each step hands over the slot of every logits row and the
    row's context, read by the shell from the engine's token buffers (:meth:`apply`). The per-row work of a step
    is numpy over the slots; the rows are rebound (:meth:`EngineMarker._bind`) only when the batch's slots change.
    """

    def __init__(self, watermark: Watermark, master: MasterKey, allow_unmarked: bool = False) -> None:
        super().__init__(watermark, master, allow_unmarked)
        self._slots: dict[int, Row] = {}
        self._bound: np.ndarray | None = None  # the slots the rows were last bound to (None: rebind)

    def add(self, slot: int, params: RequestParams) -> bool:
        """A request takes ``slot`` (refused as :meth:`EngineMarker.row` refuses); whether it is marked."""
        row = self.row(params, ())
        self._slots[slot] = row
        self._bound = None
        return row.keys is not None

    def _rebind(self, slots: np.ndarray) -> None:
        """Bind the rows to ``slots`` unless they are bound to them already (the batch did not change)."""
        if self._bound is None or not np.array_equal(self._bound, slots):
            self._bind([self._slots.get(int(s)) for s in slots])
            self._bound = slots.copy()

    def marks_any(self, slots: np.ndarray) -> bool:
        """Whether any of these slots holds a marked request (no work at all for a step of unmarked ones)."""
        self._rebind(np.asarray(slots, dtype=np.int64))
        return self._marked

    def apply_slots(
        self, logits: torch.Tensor, slots: np.ndarray, contexts: np.ndarray, ready: np.ndarray
    ) -> torch.Tensor:
        """Mark the (B, V) ``logits``: row ``i`` is slot ``slots[i]``, its last tokens ``contexts[i]``
        (B, context_width), marked where ``ready[i]`` (a full context, and a token is sampled from the row)."""
        slots = np.asarray(slots, dtype=np.int64)
        if logits.shape[0] != len(slots) or len(contexts) != len(slots):
            raise RuntimeError(f"the engine gave logits for {logits.shape[0]} rows and {len(slots)} slots")
        self._rebind(slots)
        if not self._marked:
            return logits
        return self.core.mark(np.asarray(contexts, dtype=np.int64), logits, np.asarray(ready, dtype=bool))
