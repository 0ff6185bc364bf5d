"""``antidistill scan``: the radioactivity scan of a suspect model (weights or endpoint), registered by
:mod:`antidistill.cli`.

Errors are raised as :class:`~antidistill.errors.AntidistillError`: one line and exit 2 from the main CLI. Heavy
imports (numpy, torch, transformers, openai, SQLAlchemy) happen only when the command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from antidistill.errors import InputError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

#: the served model, where a model path is expected (kept in step with antidistill.workflows.scan.TEACHER)
TEACHER = "teacher"


def _score(green: Any, n: int, sampling: bool, pooled: bool = False) -> str:
    """A summed score as readers should take it: a green count, or (Gumbel-max members) a sum of -log(1 - u)."""
    if sampling:
        return f"score {float(green):.1f} over {n}" + (" pooled" if pooled else " tuples")
    return f"{green}/{n} " + ("pooled" if pooled else "green")


def _print_report(r) -> None:
    # one fmt_p for every p-value shown; the report package loads Jinja2 and SQLAlchemy (about 0.6 s), which
    # `antidistill --help` must not pay
    from antidistill.forensics.report import fmt_p
    from antidistill.watermark.schemes import scheme_class, scheme_names

    scheme = (r.parameters.get("watermark") or {}).get("scheme")
    sampling = scheme in scheme_names() and scheme_class(scheme).kind == "sample"

    t = Table(show_header=False, box=None, pad_edge=False)
    color = "bold red" if r.significant else "bold green"
    t.add_row(
        "verdict",
        f"[{color}]{'RADIOACTIVE' if r.significant else 'no evidence'}[/] at alpha {r.alpha:g}, "
        f"overall p = {fmt_p(r.p_value)}",
    )
    t.add_row("suspect", f"{r.mode} mode: {r.suspect}")
    t.add_row(
        "tuples",
        f"{r.tokens_scored} distinct scored of {r.tokens_seen} positions ({r.texts} texts); "
        "skipped: " + (", ".join(f"{k} {v}" for k, v in sorted(r.skipped.items())) or "none"),
    )
    if r.provider is not None:
        p = r.provider
        frac = f"mean {p.green_fraction:.2f}" if sampling else f"{p.green_fraction:.1%}"
        t.add_row("provider key", f"p = {fmt_p(p.p_value)} ({_score(p.green, p.n, sampling)}, {frac}, z = {p.z:.2f})")
    for a in r.accounts[:3]:
        t.add_row(
            "account",
            f"{a.account}: corrected p = {fmt_p(a.p_corrected)} (p = {fmt_p(a.p_value)}, "
            f"{_score(a.green, a.n, sampling)}, {a.key_id})",
        )
    for c in r.clusters[:3]:
        t.add_row(
            "cluster",
            f"{c.cluster_id} ({len(c.accounts)} accounts): corrected p = {fmt_p(c.p_corrected)} "
            f"({_score(c.green, c.n, sampling, pooled=True)})",
        )
    keyed = [c.p_value for c in r.controls if c.model is None]
    if keyed:
        t.add_row("control keys", f"{len(keyed)} never-issued keys: smallest p = {fmt_p(min(keyed))}")
    for c in r.controls:
        if c.model is not None:
            t.add_row("control model", f"{c.model}: p = {fmt_p(c.p_value)} over {c.tokens_scored} tuples")
    for g in r.parameters.get("watermark_groups") or []:
        wm = g.get("watermark") or {}
        t.add_row(
            "config group",
            f"{wm.get('scheme')} (h = {wm.get('context_width')}): {g.get('tuples')} tuples, p = {fmt_p(g['p_value'])}"
            " (uncorrected; the verdict is corrected for the groups)",
        )
    seq = getattr(r, "sequential", None)
    if seq:
        t.add_row(
            "sequential",
            f"anytime-valid p = {fmt_p(seq['p_value'])} over {seq['tuples']} tuples; fixed-n p = "
            f"{fmt_p(seq['fixed_n_p_value'])} ({'valid' if seq['fixed_n_valid'] else 'NOT valid: stopped early'})",
        )
    lp = getattr(r, "logprob", None)
    if lp:
        prov, best, ctl = lp["provider"], (lp["accounts"] or [None])[0], lp["controls"]["smallest_p"]
        parts = [f"{lp['positions']} positions ({lp['texts_with_logprobs']} of {lp['texts']} answers had logprobs)"]
        if not lp.get("valid", True):
            parts.insert(0, "NOT valid (the scan stopped early)")
        parts.append(f"provider p = {fmt_p(prov['p_value'])}" if prov else "no provider key")
        if best:
            parts.append(f"{best['account']}: corrected p = {fmt_p(best['p_corrected'])}")
        if ctl is not None:
            parts.append(f"control keys' smallest p = {fmt_p(ctl)}")
        t.add_row("top-logprob mass", "; ".join(parts))
    t.add_row("stopping rule", r.stopping_rule)
    out.print(t)
    out.print(r.verdict, markup=False)


def _check_closed_options(
    url: str | None,
    stop_at: float | None,
    target_p: float,
    pilot: int,
    plan_only: bool,
    from_cache: bool,
    cache: Path | None,
    top_logprobs: int = 0,
) -> None:
    for name, v in (("--stop-at", stop_at), ("--target-p", target_p)):
        if v is not None and not 0.0 < v < 1.0:
            raise InputError(f"{name} must be in (0, 1), got {v}")
    if plan_only and pilot < 1:
        raise InputError("--plan-only needs --pilot K (K >= 1 prompts)")
    if url is None and (stop_at is not None or pilot or from_cache or top_logprobs):
        raise InputError("--stop-at, --pilot, --from-cache and --top-logprobs apply to closed mode (--suspect-url)")
    if from_cache and cache is not None and not cache.is_dir():
        raise InputError(f"scan cache not found: {cache}")


def _progress_line(p: Any) -> None:
    """One line on stderr, rewritten in place: requests, tokens, tuples and the sequential p so far."""
    err.file.write(
        f"\rrequests {p.done}/{p.total} ({p.cached} cached) · {p.tokens:,} tokens · {p.tuples:,} tuples · "
        f"sequential p {p.p_sequential:.3g}   "
    )
    err.file.flush()


def _print_plan(as_json: bool) -> Any:
    def show(plan: Any) -> None:
        from antidistill.forensics.planner import describe

        err.file.write("\n")
        if as_json:
            sys.stdout.write(json.dumps({"plan": plan.to_dict()}) + "\n")
        for line in describe(plan):
            err.print(f"plan: {line}", markup=False)

    return show


def scan(
    suspect_model: Annotated[
        str | None,
        typer.Option(
            "--suspect-model",
            help="Open mode: a transformers model directory (e.g. a student saved with "
            "save_pretrained), a GGUF file, or 'teacher' for the served model.",
        ),
    ] = None,
    suspect_url: Annotated[
        str | None, typer.Option("--suspect-url", help="Closed mode: the suspect's OpenAI-compatible base URL (…/v1).")
    ] = None,
    suspect_api_key: Annotated[str | None, typer.Option("--suspect-api-key", help="API key for --suspect-url.")] = None,
    suspect_model_name: Annotated[
        str | None,
        typer.Option(
            "--suspect-model-name", help="The model name to request (default: the first one the endpoint lists)."
        ),
    ] = None,
    account: Annotated[
        list[str] | None,
        typer.Option("--account", help="Candidate account (repeatable; default: every account in the store)."),
    ] = None,
    cluster: Annotated[
        list[str] | None,
        typer.Option(
            "--cluster", help="A cluster tested pooled: comma-separated account ids or a file of ids (repeatable)."
        ),
    ] = None,
    texts: Annotated[
        Path | None,
        typer.Option(
            "--texts", help="JSONL of {prompt, response} to feed (default: the candidates' audit-log records)."
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts", help="Closed mode: prompts to send (JSONL or one a line; default: the fed texts' prompts)."
        ),
    ] = None,
    max_texts: Annotated[int | None, typer.Option("--max-texts", min=1, help="Feed at most N texts.")] = None,
    max_prompts: Annotated[
        int | None, typer.Option("--max-prompts", min=1, help="Closed mode: send at most N prompts.")
    ] = 200,
    samples: Annotated[int, typer.Option("--samples", min=1, max=64, help="Closed mode: completions per prompt.")] = 1,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, max=4096, help="Closed mode: tokens per completion.")
    ] = 128,
    temperature: Annotated[
        float, typer.Option("--temperature", min=0.0, max=5.0, help="Closed mode: sampling temperature.")
    ] = 0.7,
    seed: Annotated[int, typer.Option("--seed", help="Closed mode: sampling seed (sample j uses seed + j).")] = 0,
    exclude: Annotated[
        str, typer.Option("--exclude", help="Open mode: prefix-pairs (evidence) or prompt (measurement only).")
    ] = "prefix-pairs",
    control_model: Annotated[
        str | None,
        typer.Option("--control-model", help="Also scan a model known not to be distilled (a path, or 'teacher')."),
    ] = None,
    control_keys: Annotated[
        int, typer.Option("--control-keys", min=0, max=10_000, help="Never-issued keys tested as controls.")
    ] = 16,
    control_seed: Annotated[int, typer.Option("--control-seed", help="Seed of the control keys.")] = 0,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level.")] = 1e-3,
    scheme: Annotated[
        str | None,
        typer.Option(
            "--scheme",
            help="Score every text with this watermark scheme (antidistill-v1, kgw-entropy, gumbel, gumbel-dual, "
            "tournament, hf-lefthash, markllm-exp); default: each audit record's own, as it names it.",
        ),
    ] = None,
    entropy_threshold: Annotated[
        float | None, typer.Option("--entropy-threshold", help="kgw-entropy only: override the entropy threshold.")
    ] = None,
    layers: Annotated[
        int | None, typer.Option("--layers", help="tournament only: override the number of rounds.")
    ] = None,
    gamma: Annotated[float | None, typer.Option("--gamma", help="Override the watermark's gamma.")] = None,
    context_width: Annotated[int | None, typer.Option("--context-width", help="Override the context width.")] = None,
    provider_fraction: Annotated[
        float | None, typer.Option("--provider-fraction", help="Override the provider fraction.")
    ] = None,
    batch_tokens: Annotated[
        int, typer.Option("--batch-tokens", min=16, help="Open mode: padded tokens per forward pass.")
    ] = 2048,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=256, help="Closed mode: requests in flight at once.")
    ] = 8,
    cache: Annotated[
        Path | None,
        typer.Option("--cache", help="Closed mode: the answer cache directory (default: scan-cache in the data dir)."),
    ] = None,
    from_cache: Annotated[
        bool, typer.Option("--from-cache", help="Closed mode: re-score cached answers only; send no request.")
    ] = False,
    stop_at: Annotated[
        float | None,
        typer.Option("--stop-at", help="Closed mode: stop once the anytime-valid sequential p-value is <= P."),
    ] = None,
    pilot: Annotated[
        int, typer.Option("--pilot", min=0, help="Closed mode: prompts of a pilot, then print the budget plan.")
    ] = 0,
    target_p: Annotated[float, typer.Option("--target-p", help="The budget plan's target p-value.")] = 1e-6,
    price: Annotated[
        float | None, typer.Option("--price-per-1k-tokens", min=0.0, help="The suspect's price per 1,000 tokens.")
    ] = None,
    prompt_pool: Annotated[
        int,
        typer.Option(
            "--prompt-pool", min=0, help="Closed mode: add up to N built-in prompts of the harvested domains."
        ),
    ] = 0,
    plan_only: Annotated[
        bool, typer.Option("--plan-only", help="Closed mode: print the pilot's budget plan and exit.")
    ] = False,
    top_logprobs: Annotated[
        int,
        typer.Option(
            "--top-logprobs",
            min=0,
            max=20,
            help="Closed mode: ask for K candidates' logprobs per token and add the top-logprob mass statistic.",
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")] = False,
) -> None:
    """Radioactivity scan: was a suspect model trained on our watermarked outputs, and by which account?"""
    if (suspect_model is None) == (suspect_url is None):
        raise InputError("give exactly one of --suspect-model PATH (open mode) or --suspect-url URL (closed mode)")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    if exclude not in ("prefix-pairs", "prompt"):
        raise InputError(f"--exclude must be prefix-pairs or prompt, got {exclude!r}")
    if suspect_url is not None and not suspect_url.startswith(("http://", "https://")):
        raise InputError(f"--suspect-url must be an http(s) URL, got {suspect_url!r}")
    if suspect_model is not None and suspect_model != TEACHER and not Path(suspect_model).exists():
        raise InputError(f"suspect model not found: {suspect_model}")
    if control_model is not None and control_model != TEACHER and not Path(control_model).exists():
        raise InputError(f"control model not found: {control_model}")
    if texts is not None and not texts.is_file():
        raise InputError(f"texts file not found: {texts}")
    if prompts is not None and not prompts.is_file():
        raise InputError(f"prompts file not found: {prompts}")
    _check_closed_options(suspect_url, stop_at, target_p, pilot, plan_only, from_cache, cache, top_logprobs)

    # the workflow imports SQLAlchemy, numpy and transformers' tokenizers: only when a scan runs, not for --help
    from antidistill.forensics import inputs
    from antidistill.forensics.closed import RunOptions
    from antidistill.settings import get_settings
    from antidistill.watermark.schemes import scheme_names
    from antidistill.workflows import scan as wf

    if scheme is not None and scheme not in scheme_names():
        raise InputError(f"--scheme must be one of {', '.join(scheme_names())}, got {scheme!r}")
    settings = get_settings()
    scan_inputs = wf.gather_inputs(
        settings,
        accounts=account or [],
        clusters=cluster or [],
        texts_file=texts,
        from_audit=suspect_model is not None or prompts is None,
        max_texts=max_texts,
    )
    overrides = (gamma, context_width, provider_fraction, scheme, entropy_threshold, layers)
    if any(v is not None for v in overrides):
        # parameters given by hand apply to every text; without, each is scored with its own record's configuration
        scan_inputs.override(wf.scan_config(scan_inputs.config, *overrides))
    common: dict[str, Any] = {
        "alpha": alpha,
        "control_keys": control_keys,
        "control_seed": control_seed,
        "control_models": [control_model] if control_model is not None else [],
    }
    if suspect_model is not None:
        with err.status(f"Reading {len(scan_inputs.texts)} texts through the suspect…"):
            report = wf.open_scan(
                settings, suspect_model, scan_inputs, exclude=exclude, batch_tokens=batch_tokens, **common
            )
    else:
        assert suspect_url is not None  # exactly one of the two, checked above
        prompt_list = (
            inputs.read_prompts_file(prompts) if prompts is not None else inputs.unique_prompts(scan_inputs.texts)
        )
        if prompt_pool:
            prompt_list = wf.with_prompt_pool(prompt_list, prompt_pool, seed)
        run = RunOptions(
            concurrency=concurrency,
            cache_dir=cache,
            from_cache=from_cache,
            stop_at=stop_at,
            pilot=pilot,
            target_p=target_p,
            price_per_1k=price,
            plan_only=plan_only,
            progress=_progress_line,
            on_plan=_print_plan(as_json),
        )
        report = wf.closed_scan(
            settings,
            suspect_url,
            prompt_list,
            scan_inputs,
            api_key=suspect_api_key,
            model_name=suspect_model_name,
            samples=samples,
            temperature=temperature,
            max_tokens=max_tokens,
            max_prompts=max_prompts,
            seed=seed,
            run=run,
            top_logprobs=top_logprobs,
            **common,
        )
        err.file.write("\n")
        if plan_only:
            return
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), default=str) + "\n")
    else:
        _print_report(report)
