"""The red team: play the distillation attack end to end, so every defence is measured against a real one.

* :mod:`~antidistill.redteam.harvest`: an attacker account asks the gateway (any OpenAI-compatible endpoint)
  for completions with the ``openai`` SDK and keeps prompt/response pairs as JSONL (resumable);
* :mod:`~antidistill.redteam.data`: loading and validating the pairs, mixing watermarked and unwatermarked
  data at an exact share, train/held-out splits;
* :mod:`~antidistill.redteam.train`: sequence-level distillation (supervised fine-tuning on the teacher's
  answers, Kim & Rush 2016, https://arxiv.org/abs/1606.07947) of a student on the CPU, saved as a plain
  transformers model that any loader, and the forensic scan, can read;
* :mod:`~antidistill.redteam.attacks`: an informed distiller's attacks on the mark (paraphrase by an unmarked
  model, neutralisation by estimated green pairs: loss mask, filter, reverse-bias decoding; Pan et al. 2025).

The attack from the command line::

    antidistill distill harvest --base-url http://127.0.0.1:8000/v1 --api-key $KEY --generate 400 --out wm.jsonl
    antidistill distill mix --watermarked wm.jsonl --unwatermarked other.jsonl --share 0.05 --n 400 --out mix.jsonl
    antidistill distill train --data mix.jsonl --heldout held.jsonl --out student/ --epochs 2
    antidistill distill attack --method estimate --data wm.jsonl --reference-from-model --out greens.json
    antidistill distill train --data wm.jsonl --mask-green greens.json --out student/

Heavy imports (torch, transformers, peft, openai) happen inside the functions that need them.
"""
