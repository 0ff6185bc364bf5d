"""The vLLM backend: a vLLM server with antidistill's plugin marks, the gateway names the keys and records them.

The engine (``python -m vllm.entrypoints.openai.api_server --model DIR --logits-processors
antidistill.engines.vllm:AntidistillLogitsProcessor``, with ``ANTIDISTILL_MASTER_KEY`` in its environment) derives
each row's keys itself (:mod:`antidistill.engines.vllm`). This backend is the upstream proxy
(:class:`~antidistill.models.upstream.UpstreamBackend`: the body passed through, streams relayed chunk by chunk)
plus three things:

* each request carries its key *reference* in ``vllm_xargs`` (:func:`~antidistill.engines.xargs.engine_xargs`:
  the account id, its key version, the provider key's version and the deployment's watermark configuration as
  JSON). No key material crosses the network. Whatever ``vllm_xargs`` the client sent is replaced, and
  ``logits_processors`` (vLLM's per-request processors) is dropped, so a client can neither borrow another
  account's keys nor switch the mark off;
* the engine is asked for the token ids (``return_token_ids``) so the gateway's sample check scores exactly the
  tokens the engine chose (clients never see them: the gateway writes its own response bodies);
* the audit record's ``watermark`` has the local backend's shape (``key_id``, ``provider_key_id``, ``config``), so
  detection, attribution and the scans read it with its own configuration, plus ``"marked_by": "engine"``.
  A greedy request (temperature below vLLM's 1e-5) under a sampling member is marked by the engine with the
  green-list fallback (``Watermark.greedy``), and the record names that configuration, as the local backend's does.

The configuration the gateway sends is its own (``ANTIDISTILL_WATERMARK_*``); the engine refuses a request whose
configuration is not the one it marks with (HTTP 400, passed on to the client in OpenAI's error shape), so a
record never names a configuration that did not mark the text. A request without a mark (``--no-watermark``) is
sent without ``vllm_xargs`` and is served only by an engine started with ``ANTIDISTILL_ALLOW_UNMARKED=1``.

This module does not import vLLM (import-linter: only :mod:`antidistill.engines.vllm` does).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from antidistill.engines.xargs import engine_xargs, is_greedy
from antidistill.models.base import GenerationRequest
from antidistill.models.upstream import UpstreamBackend
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark

log = logging.getLogger(__name__)

#: the request's fields a client may not set through the gateway: the engine's marking arguments are the
#: gateway's to write, and per-request logits processors could undo the mark
ENGINE_ONLY_FIELDS = ("vllm_xargs", "logits_processors")

#: what the audit record says marked a completion served by this backend
MARKED_BY = "engine"


class VLLMBackend(UpstreamBackend):
    """Forwards to a vLLM server that marks with antidistill's plugin, naming each request's keys.

    Args:
        url: the engine's base URL (with or without ``/v1``).
        config: the deployment's watermark configuration (the engine's ``ANTIDISTILL_WATERMARK_*`` must match).
        api_key, model, timeout, transport: as for :class:`~antidistill.models.upstream.UpstreamBackend`.

    Example:
        >>> from antidistill.keys import MasterKey
        >>> from antidistill.watermark.marker import MarkKeys
        >>> master = MasterKey(b"k" * 32)
        >>> b = VLLMBackend("http://127.0.0.1:8001/v1", WatermarkConfig(scheme="gumbel"))
        >>> mark = MarkKeys(master.account_key("alice", 2), master.provider_key(1))
        >>> b.xargs(mark)["antidistill_key_version"], b.record(mark, temperature=0.0)["config"]["scheme"]
        (2, 'antidistill-v1')
    """

    name = "vllm"
    marks = True
    marks_remotely = True

    def __init__(
        self,
        url: str,
        config: WatermarkConfig,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, model, timeout, transport)
        self.model_id = model or "vllm"
        self.config = config
        self._greedy_config = Watermark(config).greedy.config

    def _announce(self) -> None:
        log.info(
            "backend=vllm (%s): the engine marks each completion with the keys named in vllm_xargs (%s)",
            self.url,
            self.config.to_dict(),
        )

    def xargs(self, mark: MarkKeys) -> dict[str, Any]:
        """The ``vllm_xargs`` of a request marked with ``mark``: ids and versions only."""
        account = mark.account
        if account.account is None:
            raise ValueError("the vLLM backend marks with account keys only (the engine derives them by account id)")
        provider_version = mark.provider.version if mark.provider is not None else 1
        return engine_xargs(account.account, account.version, provider_version, self.config)

    def record(self, mark: MarkKeys, temperature: float) -> dict[str, Any]:
        """The audit record's ``watermark`` of a completion the engine marked with ``mark`` at ``temperature``."""
        config = self._greedy_config if is_greedy(temperature) else self.config
        return {
            "key_id": mark.account.key_id,
            "provider_key_id": mark.provider.key_id if mark.provider is not None else None,
            "config": config.to_dict(),
            "marked_by": MARKED_BY,
        }

    def _body(self, request: GenerationRequest, stream: bool) -> tuple[str, dict[str, Any]]:
        path, body = super()._body(request, stream)
        for name in ENGINE_ONLY_FIELDS:
            body.pop(name, None)
        if request.mark is not None:
            body["vllm_xargs"] = self.xargs(request.mark)
        body["return_token_ids"] = True
        return path, body

    def _watermark(self, request: GenerationRequest) -> dict[str, Any]:
        if request.mark is None:
            return {"status": "unwatermarked", "reason": "request not marked"}
        return self.record(request.mark, request.temperature)
