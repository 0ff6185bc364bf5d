"""``antidistill distill harvest|mix|attack|train``: the red team's attack, a typer sub-app of :mod:`antidistill.cli`.

Errors are raised as :class:`~antidistill.errors.AntidistillError` (one line, exit 2 from the main CLI). The
openai SDK, torch, transformers and peft are imported only when a command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from antidistill.cli.options import JsonOpt, print_json
from antidistill.errors import InputError

if TYPE_CHECKING:
    from antidistill.redteam.data import Pair

distill_app = typer.Typer(
    help="Red team: harvest answers through the API, mix data sets, distil a student.", no_args_is_help=True
)

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _progress(enabled: bool):
    """A rich progress bar on stderr when it is a terminal, else ``None``."""
    if not enabled or not err.is_terminal:
        return None
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


@distill_app.command()
def harvest(
    base_url: Annotated[
        str,
        typer.Option("--base-url", envvar="OPENAI_BASE_URL", help="The API's base URL, e.g. http://127.0.0.1:8000/v1."),
    ],
    out: Annotated[Path, typer.Option("--out", help="JSONL output (appended to; re-running resumes).")],
    api_key: Annotated[
        str, typer.Option("--api-key", envvar="OPENAI_API_KEY", help="The account's API key.", show_default=False)
    ] = "",
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help='Prompts: a .txt file (one per line) or JSONL (strings or {"prompt": ...}).'),
    ] = None,
    generate: Annotated[
        int | None,
        typer.Option("--generate", min=1, help="Use N built-in varied instruction prompts instead of a file."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Order of the built-in prompts.")] = 0,
    model: Annotated[str | None, typer.Option("--model", help="Model to ask for (default: the first listed).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=8192)] = 128,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, max=5.0)] = 0.7,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64, help="Requests in flight.")] = 4,
    max_retries: Annotated[
        int, typer.Option("--max-retries", min=0, max=50, help="Retries per prompt on 429 / 5xx.")
    ] = 6,
    as_json: JsonOpt = False,
) -> None:
    """Ask the API for answers to many prompts as one account, and keep prompt/response pairs (JSONL)."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.redteam.harvest import Harvester, generate_prompts, load_prompts

    if (prompts is None) == (generate is None):
        raise InputError("give exactly one of --prompts FILE and --generate N")
    try:
        todo = load_prompts(prompts) if prompts is not None else generate_prompts(generate, seed)
        harvester = Harvester(base_url, api_key, model, max_tokens, temperature, max_retries)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    bar = _progress(not as_json)
    with harvester:
        if bar is None:
            res = harvester.run(todo, out, concurrency=concurrency)
        else:
            with bar:
                task = bar.add_task("harvesting", total=None)
                res = harvester.run(
                    todo,
                    out,
                    concurrency=concurrency,
                    on_progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
    summary = {
        "out": str(res.path),
        "requested": res.requested,
        "skipped": res.skipped,
        "written": res.written,
        "failed": res.failed,
        "retries": res.retries,
        "completion_tokens": res.completion_tokens,
        "seconds": round(res.seconds, 2),
        "model": res.model,
    }
    if as_json:
        print_json(summary)
    else:
        err.print(
            f"{res.written} new pairs ({res.skipped} already there, {res.failed} failed, {res.retries} "
            f"retries), {res.completion_tokens} tokens in {res.seconds:.1f} s -> {res.path}",
            markup=False,
        )
    if res.failed:
        raise typer.Exit(1)


@distill_app.command()
def mix(
    watermarked: Annotated[Path, typer.Option("--watermarked", help="JSONL pairs from the watermarked source.")],
    unwatermarked: Annotated[Path, typer.Option("--unwatermarked", help="JSONL pairs from another source.")],
    share: Annotated[float, typer.Option("--share", min=0.0, max=1.0, help="Exact share of watermarked pairs.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Pairs in the mixed set.")],
    out: Annotated[Path, typer.Option("--out", help="JSONL output.")],
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """A training set of N pairs of which exactly SHARE come from the watermarked file."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.redteam.data import load_pairs, save_pairs
    from antidistill.redteam.data import mix as mix_pairs

    wm, un = load_pairs(watermarked), load_pairs(unwatermarked)
    try:
        pairs = mix_pairs(wm, un, share, n, seed)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    save_pairs(pairs, out)
    k = sum(1 for p in pairs if p.watermarked)
    if as_json:
        print_json(
            {
                "out": str(out),
                "n": len(pairs),
                "watermarked": k,
                "unwatermarked": len(pairs) - k,
                "share": k / len(pairs),
            }
        )
    else:
        err.print(f"{len(pairs)} pairs, {k} watermarked ({k / len(pairs):.2%}) -> {out}", markup=False)


@distill_app.command()
def train(
    data: Annotated[Path, typer.Option("--data", help="JSONL training pairs.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the student (save_pretrained).")],
    method: Annotated[str, typer.Option("--method", help="lora (default), last-k, full or subset.")] = "lora",
    heldout: Annotated[Path | None, typer.Option("--heldout", help="JSONL held-out pairs: loss before/after.")] = None,
    heldout_fraction: Annotated[
        float, typer.Option("--heldout-fraction", min=0.0, max=0.5, help="Hold out this share of --data instead.")
    ] = 0.0,
    epochs: Annotated[float, typer.Option("--epochs", min=0.01)] = 1.0,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (default per method).")] = None,
    max_len: Annotated[int, typer.Option("--max-len", min=8, max=8192)] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=512)] = 8,
    k: Annotated[
        int | None,
        typer.Option(
            "--k", min=1, help="lora / last-k: adapt / train the last K blocks (default 6; the model's depth: all)."
        ),
    ] = None,
    n_layers: Annotated[int | None, typer.Option("--n-layers", min=1, help="subset: blocks kept.")] = None,
    lora_r: Annotated[int, typer.Option("--lora-r", min=1, max=512)] = 16,
    max_seconds: Annotated[
        float | None, typer.Option("--max-seconds", min=1.0, help="Stop training after this long.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    model: Annotated[str | None, typer.Option("--model", help="Starting model (default: the embedded one).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch threads.")] = None,
    mask_green: Annotated[
        Path | None,
        typer.Option(
            "--mask-green",
            help="A green-pair estimate (distill attack --method estimate): no loss on the tokens it flags.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Distil a student from prompt/response pairs and save it with its tokenizer."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.redteam.data import load_pairs, split
    from antidistill.redteam.train import METHODS, load_teacher, train_student

    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if heldout is not None and heldout_fraction > 0:
        raise InputError("give at most one of --heldout and --heldout-fraction")
    pairs = load_pairs(data)
    held = load_pairs(heldout) if heldout is not None else []
    mask = None
    if mask_green is not None:
        from antidistill.redteam.attacks import GreenEstimate, loss_mask

        mask = loss_mask(GreenEstimate.load(mask_green))
    try:
        if heldout_fraction > 0:
            pairs, held = split(pairs, heldout_fraction, seed)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from antidistill.settings import get_settings

    settings = get_settings()
    with err.status("Loading the model…"):
        base, tokenizer = load_teacher(model or settings.model, settings.cache_dir)
    bar = _progress(not as_json)
    try:
        if bar is None:
            res = train_student(
                pairs,
                method,
                model=base,
                tokenizer=tokenizer,
                epochs=epochs,
                lr=lr,
                max_len=max_len,
                batch_size=batch_size,
                seed=seed,
                out_dir=out,
                k=k,
                n_layers=n_layers,
                lora_r=lora_r,
                heldout=held,
                max_seconds=max_seconds,
                loss_mask=mask,
            )
        else:
            with bar:
                task = bar.add_task("training", total=None)
                res = train_student(
                    pairs,
                    method,
                    model=base,
                    tokenizer=tokenizer,
                    epochs=epochs,
                    lr=lr,
                    max_len=max_len,
                    batch_size=batch_size,
                    seed=seed,
                    out_dir=out,
                    k=k,
                    n_layers=n_layers,
                    lora_r=lora_r,
                    heldout=held,
                    max_seconds=max_seconds,
                    loss_mask=mask,
                    on_step=lambda s, total, loss: bar.update(
                        task, completed=s, total=total, description=f"training (loss {loss:.3f})"
                    ),
                )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if as_json:
        d = res.to_dict()
        d.pop("losses")
        print_json(d)
        return
    msg = (
        f"{res.method}: {res.steps} steps ({res.epochs_done:.2f} epochs) on {res.examples} pairs, "
        f"{res.tokens_per_s:.0f} tokens/s, {res.seconds:.0f} s"
    )
    if res.heldout_loss_before is not None:
        msg += f"; held-out loss {res.heldout_loss_before:.3f} -> {res.heldout_loss_after:.3f}"
    err.print(msg + f" -> {res.out_dir}", markup=False)


@distill_app.command()
def sample(
    model: Annotated[
        str, typer.Option("--model", help="The student: a directory (save_pretrained), a GGUF file, or 'teacher'.")
    ],
    prompts: Annotated[Path, typer.Option("--prompts", help="Prompts: one a line, or JSONL (strings or 'prompt').")],
    out: Annotated[Path, typer.Option("--out", help="JSONL prompt/response pairs.")],
    greens: Annotated[
        Path | None,
        typer.Option("--greens", help="Decode against this green-pair estimate (distill attack estimate or shift)."),
    ] = None,
    reverse_delta: Annotated[
        float, typer.Option("--reverse-delta", min=0.0, max=100.0, help="The reverse bias on estimated-green tokens.")
    ] = 2.5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=256)] = 16,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=8192)] = 192,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, max=5.0)] = 0.7,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch threads.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer prompts with a student, unmarked, optionally decoding against a green-pair estimate (Pan et al.'s
    neutralisation: -DELTA on the tokens estimated green after each prefix), as a distiller would serve it."""
    from antidistill.redteam import attacks as atk
    from antidistill.redteam.data import save_pairs
    from antidistill.redteam.harvest import load_prompts

    asks = load_prompts(prompts)
    if not asks:
        raise InputError(f"{prompts}: no prompts")
    estimate = atk.GreenEstimate.load(greens) if greens is not None else None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from antidistill.models.local import LocalModel
    from antidistill.settings import get_settings

    settings = get_settings()
    with err.status("Loading the model…"):
        lm = LocalModel.load(None if model == "teacher" else model, settings.cache_dir)
    extra = [atk.ReverseBias(estimate, reverse_delta)] if estimate is not None else []
    record: dict[str, object] = {"model": model}
    if estimate is not None:
        record.update(attack="reverse-bias", reverse_delta=reverse_delta, greens=str(greens))

    def run(on_progress: Callable[[int, int], None] | None = None) -> list[Pair]:
        return atk.answer_pairs(
            lm, asks, batch_size=batch_size, max_new_tokens=max_tokens, temperature=temperature, seed=seed,
            extra=extra, record=record, on_progress=on_progress,
        )  # fmt: skip

    bar = _progress(not as_json)
    if bar is None:
        pairs = run()
    else:
        with bar:
            task = bar.add_task("answering", total=len(asks))
            pairs = run(lambda done, total: bar.update(task, completed=done, total=total))
    save_pairs(pairs, out)
    summary = {"model": model, "prompts": len(asks), "out": str(out), "reverse_bias": estimate is not None}
    if as_json:
        print_json(summary)
    else:
        how = f", reverse bias {reverse_delta} on {len(estimate.pairs)} estimated-green pairs" if estimate else ""
        err.print(f"{len(pairs)} answers{how} -> {out}", markup=False)


ATTACKS = ("paraphrase", "estimate", "shift", "filter")


@distill_app.command()
def attack(  # noqa: C901
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="paraphrase (rewrite answers with the unmarked model), estimate (green pairs against a reference), "
            "shift (green pairs a student learnt: --model before, --after student) "
            "or filter (drop answers rich in estimated-green pairs).",
        ),
    ],
    data: Annotated[Path, typer.Option("--data", help="JSONL harvest (prompt/response pairs).")],
    out: Annotated[Path, typer.Option("--out", help="Output: JSONL pairs (paraphrase, filter) or JSON (estimate).")],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="estimate / filter: JSONL pairs of unmarked answers of the same kind."),
    ] = None,
    reference_from_model: Annotated[
        bool,
        typer.Option(
            "--reference-from-model", help="estimate / filter: ask the unmarked model the harvest's prompts instead."
        ),
    ] = False,
    greens: Annotated[
        Path | None, typer.Option("--greens", help="filter: a green-pair estimate (from --method estimate or shift).")
    ] = None,
    after: Annotated[
        str | None,
        typer.Option("--after", help="shift: the student after distillation (a directory; --model is the before)."),
    ] = None,
    min_shift: Annotated[
        float, typer.Option("--min-shift", min=0.0, help="shift: least centred log-probability shift (nats).")
    ] = 0.2,
    context_widths: Annotated[
        str, typer.Option("--context-widths", help="estimate: prefix lengths, comma-separated.")
    ] = "1,2",
    alpha: Annotated[float, typer.Option("--alpha", min=1e-12, max=0.5, help="estimate: per-pair test level.")] = 1e-3,
    min_count: Annotated[
        int,
        typer.Option(
            "--min-count", min=1, help="estimate: least harvest count of a pair (shift: positions after a prefix)."
        ),
    ] = 3,
    max_share: Annotated[
        float, typer.Option("--max-share", min=0.0, max=1.0, help="filter: drop answers above this green share.")
    ] = 0.1,
    template: Annotated[
        Path | None, typer.Option("--template", help="paraphrase: a file with the request, {text} for the answer.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=256)] = 16,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=8192)] = 192,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, max=5.0)] = 0.7,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    model: Annotated[
        str | None, typer.Option("--model", help="The unmarked model (default: the embedded one).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """An informed distiller's attack on a harvest: paraphrase it, estimate its green pairs (against a reference, or
    from the student before and after distillation), or filter it."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.redteam import attacks as atk
    from antidistill.redteam.data import load_pairs, save_pairs

    if method not in ATTACKS:
        raise InputError(f"--method must be one of {', '.join(ATTACKS)}, got {method!r}")
    if method in ("estimate", "shift") and greens is not None:
        raise InputError(f"--greens is for --method filter ({method} writes one)")
    if (method == "shift") != (after is not None):
        raise InputError(
            "--method shift needs --after (the student)" if after is None else "--after needs --method shift"
        )
    if method == "shift" and (reference is not None or reference_from_model):
        raise InputError("--method shift compares two models; it takes no --reference")
    if method not in ("paraphrase", "shift") and greens is None and (reference is None) == (not reference_from_model):
        raise InputError(f"--method {method} needs exactly one of --reference FILE and --reference-from-model")
    try:
        widths = tuple(int(h) for h in context_widths.split(","))
    except ValueError:
        raise InputError(f"--context-widths must be integers separated by commas, got {context_widths!r}") from None
    ask = None
    if template is not None:
        try:
            ask = template.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {template}: {type(exc).__name__}: {exc}") from None
    pairs = load_pairs(data)
    ref_pairs = load_pairs(reference) if reference is not None else None
    estimate = atk.GreenEstimate.load(greens) if greens is not None else None

    from antidistill.settings import get_settings

    settings = get_settings()
    lm = None
    if method == "paraphrase" or (method != "shift" and estimate is None and ref_pairs is None):
        from antidistill.models.local import LocalModel

        with err.status("Loading the model…"):
            lm = LocalModel.load(model or settings.model, settings.cache_dir)
        tokenizer = lm.tokenizer
    else:
        from antidistill.models.embedded import load_tokenizer, resolve_model

        tokenizer = load_tokenizer(resolve_model(model or settings.model), settings.cache_dir)

    summary: dict[str, object] = {"method": method, "in": str(data), "out": str(out), "pairs_in": len(pairs)}
    if method == "shift":
        assert after is not None
        from antidistill.models.embedded import load_causal_lm

        with err.status("Loading the student before and after distillation…"):
            before_lm, _ = load_causal_lm(resolve_model(model or settings.model), settings.cache_dir)
            after_lm, _ = load_causal_lm(resolve_model(after), settings.cache_dir)
        with err.status("Reading the shift of every answer position…"):
            estimate = atk.estimate_green_shift(
                before_lm, after_lm, tokenizer, pairs, widths, alpha=alpha, min_count=max(min_count, 2),
                min_shift=min_shift,
            )  # fmt: skip
        estimate.save(out)
        tested = sum(estimate.tested.values())
        summary.update(flagged=len(estimate.pairs), tested=estimate.tested, alpha=estimate.alpha)
        msg = (
            f"{len(estimate.pairs)} (prefix, token) pairs the student moved toward, of {tested} tested "
            f"(about {estimate.alpha * tested:.1f} expected by chance) -> {out}"
        )
    elif method == "paraphrase":
        bar = _progress(not as_json)

        def rewrite(on_progress: Callable[[int, int], None] | None = None) -> list[Pair]:
            assert lm is not None  # loaded above for paraphrase
            return atk.paraphrase_pairs(
                lm,
                pairs,
                template=ask or atk.PARAPHRASE_TEMPLATE,
                batch_size=batch_size,
                max_new_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                on_progress=on_progress,
            )

        if bar is None:
            rewritten = rewrite()
        else:
            with bar:
                task = bar.add_task("paraphrasing", total=len(pairs))
                rewritten = rewrite(lambda done, total: bar.update(task, completed=done, total=total))
        save_pairs(rewritten, out)
        summary["pairs_out"] = len(rewritten)
        msg = f"{len(rewritten)} answers paraphrased -> {out}"
    else:
        if estimate is None:
            if ref_pairs is None:
                assert lm is not None
                with err.status("Answering the harvest's prompts with the unmarked model…"):
                    ref_pairs = atk.answer_pairs(
                        lm,
                        list(dict.fromkeys(p.prompt for p in pairs)),
                        batch_size=batch_size,
                        max_new_tokens=max_tokens,
                        temperature=temperature,
                        seed=seed,
                    )
                ref_name = "the unmarked model's answers to the harvest's prompts"
            else:
                ref_name = str(reference)
            estimate = atk.estimate_green(
                atk.encode_answers(tokenizer, pairs),
                atk.encode_answers(tokenizer, ref_pairs),
                widths,
                alpha=alpha,
                min_count=min_count,
                reference_name=ref_name,
            )
        flagged = len(estimate.pairs)
        summary.update(flagged=flagged, tested=estimate.tested, alpha=estimate.alpha)
        if method == "estimate":
            estimate.save(out)
            tested = sum(estimate.tested.values())
            msg = (
                f"{flagged} (prefix, token) pairs estimated green of {tested} tested "
                f"(about {estimate.alpha * tested:.1f} expected by chance) -> {out}"
            )
        else:
            res = atk.filter_pairs(pairs, tokenizer, estimate, max_share)
            if not res.kept:
                raise InputError(f"--max-share {max_share} drops every answer; raise it")
            save_pairs(res.kept, out)
            summary.update(pairs_out=len(res.kept), dropped=len(res.dropped), share=atk.green_share_summary(res.shares))
            msg = f"{len(res.kept)} answers kept, {len(res.dropped)} dropped (green share > {max_share}) -> {out}"
    if as_json:
        print_json(summary)
    else:
        err.print(msg, markup=False)
