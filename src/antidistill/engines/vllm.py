"""The vLLM plugin: a v1 logits processor that marks every row of vLLM's batch with its own account's keys.

Start the engine with it by name, or let vLLM find it through the ``vllm.logits_processors`` entry point that
installing antidistill registers::

    ANTIDISTILL_MASTER_KEY=... python -m vllm.entrypoints.openai.api_server --model DIR \\
        --logits-processors antidistill.engines.vllm:AntidistillLogitsProcessor

and send each request's keys by name in ``vllm_xargs`` (the keys themselves never cross the network)::

    {"vllm_xargs": {"antidistill_account": "alice", "antidistill_key_version": 1,
                    "antidistill_provider_version": 1}}

optionally with ``"antidistill_watermark": "<WatermarkConfig.to_dict() as JSON>"``, refused unless it is the
engine's configuration. Everything else is :mod:`antidistill.engines.marking`, which does not import vLLM.

Configuration (the engine's environment, the same ``ANTIDISTILL_*`` settings as the gateway's)
-------------------------------------------------------------------------------------------------
* ``ANTIDISTILL_MASTER_KEY`` (or the key file in ``ANTIDISTILL_DATA_DIR``): the keys are derived in the engine's
  processes by (account id, key version) and (provider key version). No master key: the engine does not start.
* ``ANTIDISTILL_WATERMARK_*``: the one configuration the engine marks with (scheme and parameters; the defaults
  otherwise). It is the engine's, not the request's: a batch is marked by one scheme, vectorised, and a gateway
  that states the configuration it records (``antidistill_watermark``) is refused on a mismatch instead of
  recording a configuration that did not mark the text.
* ``ANTIDISTILL_ALLOW_UNMARKED=1``: serve requests without antidistill arguments, unmarked. Otherwise they are
  refused (HTTP 400) by :meth:`AntidistillLogitsProcessor.validate_params`, in the API server process.

What vLLM 0.32's v1 sampler does with a logits processor (read from ``vllm/v1/sample/``)
-----------------------------------------------------------------------------------------
* ``Sampler.forward``: logits to float32 -> allowed-token mask -> bad words -> the processors that are *not*
  argmax-invariant (built-ins ``min_tokens``, ``logit_bias``, then custom ones, in that order) -> penalties
  (repetition, frequency, presence) -> ``sample``: greedy argmax for greedy rows; temperature (``logits / T``;
  ``T < 1e-5`` is greedy) -> argmax-invariant processors (``min_p``) -> top-k/top-p -> the draw (per-request
  ``torch.Generator`` for seeded requests). Raw logprobs are computed before any of it.
* So a custom processor that says ``is_argmax_invariant() == False`` (this one: a green-list bias moves the
  argmax, a sampling member forces one token) sees the raw logits, *before* temperature: the same place the
  local backend's processor marks. Bias members add ``delta`` there; greedy rows are biased too. Sampling
  members compute the row's final distribution themselves (``final_probs``: temperature and top-p, as the local
  backend does), choose the token with ``scheme.choose`` and return logits that allow only it, which the
  penalties, temperature and top-k/top-p that follow cannot change; greedy rows get the green-list fallback
  (``Watermark.greedy``: a distortion-free mark needs sampling, and temperature 0 must not unmark an answer).
  Penalties, ``top_k`` and ``min_p`` act after the processor, so for
  sampling members requests that set them are refused (see :func:`~antidistill.engines.marking.check_request`).
* ``BatchUpdate`` (``vllm/v1/sample/logits_processor/interface.py``): ``batch_size`` after the step's changes,
  ``removed`` (row indices), ``added`` (``(index, SamplingParams, prompt token ids or None, output token ids)``;
  the output list is the request's own, appended to in place as tokens are sampled, and an added row may
  replace the row at its index), ``moved`` (``(a, b, UNIDIRECTIONAL | SWAP)``: one-way ``a -> b`` replaces ``b``,
  a swap exchanges them); applied in that order. ``update_state(None)`` means no change. ``update_state`` runs
  before every forward pass (``InputBatch.refresh_metadata``), ``apply`` in the sampler.
* The request's ``vllm_xargs`` arrive as ``SamplingParams.extra_args`` (ints, floats, strings or lists); the
  params also carry ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``seed``, the penalties.
* ``validate_params`` is a classmethod run in the API server process for each request (a ``ValueError`` is an
  HTTP 400); ``__init__`` runs in the engine core process with ``(vllm_config, device, is_pin_memory)``.
* The processors are built as built-ins + every ``vllm.logits_processors`` entry point + every
  ``--logits-processors`` name: with the entry point installed, naming the class too builds it twice. Only the
  first instance for an engine marks (:func:`_claim`); the others return the logits as they are.
* Output token ids under async scheduling end in a placeholder (-1) for the token still being copied back, and
  vLLM repairs them before the sampler only when ``--logits-processors`` names a processor (not for entry-point
  plugins) or penalties need them. vLLM turns async scheduling off on the CPU; elsewhere the processor refuses
  to start with async scheduling unless it is named in ``--logits-processors`` (or pass
  ``--no-async-scheduling``), and :meth:`EngineMarker.apply` fails rather than mark on a placeholder.
* Custom processors are refused with speculative decoding and pooling models.

The V2 model runner (``vllm/v1/worker/gpu/``, the default wherever Triton runs, i.e. on GPUs; vLLM's CPU build
keeps the V1 runner) has another interface, ``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor``, and
rejects at load time every processor, entry points included, that does not subclass it. The class below
subclasses both, so one name (and one entry point) serves either runner; ``__init__`` tells them apart by its
arguments (V1: ``(vllm_config, device, is_pin_memory)``, V2: ``(vllm_config, req_states)``). What V2 does
(read from ``vllm/v1/worker/gpu/sample/``):

* ``add_request(slot, params)`` when a request takes a slot (slots are recycled: no removal is announced, the
  next ``add_request`` of the slot replaces everything); ``apply(logits, ctx)`` once per step for the whole
  batch, ``ctx.idx_mapping_np`` the slot of each request (host), ``ctx.pos`` each row's input position and
  ``ctx.input_ids`` its input token (device). Custom processors run after logit bias, penalties and bad words,
  before temperature, min_p and top-k/top-p: the raw logits less the penalties.
* The request's tokens stay on the device, ``req_states.all_token_ids.gpu`` (slot x position), with the prompt's
  length per slot on the host (``prefill_len.np``). The processor gathers each row's context there, on the device,
  and copies the (B, context_width) block and the positions to the host once per step: the host needs them for
  the row keys and the fresh-context record. A row still in chunked prefill (its position before the prefill's
  end) is left unmarked: no token is sampled from it.

Where the work runs: each row's key and context hash (O(batch)) come from the scheme core, in numpy on the host.
The vocabulary-sized work (the keyed hash of every token, the green mask or the keyed uniforms and the Gumbel-max
race) runs on the logits' device when it is an accelerator, with the torch kernels of
:mod:`antidistill.watermark.device` (``antidistill-v1``, ``kgw-entropy``, ``gumbel``, ``gumbel-dual``), bit-identical
to the core; no (batch, vocabulary) array is copied to or from the host. On a CPU engine, and for the members
without a device kernel, it is the core's numpy code (see :mod:`antidistill.watermark.processor`). The bias or the
one-token mask is applied to the logits on their device.
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

try:  # the V2 model runner's interface (vLLM >= 0.3x); older releases have the V1 runner only
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor
except ImportError:  # pragma: no cover - depends on the installed vLLM
    V2LogitsProcessor = object

from antidistill.engines.marking import EngineMarker, SlotMarker, check_request
from antidistill.errors import AntidistillError
from antidistill.keys import MasterKey
from antidistill.settings import Settings, get_settings
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import Watermark

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState

# under vLLM's logger, whose handlers print in the engine's log (vLLM configures no others)
log = logging.getLogger("vllm.antidistill")

FQCN = "antidistill.engines.vllm:AntidistillLogitsProcessor"
_ENTRY_POINT_GROUP = "vllm.logits_processors"

_claims: dict[int, int] = {}
_claims_lock = threading.Lock()


def _settings() -> tuple[Settings, WatermarkConfig]:
    try:
        settings = get_settings()
        return settings, settings.watermark_config()
    except (AntidistillError, ValueError) as exc:
        raise ValueError(f"antidistill: {exc}") from None


def _named(vllm_config: VllmConfig) -> int:
    """How many times ``--logits-processors`` names this class."""
    names = getattr(vllm_config.model_config, "logits_processors", None) or ()
    return sum(1 for n in names if n is AntidistillLogitsProcessor or n == FQCN)


def _registered() -> int:
    """How many ``vllm.logits_processors`` entry points load this class."""
    return sum(1 for ep in entry_points(group=_ENTRY_POINT_GROUP) if ep.value.replace(" ", "") == FQCN)


def _claim(vllm_config: VllmConfig) -> bool:
    """Whether this instance marks: vLLM builds the class once per entry point plus once per
    ``--logits-processors`` name, all for one batch; exactly one of those instances may mark it."""
    copies = max(1, _registered() + _named(vllm_config))
    with _claims_lock:
        built = _claims.get(id(vllm_config), 0)
        _claims[id(vllm_config)] = built + 1
    return built % copies == 0


class AntidistillLogitsProcessor(LogitsProcessor, V2LogitsProcessor):  # type: ignore[misc]
    """Marks each row of vLLM's batch with its request's account key and the provider key (see the module), under
    the V1 model runner (``update_state`` + ``apply(logits)``) or the V2 one (``add_request`` +
    ``apply(logits, ctx)``)."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        settings, config = _settings()
        try:
            check_request(sampling_params, config, settings.allow_unmarked)
        except AntidistillError as exc:
            raise ValueError(str(exc)) from None

    def __init__(self, vllm_config: VllmConfig, *args: Any) -> None:
        self.active = _claim(vllm_config)
        settings, config = _settings()
        self.req_states: LogitsProcRequestState | None = args[0] if len(args) == 1 else None
        self.device = self.req_states.device if self.req_states is not None else args[0]
        scheduler = getattr(vllm_config, "scheduler_config", None)
        if self.req_states is None and getattr(scheduler, "async_scheduling", False) and not _named(vllm_config):
            raise ValueError(
                "antidistill: with async scheduling vLLM gives a logits processor the last output token only when "
                f"--logits-processors names it: start with --logits-processors {FQCN} or --no-async-scheduling"
            )
        try:
            master = MasterKey.load(settings, create=False)
        except AntidistillError as exc:
            raise ValueError(f"antidistill: {exc}") from None
        kind = EngineMarker if self.req_states is None else SlotMarker
        self.marker = kind(Watermark(config), master, settings.allow_unmarked)
        if self.active:
            log.info(
                "antidistill marks with %s (%s model runner)%s",
                config.to_dict(),
                "V1" if self.req_states is None else "V2",
                " (requests without antidistill arguments are served unmarked)" if settings.allow_unmarked else "",
            )
        else:
            log.info("antidistill: the processor is loaded more than once; another copy marks, this one stands by")

    # ---- V1 model runner ---------------------------------------------------------------------------------
    def is_argmax_invariant(self) -> bool:
        # a green-list bias moves the argmax; a sampling member allows one token only
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.active:
            self.marker.update(batch_update)

    # ---- V2 model runner ---------------------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        if not self.active:
            return False
        assert isinstance(self.marker, SlotMarker)
        return self.marker.add(req_idx, sampling_params)

    def apply_staged_writes(self) -> None:
        return None

    def _apply_v2(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        marker, states = self.marker, self.req_states
        assert isinstance(marker, SlotMarker) and states is not None
        slots_np = np.asarray(ctx.idx_mapping_np, dtype=np.int64)
        if not marker.marks_any(slots_np):
            return logits
        if logits.shape[0] != len(slots_np):
            raise RuntimeError("antidistill marks one logits row per request: speculative decoding is not supported")
        h = marker.config.context_width
        pos = ctx.pos.to(torch.int64)
        slots = ctx.idx_mapping.to(torch.int64)
        back = torch.arange(h - 1, 0, -1, device=pos.device, dtype=torch.int64)
        where = (pos[:, None] - back[None, :]).clamp_min(0)  # positions pos-h+1 .. pos-1; pos is the input token
        history = states.all_token_ids.gpu[slots[:, None], where].to(torch.int64)
        block = torch.cat([history, ctx.input_ids.to(torch.int64)[:, None], pos[:, None]], dim=1).cpu().numpy()
        contexts, p = block[:, :h], block[:, h]
        prefill = np.asarray(states.prefill_len.np, dtype=np.int64)[slots_np]
        prompt = np.asarray(states.prompt_len.np, dtype=np.int64)[slots_np]
        # a whole context of the answer's own tokens (see WatermarkLogitsProcessor), and not inside a prefill
        ready = (p + 1 - prompt >= h) & (p + 1 >= prefill)
        return marker.apply_slots(logits, slots_np, contexts, ready)

    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        if not self.active:
            return logits
        if ctx is not None:
            return self._apply_v2(logits, ctx)
        out: Any = self.marker.apply(logits)
        return out  # type: ignore[no-any-return]
