"""Training a student on harvested pairs: sequence-level distillation on the CPU.

Sequence-level knowledge distillation (Kim & Rush 2016, https://arxiv.org/abs/1606.07947) is supervised
fine-tuning on the teacher's sampled answers: the student maximises the likelihood of each answer given its
prompt, rendered with the teacher's chat template, with the loss on the answer tokens only. This is the attack
that carries a watermark into a student ("radioactivity", Sander et al. 2024, https://arxiv.org/abs/2402.14904):
the green-list bias in the answers' next-token statistics is exactly what the student fits.

Methods (all start from the teacher's weights, as a distiller who copies an open model's style would; see
``benchmarks/distill_training.py`` for what each costs and learns on this machine):

* ``full``: every weight trained;
* ``lora`` (the default): low-rank adapters (Hu et al. 2021, https://arxiv.org/abs/2106.09685) on every linear
  layer of the last ``k`` blocks (default 6; ``k`` = depth: every block), the frozen bottom cached as for
  ``last-k``, merged into the weights before saving;
* ``last-k``: only the last ``k`` blocks and the final norm are trained. The frozen blocks below run once per
  example without autograd and their output is cached, so later epochs run only ``k`` blocks;
* ``subset``: a smaller student made of ``n_layers`` evenly spaced blocks of the teacher (always the first and
  the last), fully trained.

The result is saved with ``save_pretrained`` (weights merged, tokenizer alongside) so that any transformers
loader, and the forensic scan, can load the student like any other model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from antidistill.errors import InputError
from antidistill.models.embedded import load_causal_lm, load_tokenizer, resolve_model
from antidistill.redteam.data import Pair
from antidistill.settings import get_settings

log = logging.getLogger(__name__)

METHODS = ("full", "lora", "last-k", "subset")
#: LoRA on the last 6 blocks: the largest held-out loss drop per CPU budget in benchmarks/distill_training.py
#: (2026-11-29, 48 pairs, 150 s: lora-last-6 -0.044, lora-all -0.037, last-2 -0.035, last-6 -0.024 nats/token;
#: 96 pairs, 120 s: lora-last-6 -0.041, full -0.035, last-2 -0.024)
DEFAULT_METHOD = "lora"
#: AdamW learning rates (linear warmup, then linear decay to a tenth)
DEFAULT_LR = {"full": 5e-5, "lora": 1e-3, "last-k": 1e-4, "subset": 1e-4}
#: blocks trained by ``last-k`` and adapted by ``lora`` (capped at the model's depth; all blocks: ``k = depth``)
DEFAULT_K = 6
IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One tokenized pair: ``input_ids`` and ``labels`` (``-100`` on the prompt), same length."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_loss(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE)


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a user prompt through the tokenizer's chat template, ready for the answer to follow."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)
    ids = list(tokenizer(f"User: {prompt}\nAssistant: ", add_special_tokens=True)["input_ids"])
    return ids


#: answer token ids -> a bool per token, True where the training loss is dropped (see ``train_student``)
LossMask = Callable[[Sequence[int]], Any]


def encode_pair(tokenizer: Any, pair: Pair, max_len: int, loss_mask: LossMask | None = None) -> Example | None:
    """The pair as a training example, the answer truncated to fit ``max_len``; ``None`` if nothing fits.

    An answer that ended (``finish_reason == "stop"``) is followed by the end-of-sequence token, so the student
    also learns where answers end; an answer cut off at ``max_tokens`` is not. ``loss_mask`` (answer ids -> bools)
    takes the loss off the answer tokens it marks (their label becomes ``-100``; they stay in the input).
    """
    prompt = encode_prompt(tokenizer, pair.prompt)
    answer = list(tokenizer(pair.response, add_special_tokens=False)["input_ids"])
    drop = [bool(x) for x in loss_mask(answer)] if loss_mask is not None else [False] * len(answer)
    if len(drop) != len(answer):
        raise InputError(f"loss_mask gave {len(drop)} values for {len(answer)} answer tokens")
    if pair.finish_reason == "stop" and tokenizer.eos_token_id is not None:
        answer.append(int(tokenizer.eos_token_id))
        drop.append(False)
    room = max_len - len(prompt)
    if room < 1 or not answer:
        return None
    answer, drop = answer[:room], drop[:room]
    labels = [IGNORE if d else t for t, d in zip(answer, drop, strict=True)]
    return Example(prompt + answer, [IGNORE] * len(prompt) + labels)


def encode_pairs(
    tokenizer: Any, pairs: Sequence[Pair], max_len: int, loss_mask: LossMask | None = None
) -> list[Example]:
    examples = [e for e in (encode_pair(tokenizer, p, max_len, loss_mask) for p in pairs) if e is not None]
    if len(examples) < len(pairs):
        log.info(
            "%d of %d pairs did not fit in max_len=%d and were left out",
            len(pairs) - len(examples),
            len(pairs),
            max_len,
        )
    return examples


def length_batches(examples: Sequence[Example], batch_size: int) -> list[list[int]]:
    """Indices of ``examples`` in batches of similar length (sorted by length, then cut), to pad little."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(examples: Sequence[Example], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded ``(input_ids, attention_mask, labels)`` tensors."""

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
    return ids, mask, labels


# ---- the model's parts --------------------------------------------------------------------------------------
def _parts(model: Any) -> tuple[Any, Any]:
    """``(decoder, lm_head)`` of a Llama-like causal LM (``model.model.layers``, ``model.model.norm``)."""
    decoder = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if decoder is None or head is None or not hasattr(decoder, "layers") or not hasattr(decoder, "norm"):
        raise InputError(f"{type(model).__name__} is not a Llama-like causal LM (model.layers, model.norm, lm_head)")
    return decoder, head


@contextlib.contextmanager
def _blocks(model: Any, start: int, stop: int, final_norm: bool) -> Iterator[Any]:
    """The decoder temporarily reduced to blocks ``[start, stop)`` (with or without its final norm).

    The decoder's own forward then runs on ``inputs_embeds`` that are the hidden states entering block
    ``start``: masks and rotary positions are computed as usual, which is what lets the frozen bottom of a
    ``last-k`` student run once and the top run alone.
    """

    decoder, _ = _parts(model)
    layers, norm, n = decoder.layers, decoder.norm, decoder.config.num_hidden_layers
    decoder.layers = torch.nn.ModuleList(list(layers)[start:stop])
    decoder.config.num_hidden_layers = stop - start
    if not final_norm:
        decoder.norm = torch.nn.Identity()
    try:
        yield decoder
    finally:
        decoder.layers, decoder.norm, decoder.config.num_hidden_layers = layers, norm, n


def _masked_nll(model: Any, hidden: Any, labels: Any) -> tuple[Any, int]:
    """Summed next-token NLL over the labelled positions, and their number.

    The output layer runs only on positions that carry a loss (the answer), not on the prompt or the padding:
    with a 49k vocabulary it is a large share of a small model's compute.
    """

    _, head = _parts(model)
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = head(hidden[:, :-1][keep])
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return loss, int(keep.sum())


def evaluate_loss(model: Any, tokenizer: Any, pairs: Sequence[Pair], max_len: int = 256, batch_size: int = 8) -> float:
    """Mean next-token NLL (nats per answer token) of the answers of ``pairs`` under ``model``.

    Lower is closer to the teacher: on held-out teacher answers, a student's drop in this loss is what it
    learnt from distillation.
    """

    examples = encode_pairs(tokenizer, pairs, max_len)
    if not examples:
        raise InputError("no pair fits in max_len")
    decoder, _ = _parts(model)
    pad = _pad_id(tokenizer)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for idx in length_batches(examples, batch_size):
            ids, mask, labels = collate([examples[i] for i in idx], pad)
            hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            loss, n = _masked_nll(model, hidden, labels)
            total += float(loss)
            count += n
    model.train(was_training)
    return total / max(count, 1)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


# ---- students -----------------------------------------------------------------------------------------------
def subset_layers(n_total: int, n_keep: int) -> list[int]:
    """``n_keep`` evenly spaced block indices of ``n_total``, always the first and the last.

    Example:
        >>> subset_layers(30, 4)
        [0, 10, 19, 29]
    """
    if not 1 <= n_keep <= n_total:
        raise InputError(f"n_layers must be in [1, {n_total}], got {n_keep}")
    if n_keep == 1:
        return [n_total - 1]
    return sorted({round(i * (n_total - 1) / (n_keep - 1)) for i in range(n_keep)})


def make_subset_student(model: Any, n_layers: int) -> Any:
    """The teacher reduced, in place, to ``n_layers`` of its blocks (see :func:`subset_layers`)."""

    decoder, _ = _parts(model)
    keep = subset_layers(len(decoder.layers), n_layers)
    decoder.layers = torch.nn.ModuleList([decoder.layers[i] for i in keep])
    for i, layer in enumerate(decoder.layers):  # the KV cache indexes blocks by position
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = i
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return model


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _apply_lora(model: Any, r: int, k: int | None) -> Any:

    n = len(_parts(model)[0].layers)
    layers = None if k is None else list(range(n - k, n))
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


# ---- training -----------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a training run did and how well the student learned.

    Args:
        method: ``full``, ``lora``, ``last-k`` or ``subset``.
        out_dir: where the merged student and its tokenizer were saved (``None``: not saved).
        params: the training parameters (lr, epochs, k, ...), for the record.
        examples: training examples used (pairs that fit ``max_len``).
        steps: optimizer steps done.
        epochs_done: epochs done (fractional if stopped by ``max_seconds``).
        tokens: tokens the model ran on during training (prompt and answer, no padding).
        loss_tokens: answer tokens that carried the loss.
        seconds: wall time of the training loop (no evaluation, no saving).
        cpu_seconds: CPU time of this process during the training loop (all threads; less sensitive than wall
            time to other processes competing for the cores).
        losses: the training loss of each step (mean NLL per answer token).
        heldout_loss_before: mean NLL per answer token on the held-out pairs before training (``None``: none).
        heldout_loss_after: the same after training.
        trainable_params: parameters the optimizer updated.
        total_params: parameters of the student.
    """

    method: str
    out_dir: Path | None
    params: dict[str, Any]
    examples: int
    steps: int
    epochs_done: float
    tokens: int
    loss_tokens: int
    seconds: float
    cpu_seconds: float
    losses: list[float] = field(repr=False)
    heldout_loss_before: float | None
    heldout_loss_after: float | None
    trainable_params: int
    total_params: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def loss_tokens_per_s(self) -> float:
        return self.loss_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        d["tokens_per_s"] = self.tokens_per_s
        d["loss_tokens_per_s"] = self.loss_tokens_per_s
        return d


def load_teacher(model_path: str | None = None, cache_dir: Path | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the teacher (the embedded model by default), in float32 on the CPU."""

    if cache_dir is None:
        cache_dir = get_settings().cache_dir
    source = resolve_model(model_path)
    tokenizer = load_tokenizer(source, cache_dir)
    model, _ = load_causal_lm(source, cache_dir)
    return model, tokenizer


def train_student(  # noqa: C901
    pairs: Sequence[Pair],
    method: str = DEFAULT_METHOD,
    *,
    model: Any = None,
    tokenizer: Any = None,
    base: str | None = None,
    epochs: float = 1.0,
    lr: float | None = None,
    max_len: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    out_dir: str | Path | None = None,
    k: int | None = None,
    n_layers: int | None = None,
    lora_r: int = 16,
    heldout: Sequence[Pair] = (),
    max_seconds: float | None = None,
    warmup_steps: int = 2,
    on_step: Callable[[int, int, float], None] | None = None,
    loss_mask: LossMask | None = None,
) -> TrainResult:
    """Distil a student from prompt/response pairs.

    Args:
        pairs: the training pairs (the teacher's answers).
        method: ``full``, ``lora``, ``last-k`` or ``subset`` (see the module docstring).
        model: the starting model (the teacher; modified in place). Default: loaded from ``base``.
        tokenizer: its tokenizer (required with ``model``).
        base: a model path for :func:`load_teacher` (``None``: the embedded model).
        epochs: passes over the data (a fraction stops part-way).
        lr: AdamW learning rate (default: ``DEFAULT_LR[method]``), warmed up over ``warmup_steps`` steps and
            decayed linearly to a tenth.
        max_len: longest example in tokens (answers are truncated to fit).
        batch_size: examples per step; batches group similar lengths and are visited in a seeded order.
        seed: seeds the batch order and torch.
        out_dir: save the merged student and the tokenizer here (``None``: do not save).
        k: the last ``k`` blocks are trained (``last-k``) or adapted (``lora``); default ``DEFAULT_K`` (6), capped
            at the model's depth; ``k`` = depth gives LoRA on every block.
        n_layers: blocks of a ``subset`` student (default: half the teacher's).
        lora_r: LoRA rank.
        heldout: pairs to measure the loss on before and after (not trained on).
        max_seconds: stop training after this much wall time (the demo's budget).
        on_step: called as ``on_step(step, total_steps, loss)`` after each step.
        loss_mask: answer token ids -> bools; the loss is dropped on the tokens it marks (the neutralisation
            attack's mask of estimated-green tokens, :func:`antidistill.redteam.attacks.loss_mask`). The held-out
            loss is measured without it.

    Example:
        >>> r = train_student(load_pairs("pairs.jsonl"), "lora", out_dir="student")  # doctest: +SKIP
        >>> r.heldout_loss_after < r.heldout_loss_before                                # doctest: +SKIP
    """

    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not epochs > 0:
        raise InputError(f"epochs must be > 0, got {epochs}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if max_len < 8:
        raise InputError(f"max_len must be >= 8, got {max_len}")
    if not pairs:
        raise InputError("no training pairs")
    if model is None:
        model, tokenizer = load_teacher(base)
    elif tokenizer is None:
        raise InputError("a model needs its tokenizer")
    lr = DEFAULT_LR[method] if lr is None else lr
    if not lr > 0:
        raise InputError(f"lr must be > 0, got {lr}")
    torch.manual_seed(seed)
    n_blocks = len(_parts(model)[0].layers)
    k = (min(DEFAULT_K, n_blocks) if k is None else k) if method in ("last-k", "lora") else None
    if k is not None and not 1 <= k <= n_blocks:
        raise InputError(f"k must be in [1, {n_blocks}], got {k}")
    params: dict[str, Any] = {
        "lr": lr,
        "epochs": epochs,
        "max_len": max_len,
        "batch_size": batch_size,
        "seed": seed,
        "k": k,
        "warmup_steps": warmup_steps,
    }

    examples = encode_pairs(tokenizer, pairs, max_len, loss_mask)
    if not examples:
        raise InputError(f"no training pair fits in max_len={max_len}")
    if loss_mask is not None:
        unmasked = encode_pairs(tokenizer, pairs, max_len)
        params["loss_masked_tokens"] = sum(e.n_loss for e in unmasked) - sum(e.n_loss for e in examples)
        if not any(e.n_loss for e in examples):
            raise InputError("the loss mask leaves no answer token to train on")

    student = model
    if method == "subset":
        n_layers = max(1, n_blocks // 2) if n_layers is None else n_layers
        params["n_layers"] = n_layers
        student = make_subset_student(model, n_layers)
        n_blocks = n_layers
    # measured on the student as it starts (for ``subset``: the cut-down teacher, before any training)
    before = evaluate_loss(student, tokenizer, heldout, max_len, batch_size) if heldout else None
    total_params = sum(p.numel() for p in student.parameters())
    for p in student.parameters():
        p.requires_grad_(method in ("full", "subset"))
    split_at = 0
    if method == "last-k":
        split_at = n_blocks - k
        decoder, _ = _parts(student)
        for p in list(decoder.layers[split_at:].parameters()) + list(decoder.norm.parameters()):
            p.requires_grad_(True)
    if method == "lora":
        params["lora_r"] = lora_r
        student = _apply_lora(student, lora_r, None if k == n_blocks else k)
        split_at = n_blocks - k  # the blocks below the adapters stay frozen: cached as for last-k
    causal = student.get_base_model() if method == "lora" else student  # LoRA layers are injected in place
    trainable = [p for p in student.parameters() if p.requires_grad]

    batches = length_batches(examples, batch_size)
    total_steps = max(1, math.ceil(epochs * len(batches)))
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)

    def lr_factor(step: int, elapsed: float) -> float:
        # warmup, then linear decay to lr / 10 over the steps or, with a time budget, over the time if that
        # runs out first: a run stopped by max_seconds still ends annealed
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if max_seconds is not None:
            done = max(done, elapsed / max_seconds)
        return 1.0 - 0.9 * min(done, 1.0)

    pad = _pad_id(tokenizer)
    rng = random.Random(seed)
    cache: dict[int, Any] = {}  # hidden states entering block split_at (frozen below), per batch
    losses: list[float] = []
    tokens = loss_tokens = step = 0
    causal.train()
    t0, cpu0 = time.perf_counter(), time.process_time()
    stopped = False
    while step < total_steps and not stopped:
        order = list(range(len(batches)))
        rng.shuffle(order)
        for b in order:
            if step >= total_steps:
                break
            ids, mask, labels = collate([examples[i] for i in batches[b]], pad)
            if split_at > 0:
                if b not in cache:
                    with torch.no_grad(), _blocks(causal, 0, split_at, final_norm=False) as bottom:
                        cache[b] = bottom(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                with _blocks(causal, split_at, n_blocks, final_norm=True) as top:
                    hidden = top(inputs_embeds=cache[b], attention_mask=mask, use_cache=False).last_hidden_state
            else:
                decoder, _ = _parts(causal)
                hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            loss_sum, n = _masked_nll(causal, hidden, labels)
            loss = loss_sum / max(n, 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(step, time.perf_counter() - t0)
            opt.step()
            step += 1
            tokens += int(mask.sum())
            loss_tokens += n
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, total_steps, losses[-1])
            if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                stopped = True
                break
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    cache.clear()

    if method == "lora":
        student = student.merge_and_unload()
        causal = student
    causal.eval()
    for p in causal.parameters():
        p.requires_grad_(False)
    after = evaluate_loss(causal, tokenizer, heldout, max_len, batch_size) if heldout else None
    result = TrainResult(
        method,
        None,
        params,
        len(examples),
        step,
        step / len(batches),
        tokens,
        loss_tokens,
        seconds,
        cpu_seconds,
        losses,
        before,
        after,
        sum(p.numel() for p in trainable),
        total_params,
    )
    if out_dir is not None:
        result.out_dir = save_student(causal, tokenizer, out_dir, result)
    return result


def save_student(model: Any, tokenizer: Any, out_dir: str | Path, result: TrainResult | None = None) -> Path:
    """Save a (merged) student and its tokenizer with ``save_pretrained``, plus ``distill.json`` (how it was
    trained)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model.config, "quantization_config"):  # a teacher loaded from GGUF carries this marker
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    model.config.use_cache = True
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if result is not None:
        info = result.to_dict()
        info.pop("losses")
        info["out_dir"] = str(out)
        (out / "distill.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return out
