"""The wire format between a gateway and an engine that marks: the request's antidistill arguments by name.

A request names its keys, never carries them: ``vllm_xargs`` (vLLM's per-request extra arguments,
``SamplingParams.extra_args`` in the engine) hold the account id, the account's key version, the provider key's
version and, optionally, the watermark configuration the sender will record (JSON text of
``WatermarkConfig.to_dict()``; vLLM accepts strings, numbers and lists there, not objects). :func:`engine_xargs`
writes them (the gateway's vLLM backend); :func:`antidistill.engines.marking.parse_xargs` reads and checks them
(the engine's plugin). Both live in this package so the two ends cannot drift apart; this module imports neither
torch nor an engine, so a gateway installed without the ``model`` extra can use it.

Example:
    >>> engine_xargs("alice", 2, 1)
    {'antidistill_account': 'alice', 'antidistill_key_version': 2, 'antidistill_provider_version': 1}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from antidistill.watermark.config import WatermarkConfig

#: the request's extra arguments (vLLM: ``vllm_xargs`` in the request body, ``SamplingParams.extra_args``)
XARG_ACCOUNT = "antidistill_account"
XARG_KEY_VERSION = "antidistill_key_version"
XARG_PROVIDER_VERSION = "antidistill_provider_version"
XARG_WATERMARK = "antidistill_watermark"
XARGS = (XARG_ACCOUNT, XARG_KEY_VERSION, XARG_PROVIDER_VERSION, XARG_WATERMARK)
XARG_PREFIX = "antidistill_"

#: vLLM's threshold: a temperature below it is greedy decoding (the engine marks such rows with
#: ``Watermark.greedy``, and whoever records the exchange must name that configuration)
SAMPLING_EPS = 1e-5


def is_greedy(temperature: float) -> bool:
    """Whether an engine decodes a request of this temperature greedily (vLLM's rule)."""
    return temperature < SAMPLING_EPS


def engine_xargs(
    account: str, key_version: int, provider_version: int, config: WatermarkConfig | None = None
) -> dict[str, Any]:
    """The ``vllm_xargs`` that ask an engine to mark with (account, key version) and the provider key version;
    with ``config``, also the configuration the sender expects (the engine refuses the request on a mismatch)."""
    out: dict[str, Any] = {
        XARG_ACCOUNT: account,
        XARG_KEY_VERSION: int(key_version),
        XARG_PROVIDER_VERSION: int(provider_version),
    }
    if config is not None:
        out[XARG_WATERMARK] = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return out
