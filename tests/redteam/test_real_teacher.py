"""The real attack, small: watermarked answers of the embedded teacher distilled into a student (default method)."""

from __future__ import annotations

import pytest

from antidistill.keys import MasterKey
from antidistill.redteam.data import Pair
from antidistill.redteam.harvest import generate_prompts
from antidistill.redteam.train import evaluate_loss, load_teacher, train_student
from antidistill.watermark.marker import MarkKeys

pytestmark = pytest.mark.slow


def test_student_learns_the_teachers_watermarked_answers(local_model, model_cache_dir, tmp_path):
    import torch

    torch.manual_seed(0)
    master = MasterKey(b"r" * 32)
    mark = MarkKeys(master.account_key("attacker"), master.provider_key())
    prompts = generate_prompts(12, seed=11)
    comps = local_model.generate(prompts, [mark] * len(prompts), max_new_tokens=24, temperature=0.7, seed=1)
    pairs = [Pair(p, c.text, c.finish_reason) for p, c in zip(prompts, comps, strict=True)]
    train, held = pairs[:9], pairs[9:]

    model, tokenizer = load_teacher(None, model_cache_dir)  # a fresh copy: training changes it in place
    res = train_student(
        train,
        model=model,
        tokenizer=tokenizer,
        epochs=3,
        k=2,
        batch_size=3,  # default: lora
        max_len=128,
        heldout=held,
        out_dir=tmp_path / "student",
    )
    assert res.trainable_params < res.total_params / 5
    assert res.heldout_loss_after < res.heldout_loss_before, res

    # the student is a plain transformers model directory: our own loader (and so the scanner) reads it
    from antidistill.models.local import LocalModel

    student = LocalModel.load(str(tmp_path / "student"), tmp_path / "cache")
    assert student.model.config.num_hidden_layers == 30
    assert evaluate_loss(student.model, student.tokenizer, held, 128) == pytest.approx(res.heldout_loss_after, rel=1e-4)
    (c,) = student.generate([prompts[0]], [None], max_new_tokens=8, temperature=0.0)
    assert c.token_ids
