"""Student training on a tiny random Llama: every method learns, saves a loadable model, freezes what it says."""

from __future__ import annotations

import itertools
import json

import pytest

from antidistill.redteam.data import Pair, save_pairs
from antidistill.redteam.train import (
    collate,
    encode_pair,
    encode_pairs,
    evaluate_loss,
    length_batches,
    subset_layers,
    train_student,
)

from .conftest import run_cli, tiny_llama, tiny_pairs

LRS = {"full": 1e-2, "lora": 2e-2, "last-k": 1e-2, "subset": 1e-2}
#: held-out loss drop each method must reach on the tiny task (lora and last-k leave the random embeddings as
#: they are, so they learn less of it)
DROP = {"full": 0.5, "lora": 0.2, "last-k": 0.3, "subset": 0.5}


def test_encoding_puts_the_loss_on_the_answer_only(tiny_tokenizer):
    tok = tiny_tokenizer
    stop = encode_pair(tok, Pair("tell me about red cats", "the cats are red", "stop"), max_len=64)
    prompt_ids = tok.apply_chat_template(
        [{"role": "user", "content": "tell me about red cats"}], add_generation_prompt=True, tokenize=True
    )
    prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
    answer = tok("the cats are red", add_special_tokens=False)["input_ids"]
    assert stop.input_ids == prompt_ids + answer + [tok.eos_token_id]
    assert stop.labels == [-100] * len(prompt_ids) + answer + [tok.eos_token_id]
    cut = encode_pair(tok, Pair("tell me about red cats", "the cats are red", "length"), max_len=64)
    assert cut.labels[-1] == answer[-1]  # an answer cut off at max_tokens does not teach ending there
    short = encode_pair(tok, Pair("tell me about red cats", "the cats are red", "length"), len(prompt_ids) + 2)
    assert short.labels[len(prompt_ids) :] == answer[:2]
    assert encode_pair(tok, Pair("tell me about red cats", "x", "stop"), len(prompt_ids)) is None


def test_batches_group_lengths_and_pad_right(tiny_tokenizer):
    examples = encode_pairs(tiny_tokenizer, tiny_pairs(20), 64)
    batches = length_batches(examples, 6)
    assert sorted(i for b in batches for i in b) == list(range(20))
    lengths = [[len(examples[i].input_ids) for i in b] for b in batches]
    assert all(max(a) <= min(b) for a, b in itertools.pairwise(lengths))
    ids, mask, labels = collate([examples[i] for i in batches[-1]], pad_id=1)
    assert ids.shape == mask.shape == labels.shape
    assert (mask.sum(1).tolist()) == lengths[-1]
    assert (labels[mask == 0] == -100).all() and (ids[mask == 0] == 1).all()


def test_subset_layers():
    assert subset_layers(30, 15)[0] == 0 and subset_layers(30, 15)[-1] == 29 and len(subset_layers(30, 15)) == 15
    assert subset_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        subset_layers(4, 5)


@pytest.mark.parametrize(
    ("method", "k"), [("full", None), ("lora", None), ("lora", 2), ("last-k", 2), ("subset", None)]
)  # lora, k=None: the default 6, capped at 4 blocks
def test_every_method_learns_and_saves_a_loadable_model(method, k, tiny_tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tiny_pairs(72, seed=1)
    train, held = data[:60], data[60:]
    teacher = tiny_llama(len(tiny_tokenizer))
    start = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    out = tmp_path / "student"
    res = train_student(
        train,
        method,
        model=teacher,
        tokenizer=tiny_tokenizer,
        epochs=4,
        lr=LRS[method],
        batch_size=8,
        max_len=64,
        seed=0,
        out_dir=out,
        k=k,
        n_layers=2,
        heldout=held,
    )
    assert res.steps == 4 * 8 and res.epochs_done == pytest.approx(4.0)
    assert res.examples == 60 and res.loss_tokens > 0 and res.tokens > res.loss_tokens
    assert res.heldout_loss_after < res.heldout_loss_before - DROP[method], res
    assert 0 < res.trainable_params <= res.total_params

    student = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert evaluate_loss(student, tok, held, max_len=64) == pytest.approx(res.heldout_loss_after, rel=1e-4)
    info = json.loads((out / "distill.json").read_text())
    assert info["method"] == method and info["heldout_loss_after"] == res.heldout_loss_after
    assert student.config.num_hidden_layers == (2 if method == "subset" else 4)
    assert not any("lora" in n for n, _ in student.named_parameters())

    after = dict(student.named_parameters())
    changed = {n for n, p in start.items() if n in after and not torch.equal(p, after[n])}
    if method == "last-k":  # only the last 2 blocks and the final norm moved; embeddings stayed
        assert changed and all(n.startswith(("model.layers.2.", "model.layers.3.", "model.norm")) for n in changed)
    elif method == "lora":  # merged adapters change only the linear layers' weights (of the last k blocks)
        assert changed and all(n.endswith("proj.weight") for n in changed)
        blocks = {n.split(".")[2] for n in changed}
        assert blocks == ({"2", "3"} if k == 2 else {"0", "1", "2", "3"})
    elif method == "full":
        assert "model.embed_tokens.weight" in changed and "model.layers.0.self_attn.q_proj.weight" in changed


def test_time_budget_and_bad_arguments(tiny_tokenizer):
    data = tiny_pairs(16)
    res = train_student(
        data,
        "last-k",
        model=tiny_llama(len(tiny_tokenizer)),
        tokenizer=tiny_tokenizer,
        epochs=1000,
        max_seconds=0.2,
        batch_size=4,
        k=1,
    )
    assert 1 <= res.steps < 4000 and res.seconds < 5
    with pytest.raises(ValueError, match="method must be one of"):
        train_student(data, "magic", model=tiny_llama(len(tiny_tokenizer)), tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="k must be in"):
        train_student(data, "last-k", model=tiny_llama(len(tiny_tokenizer)), tokenizer=tiny_tokenizer, k=9)


def test_cli_train(tiny_tokenizer, tmp_path, capsys):
    base = tmp_path / "base"
    tiny_llama(len(tiny_tokenizer)).save_pretrained(str(base))
    tiny_tokenizer.save_pretrained(str(base))
    data = tmp_path / "pairs.jsonl"
    save_pairs(tiny_pairs(40, seed=2), data)
    out = tmp_path / "student"
    code, stdout, err = run_cli(
        capsys,
        "distill",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--model",
        str(base),
        "--method",
        "last-k",
        "--k",
        "2",
        "--epochs",
        "3",
        "--lr",
        "0.01",
        "--heldout-fraction",
        "0.2",
        "--max-len",
        "64",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["method"] == "last-k" and summary["examples"] == 32
    assert summary["heldout_loss_after"] < summary["heldout_loss_before"]
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    code, _, err = run_cli(
        capsys, "distill", "train", "--data", str(data), "--out", str(out), "--model", str(base), "--method", "magic"
    )
    assert code == 2 and "--method must be one of" in err
