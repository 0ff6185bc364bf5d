"""The local backend: a transformers causal LM on the CPU, batched, each row watermarked with its own keys."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessorList

from antidistill.models.embedded import LoadStats, ModelSource, load_causal_lm, load_tokenizer, resolve_model
from antidistill.settings import get_settings
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import MarkKeys, Watermark
from antidistill.watermark.processor import WatermarkLogitsProcessor

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Completion:
    """One generated completion.

    Args:
        text: the decoded completion (special tokens removed).
        token_ids: the generated token ids (without padding and the end-of-sequence token).
        prompt_tokens: the number of prompt tokens.
        finish_reason: ``"stop"`` (end of sequence) or ``"length"`` (``max_new_tokens`` reached).
        key_id: the account key that marked it, or ``None`` if unmarked.
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    key_id: str | None


class LocalModel:
    """A loaded model, its tokenizer and the watermark. Thread-safe: one ``generate`` runs at a time.

    Args:
        model: a transformers causal LM.
        tokenizer: its tokenizer.
        watermark: the watermark configuration used to mark rows that carry keys.
        name: display name.

    Example:
        >>> m = LocalModel.load()                                         # doctest: +SKIP
        >>> m.generate(["Hello"], [None], max_new_tokens=8)[0].text      # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        watermark: Watermark | None = None,
        name: str = "model",
        load_stats: LoadStats | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.watermark = watermark or Watermark(WatermarkConfig())
        self.name = name
        self.load_stats = load_stats
        self._lock = threading.Lock()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"

    @classmethod
    def load(
        cls, path: str | None = None, cache_dir: Path | None = None, config: WatermarkConfig | None = None
    ) -> LocalModel:
        """Load the embedded model (``path=None``) or a local model directory / GGUF file."""
        if cache_dir is None:
            cache_dir = get_settings().cache_dir
        source: ModelSource = resolve_model(path)
        tokenizer = load_tokenizer(source, cache_dir)
        model, stats = load_causal_lm(source, cache_dir)
        return cls(model, tokenizer, Watermark(config), source.name, stats)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def encode_prompt(self, prompt: str | Messages, chat: bool = True) -> list[int]:
        """Token ids of a prompt: chat messages (or a string as one user message) through the chat template."""
        if chat and getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(out, dict) or hasattr(out, "keys"):
                out = out["input_ids"]
            return list(out)
        if not isinstance(prompt, str):
            raise ValueError("a raw (non-chat) prompt must be a string")
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def generate(
        self,
        prompts: Sequence[str | Messages],
        marks: Sequence[MarkKeys | None],
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int | None = None,
        min_new_tokens: int = 0,
        chat: bool = True,
        logits_processor_extra: Sequence[Any] = (),
    ) -> list[Completion]:
        """Generate one completion per prompt in a single batch; row ``i`` is marked with ``marks[i]``."""

        if len(prompts) != len(marks):
            raise ValueError(f"{len(prompts)} prompts but {len(marks)} marks")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        encoded = [self.encode_prompt(p, chat) for p in prompts]
        width = max(len(e) for e in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], dtype=torch.long)
        attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], dtype=torch.long)
        procs = LogitsProcessorList(list(logits_processor_extra))
        if any(m is not None for m in marks):
            procs.append(
                WatermarkLogitsProcessor(
                    self.watermark, marks, temperature=temperature, top_p=top_p, answer_start=input_ids.shape[-1]
                )
            )
        sample = temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample}
        if sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                logits_processor=procs,
                pad_token_id=pad,
                **kwargs,
            )
        eos = self._eos_ids()
        results = []
        for i, e in enumerate(encoded):
            gen = out[i, width:].tolist()
            finish = "length"
            for j, t in enumerate(gen):
                if t in eos:
                    gen, finish = gen[:j], "stop"
                    break
            text = self.tokenizer.decode(gen, skip_special_tokens=True)
            mark = marks[i]
            results.append(Completion(text, gen, len(e), finish, mark.account.key_id if mark else None))
        return results

    def step_entropies(
        self, prompts: Sequence[str | Messages], completions: Sequence[Sequence[int]], chat: bool = True
    ) -> list[np.ndarray]:
        """The entropy (nats) of the model's own next-token distribution at each completion token, no watermark.

        ``out[i][j]`` is the entropy of the raw logits that chose ``completions[i][j]`` given the prompt and the
        tokens before it: what ``kgw-entropy`` tested against its threshold while generating. A detector may keep
        the positions at or above the threshold (``Detector.detect(..., keep=...)``): the selection does not
        depend on the key, so p-values stay exact. One padded forward pass per batch of completions.
        """
        from antidistill.watermark.processor import step_entropy

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        out: list[np.ndarray] = []
        for start in range(0, len(prompts), 8):
            rows = [self.encode_prompt(p, chat) for p in prompts[start : start + 8]]
            comps = [list(c) for c in completions[start : start + 8]]
            width = max(len(r) + len(c) for r, c in zip(rows, comps, strict=True))
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, (r, c) in enumerate(zip(rows, comps, strict=True)):
                seq = r + c
                ids[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
            with self._lock, torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            for i, (r, c) in enumerate(zip(rows, comps, strict=True)):
                if not c:
                    out.append(np.zeros(0))
                    continue
                steps = logits[i, len(r) - 1 : len(r) - 1 + len(c)]
                out.append(step_entropy(steps).numpy().astype(np.float64))
        return out

    def _eos_ids(self) -> set[int]:
        ids = set()
        gc_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for v in (gc_eos, self.tokenizer.eos_token_id):
            if isinstance(v, int):
                ids.add(v)
            elif isinstance(v, (list, tuple)):
                ids.update(int(x) for x in v)
        return ids
