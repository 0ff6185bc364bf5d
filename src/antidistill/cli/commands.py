"""The ``antidistill`` command line (typer + rich). Human output by default, ``--json`` for machines.

Every error reaches the user as one line on stderr and a non-zero exit status, never as a traceback:
exit 2 for bad input or usage, 1 for a failed check (e.g. the demo's), 0 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

# The sub-apps keep their heavy dependencies (SQLAlchemy, FastAPI, uvicorn, torch) inside their commands.
from antidistill.cli.distill import distill_app
from antidistill.cli.model import model_app
from antidistill.cli.monitor import monitor_app
from antidistill.cli.options import SCHEME_HELP, JsonOpt
from antidistill.cli.scan import scan
from antidistill.cli.serve import serve
from antidistill.cli.simulate import simulate_app
from antidistill.cli.store import accounts_app, audit_app
from antidistill.errors import AntidistillError, InputError

app = typer.Typer(
    name="antidistill",
    help="Mark, watch and prove the unauthorized distillation of a served language model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Watermark key versions: list and rotate.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


app.command("serve")(serve)
app.command("scan")(scan)
app.add_typer(accounts_app, name="accounts")
app.add_typer(audit_app, name="audit")
app.add_typer(distill_app, name="distill")
app.add_typer(model_app, name="model")
app.add_typer(monitor_app, name="monitor")
app.add_typer(simulate_app, name="simulate")

out = Console()
err = Console(stderr=True, soft_wrap=True)

MAX_INPUT_BYTES = 64 * 1024 * 1024

# ---- shared options ---------------------------------------------------------------------------------
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="A local transformers model directory or GGUF file (default: embedded model)."),
]
GammaOpt = Annotated[float | None, typer.Option("--gamma", help="Green-list fraction (default 0.25).")]
DeltaOpt = Annotated[float | None, typer.Option("--delta", help="Green logit bias (default 3.0).")]
WidthOpt = Annotated[int | None, typer.Option("--context-width", help="Context tokens seeding the list, 1-4.")]
SchemeOpt = Annotated[str | None, typer.Option("--scheme", help=SCHEME_HELP)]
EntropyOpt = Annotated[
    float | None,
    typer.Option("--entropy-threshold", help="kgw-entropy only: steps below this entropy (nats) are not marked."),
]
LayersOpt = Annotated[
    int | None, typer.Option("--layers", help="tournament only: the number of rounds, 1-32 (default 16).")
]
KeyBOpt = Annotated[
    float | None,
    typer.Option(
        "--key-b-probability",
        help="vllm-dual-gumbel only: vLLM's alpha, the share of steps drawn under key B (default 0.1).",
    ),
]
HashKeyOpt = Annotated[
    int | None,
    typer.Option(
        "--hashing-key",
        help="An explicit integer key (e.g. transformers' hashing_key, or the key of vLLM's --watermark-config) "
        "instead of the derived account and provider keys.",
    ),
]
ProviderFracOpt = Annotated[
    float | None, typer.Option("--provider-fraction", help="Share of positions marked with the provider key.")
]


def _settings():
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.settings import get_settings

    return get_settings()


def _watermark_config(
    scheme: str | None,
    gamma: float | None,
    delta: float | None,
    width: int | None,
    provider_fraction: float | None,
    hashing_key: int | None,
    entropy_threshold: float | None = None,
    layers: int | None = None,
    key_b_probability: float | None = None,
):
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.watermark.config import WatermarkConfig
    from antidistill.watermark.schemes import scheme_class, scheme_names

    params: dict[str, Any] = {}
    if scheme is not None:
        if scheme not in scheme_names():
            raise InputError(f"--scheme must be one of {', '.join(scheme_names())}, got {scheme!r}")
        params["scheme"] = scheme
    if entropy_threshold is not None:
        params["entropy_threshold"] = entropy_threshold
    if layers is not None:
        params["layers"] = layers
    if key_b_probability is not None:
        params["key_b_probability"] = key_b_probability
    if gamma is not None:
        params["gamma"] = gamma
    if delta is not None:
        params["delta"] = delta
    if width is not None:
        params["context_width"] = width
    if provider_fraction is not None:
        if hashing_key is not None and provider_fraction != 0.0:
            raise InputError("--hashing-key marks every position with that one key: --provider-fraction must be 0")
        params["provider_fraction"] = provider_fraction
    elif hashing_key is not None or (scheme is not None and scheme_class(scheme).single_key):
        params["provider_fraction"] = 0.0  # one explicit key, or a single-key member: a plain single-key watermark
    try:
        return WatermarkConfig(**params)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _explicit_key(hashing_key: int | None, accounts: list[str]):
    """The key given with ``--hashing-key`` (``None`` without it); it names no account, so it excludes them."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.keys import WatermarkKey

    if hashing_key is None:
        return None
    if accounts:
        raise InputError("--hashing-key and --account are exclusive: an explicit key names no account")
    try:
        return WatermarkKey.explicit(hashing_key)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


# ---- generate ---------------------------------------------------------------------------------------
@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    account: Annotated[str | None, typer.Option("--account", help="Account whose key marks the completion.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=4096)] = 128,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, max=5.0)] = 0.7,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    no_watermark: Annotated[bool, typer.Option("--no-watermark", help="Serve an unmarked completion.")] = False,
    model: ModelOpt = None,
    scheme: SchemeOpt = None,
    gamma: GammaOpt = None,
    delta: DeltaOpt = None,
    context_width: WidthOpt = None,
    provider_fraction: ProviderFracOpt = None,
    hashing_key: HashKeyOpt = None,
    entropy_threshold: EntropyOpt = None,
    layers: LayersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A watermarked completion from the model, marked with ACCOUNT's key (or the key given with --hashing-key)."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.keys import KeyRing
    from antidistill.models.local import LocalModel
    from antidistill.watermark.marker import MarkKeys

    if not prompt.strip():
        raise InputError("prompt is empty")
    config = _watermark_config(
        scheme, gamma, delta, context_width, provider_fraction, hashing_key, entropy_threshold, layers
    )
    if not no_watermark and not config.generates:
        raise InputError(f"scheme {config.scheme} is read-only: it detects vLLM's marks, vLLM makes them")
    explicit = _explicit_key(hashing_key, [account] if account else [])
    if account is None and explicit is None and not no_watermark:
        raise InputError("give --account (its key marks the completion), --hashing-key or --no-watermark")
    settings = _settings()
    mark = None
    if explicit is not None and not no_watermark:
        mark = MarkKeys(explicit)
    elif account is not None and not no_watermark:
        ring = KeyRing.open(settings)
        try:
            mark = MarkKeys(ring.account_key(account), ring.provider_key())
        except ValueError as exc:
            raise InputError(str(exc)) from None
    with err.status("Loading the model…"):
        lm = LocalModel.load(model or settings.model, settings.cache_dir, config)
    with err.status("Generating…"):
        (c,) = lm.generate([prompt], [mark], max_new_tokens=max_tokens, temperature=temperature, seed=seed)
    if as_json:
        _print_json(
            {
                "text": c.text,
                "account": account,
                "key_id": c.key_id,
                "completion_tokens": len(c.token_ids),
                "prompt_tokens": c.prompt_tokens,
                "finish_reason": c.finish_reason,
                # greedy decoding under a sampling member carries the green-list fallback (Watermark.greedy)
                "watermark": None
                if mark is None
                else (lm.watermark.greedy.config if temperature <= 0 else config).to_dict(),
            }
        )
    else:
        sys.stdout.write(c.text + "\n")  # raw: rich would re-wrap the text


# ---- detect -----------------------------------------------------------------------------------------
def _read_input(source: str) -> str:
    if source == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        name = "standard input"
    else:
        p = Path(source)
        if not p.exists():
            raise InputError(f"file not found: {source}")
        if p.is_dir():
            raise InputError(f"{source} is a directory, not a text file")
        try:
            with p.open("rb") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            raise InputError(f"cannot read {source}: {exc.strerror}") from None
        name = source
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{name} is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not valid UTF-8 (byte {exc.start})") from None


def _read_accounts_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"accounts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read accounts file {path}: {type(exc).__name__}") from None
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def _build_text_detector(
    model,
    accounts,
    accounts_file,
    alpha,
    scheme,
    gamma,
    delta,
    context_width,
    provider_fraction,
    hashing_key,
    vocab_size,
    entropy_threshold=None,
    layers=None,
    key_b_probability=None,
):
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.detection.detector import Detector
    from antidistill.detection.text import TextDetector
    from antidistill.keys import KeyRing
    from antidistill.models.embedded import load_tokenizer, resolve_model
    from antidistill.watermark.schemes import scheme_class

    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    config = _watermark_config(
        scheme,
        gamma,
        delta,
        context_width,
        provider_fraction,
        hashing_key,
        entropy_threshold,
        layers,
        key_b_probability,
    )
    if hashing_key is None and not scheme_class(config.scheme).generates:
        # vLLM's native marks use the key of its --watermark-config, never one derived from our master key
        raise InputError(f"--scheme {config.scheme} reads vLLM's own marks: give its key with --hashing-key")
    names = list(accounts or [])
    if accounts_file is not None:
        names += _read_accounts_file(accounts_file)
    names = list(dict.fromkeys(names))
    settings = _settings()
    explicit = _explicit_key(hashing_key, names)
    if explicit is not None:
        candidates, provider_keys = [explicit], []
    else:
        ring = KeyRing.open(settings, create=False)
        try:
            candidates = [k for a in names for k in ring.account_keys(a)]
        except ValueError as exc:
            raise InputError(str(exc)) from None
        provider_keys = ring.provider_keys() if config.provider_fraction > 0 else []
        if not provider_keys and not candidates:
            raise InputError("nothing to test against: give --account, --accounts-file or --hashing-key")
    tokenizer = load_tokenizer(resolve_model(model or settings.model), settings.cache_dir)
    if vocab_size is None:
        vocab_size = len(tokenizer)
    try:
        detector = Detector(config, vocab_size=vocab_size)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return TextDetector(tokenizer, detector, provider_keys, candidates, alpha)


def _report_dict(report) -> dict[str, Any]:
    d = report.to_dict()
    # the ranking is long and mostly noise for readers of one line per text; keep the top 3
    if d.get("attribution"):
        d["attribution"]["ranking"] = d["attribution"]["ranking"][:3]
    return d


def _sampling_schemes() -> set[str]:
    from antidistill.watermark.schemes import scheme_class, scheme_names

    return {n for n in scheme_names() if scheme_class(n).kind == "sample"}


def _print_report(report, text: str) -> None:
    # the report package (one fmt_p for every p-value shown) loads Jinja2 and SQLAlchemy, about 0.6 s that
    # `antidistill --help` must not pay
    from antidistill.forensics.report import fmt_p

    verdict = "[bold red]WATERMARKED[/]" if report.watermarked else "[bold green]not watermarked[/]"
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_row("verdict", f"{verdict} at alpha {report.alpha:g}")
    t.add_row("p-value", fmt_p(report.p_value))
    t.add_row("tokens scored", f"{report.tokens_scored} distinct pairs of {report.total_tokens} tokens")
    if report.config.get("scheme") in _sampling_schemes():
        # a Gumbel-max score is a sum of -log(1 - u), about 1 per pair unmarked: not a green count
        t.add_row("score", f"{report.green:.1f} (mean {report.green_fraction:.2f} per pair, z = {report.z:.2f})")
    else:
        t.add_row("green", f"{report.green} ({report.green_fraction:.1%}, z = {report.z:.2f})")
    if report.attribution is not None:
        a = report.attribution
        who = report.account or "no account (best: " + (a.key_id or "-") + ")"
        t.add_row("account", f"{who}, corrected p = {fmt_p(a.p_value_corrected)} over {a.keys_tested} keys")
    if report.span is not None and report.span.watermarked:
        s = report.span
        where = f"tokens {s.start_token}-{s.end_token}"
        if s.start_char is not None:
            snippet = text[s.start_char : s.end_char].replace("\n", " ")
            snippet = snippet if len(snippet) <= 80 else snippet[:38] + " … " + snippet[-38:]
            where += f", chars {s.start_char}-{s.end_char}: “{snippet}”"
        t.add_row("marked span", f"{where} (windowed test, corrected p = {fmt_p(s.p_value_corrected)})")
    out.print(t)


@app.command()
def detect(
    source: Annotated[str | None, typer.Argument(help="Text file to test, or - for standard input.")] = None,
    jsonl: Annotated[Path | None, typer.Option("--jsonl", help="Scan a corpus: one JSON object per line.")] = None,
    field: Annotated[str, typer.Option("--field", help="The text field of --jsonl records.")] = "text",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write --jsonl results here.")] = None,
    account: Annotated[list[str] | None, typer.Option("--account", help="Candidate account (repeatable).")] = None,
    accounts_file: Annotated[
        Path | None, typer.Option("--accounts-file", help="Candidate accounts, one a line.")
    ] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level.")] = 1e-3,
    model: ModelOpt = None,
    scheme: SchemeOpt = None,
    gamma: GammaOpt = None,
    delta: DeltaOpt = None,
    context_width: WidthOpt = None,
    provider_fraction: ProviderFracOpt = None,
    hashing_key: HashKeyOpt = None,
    entropy_threshold: EntropyOpt = None,
    layers: LayersOpt = None,
    key_b_probability: KeyBOpt = None,
    vocab_size: Annotated[
        int | None,
        typer.Option("--vocab-size", min=1, help="Vocabulary size for hf-lefthash (default: the tokenizer's)."),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, max=100_000, help="Texts tokenized at once (--jsonl).")] = 256,
    together: Annotated[
        bool,
        typer.Option(
            "--together",
            help="--jsonl: also attribute all the texts together (their distinct pairs pooled, each counted once) "
            "and end with one line for them: whose key marked this corpus as a whole.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Is a text watermarked by us, and by which account? Also scans a JSONL corpus (--jsonl)."""
    if jsonl is not None and source is not None:
        raise InputError("give either a text file or --jsonl, not both")
    if together and jsonl is None:
        raise InputError("--together attributes the texts of a --jsonl corpus together: give --jsonl FILE")
    if jsonl is None and source is None:
        raise InputError("give a text file, - for standard input, or --jsonl FILE")
    text = _read_input(source) if source is not None else None
    if text is not None and not text.strip():
        raise InputError("text is empty")
    if jsonl is not None and not jsonl.is_file():
        raise InputError(f"file not found: {jsonl}")
    td = _build_text_detector(
        model,
        account,
        accounts_file,
        alpha,
        scheme,
        gamma,
        delta,
        context_width,
        provider_fraction,
        hashing_key,
        vocab_size,
        entropy_threshold,
        layers,
        key_b_probability,
    )
    if text is not None:
        report = td.detect(text)
        if as_json:
            _print_json(_report_dict(report))
        else:
            _print_report(report, text)
        return
    _scan_jsonl(td, jsonl, field, output, batch, together)


def _together_record(td, pooled, texts: int) -> dict[str, Any]:
    """The last line of ``detect --jsonl --together``: the corpus's texts attributed together."""
    from antidistill.detection.results import AttributionResult

    if pooled is None or len(pooled) == 0:
        r = AttributionResult(None, None, None, 1.0, len(td.candidates), [])
    else:
        r = td.detector.attribute_pooled(pooled, td.candidates, td.provider_keys, td.alpha)
    best = r.best
    return {
        "together": {
            "texts": texts,
            "pairs": len(pooled) if pooled is not None else 0,
            "account_pairs": best.tokens_scored if best is not None else 0,
            "account": r.account,
            "key_id": r.key_id,
            "p_value": best.p_value if best is not None else 1.0,
            "p_value_corrected": r.p_value_corrected,
            "keys_tested": r.keys_tested,
            "alpha": td.alpha,
        }
    }


def _jsonl_item(lineno: int, raw: bytes, field: str) -> tuple[int, str | None, str | None] | None:
    """``(line, text, None)`` or ``(line, None, what is wrong)`` for one line of a corpus; ``None`` for a blank one."""
    try:
        line = raw.decode("utf-8")
        if not line.strip():
            return None
        obj = json.loads(line)
    except UnicodeDecodeError:
        return lineno, None, "line is not valid UTF-8"
    except json.JSONDecodeError as exc:
        return lineno, None, f"invalid JSON: {exc.msg}"
    value = obj.get(field) if isinstance(obj, dict) else None
    return (lineno, value, None) if isinstance(value, str) else (lineno, None, f"no string field {field!r}")


def _print_together(t: dict[str, Any]) -> None:
    from antidistill.forensics.report import fmt_p

    err.print(
        f"together: {t['texts']} texts, {t['pairs']} distinct pairs ({t['account_pairs']} on the account "
        f"positions): {t['account'] or 'no account'}, corrected p = {fmt_p(t['p_value_corrected'])} over "
        f"{t['keys_tested']} keys",
        highlight=False,
    )


def _scan_jsonl(td, path: Path, field: str, output: Path | None, batch: int, together: bool = False) -> None:
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    try:
        total = sum(1 for _ in path.open("rb"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    sink = output.open("w", encoding="utf-8") if output else sys.stdout
    counts = {"records": 0, "watermarked": 0, "errors": 0}
    pool: dict[str, Any] = {"pairs": None, "texts": 0}
    summary: dict[str, Any] | None = None

    def flush(items: list[tuple[int, str | None, str | None]]) -> None:
        texts = [t if t is not None else "" for _, t, _ in items]
        results = td.detect_many(texts)
        if together:  # every text that could be tested joins the pool
            good = [t for t, res in zip(texts, results, strict=True) if not isinstance(res, Exception)]
            pool["pairs"] = td.pooled_pairs(good, pool["pairs"])
            pool["texts"] += len(good)
        for (lineno, _, problem), res in zip(items, results, strict=True):
            counts["records"] += 1
            if problem is not None or isinstance(res, Exception):
                counts["errors"] += 1
                rec = {"line": lineno, "error": problem or str(res)}
            else:
                counts["watermarked"] += int(res.watermarked)
                d = _report_dict(res)
                d.pop("config", None)
                rec = {"line": lineno, **d}
            sink.write(json.dumps(rec, default=str) + "\n")

    try:
        with Progress(
            TextColumn("scanning"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as progress:
            task = progress.add_task("scan", total=total)
            pending: list[tuple[int, str | None, str | None]] = []
            with path.open("rb") as f:
                for lineno, raw in enumerate(f, start=1):
                    item = _jsonl_item(lineno, raw, field)
                    if item is None:  # a blank line
                        progress.advance(task)
                        continue
                    pending.append(item)
                    if len(pending) >= batch:
                        flush(pending)
                        progress.advance(task, len(pending))
                        pending = []
                if pending:
                    flush(pending)
                    progress.advance(task, len(pending))
        summary = _together_record(td, pool["pairs"], pool["texts"]) if together else None
        if summary is not None:
            sink.write(json.dumps(summary, default=str) + "\n")
    finally:
        if output:
            sink.close()
    err.print(
        f"{counts['records']} records, {counts['watermarked']} watermarked, {counts['errors']} errors", highlight=False
    )
    if summary is not None:
        _print_together(summary["together"])


# ---- keys -------------------------------------------------------------------------------------------
@keys_app.command("init")
def keys_init() -> None:
    """Create the master key file (mode 0600) in the data directory, unless a master key exists."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.keys import MASTER_KEY_FILE, MasterKey

    settings = _settings()
    path = settings.data_dir / MASTER_KEY_FILE
    existed = settings.master_key is not None or path.exists()
    MasterKey.load(settings, create=True)
    where = "ANTIDISTILL_MASTER_KEY" if settings.master_key is not None else str(path)
    out.print(f"master key {'already present' if existed else 'created'}: {where}", markup=False, highlight=False)


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """Current key versions (key ids only; key material is never printed)."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.keys import KeyRing

    ring = KeyRing.open(_settings(), create=False)
    data = {
        "provider": ring.provider_key().key_id,
        "accounts": {a: ring.account_key(a).key_id for a in ring.known_accounts()},
    }
    if as_json:
        _print_json(data)
        return
    out.print(f"provider: {data['provider']}")
    for a, k in data["accounts"].items():
        out.print(f"{a}: {k}", markup=False)


@keys_app.command("rotate")
def keys_rotate(
    account: Annotated[str | None, typer.Option("--account", help="Rotate this account's key.")] = None,
    provider: Annotated[bool, typer.Option("--provider", help="Rotate the provider-wide key.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a new key version for new traffic; older versions stay detectable."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.keys import KeyRing

    if (account is None) == (not provider):
        raise InputError("give exactly one of --account ID or --provider")
    ring = KeyRing.open(_settings(), create=False)
    try:
        key = ring.rotate_provider() if provider else ring.rotate_account(account)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if as_json:
        _print_json({"key_id": key.key_id, "version": key.version})
    else:
        out.print(f"new key: {key.key_id}", markup=False)


# ---- report -----------------------------------------------------------------------------------------
@app.command()
def report(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for report.html, report.json and SHA256SUMS.", file_okay=False)
    ],
    account: Annotated[str | None, typer.Option("--account", help="The account the report is about.")] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster", help="A cluster id from the monitor's alerts, a comma list of account ids, or a file of them."
        ),
    ] = None,
    scan: Annotated[
        list[Path] | None,
        typer.Option("--scan", help="JSON result of `antidistill scan` on a suspect model (repeatable)."),
    ] = None,
    control_scan: Annotated[
        list[Path] | None,
        typer.Option(
            "--control-scan", help="JSON scan result of a model known not to be trained on our outputs (repeatable)."
        ),
    ] = None,
    suspect_model: Annotated[
        str | None,
        typer.Option(
            "--suspect-model", help="Scan these open weights now, on the accounts' exchanges from the audit log."
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Policy file whose clauses are quoted (default: the shipped policy)."),
    ] = None,
    template_dir: Annotated[
        Path | None,
        typer.Option(
            "--template-dir",
            help="Directory of report templates that "
            "replace the shipped ones of the same name (letterhead.html, "
            "style.css, …).",
            file_okay=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="Database URL (default: the configured one).", show_default=False),
    ] = None,
) -> None:
    """Write the evidence package about an account or a cluster: a self-contained HTML report and its JSON twin."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.store.db import normalize_url, safe_url
    from antidistill.store.sql import Store
    from antidistill.workflows.report import make_report

    if (account is None) == (cluster is None):
        raise InputError("give exactly one of --account ID or --cluster ID")
    with Store.open(database_url, _settings()) as store:
        db = safe_url(normalize_url(database_url)) if database_url else None
        files, evidence = make_report(
            store,
            out_dir,
            account=account,
            cluster=cluster,
            scan_files=scan or [],
            control_files=control_scan or [],
            suspect_model=suspect_model,
            policy_file=policy,
            database=db,
            template_dir=template_dir,
        )
    summary = evidence["summary"]
    if as_json:
        _print_json(
            {
                "html": str(files.html),
                "json": str(files.json),
                "sha256sums": str(files.sums),
                "verdict": summary["verdict"],
                "controls_ok": summary["controls_ok"],
                "headline": summary["headline"],
                "p_values": [c["p_value"] for c in summary["confidence"]],
                "audit_ok": evidence["audit"]["verification"]["ok"],
            }
        )
        return
    out.print(summary["headline"], markup=False, highlight=False)
    out.print(f"report: {files.html}\njson:   {files.json}", markup=False, highlight=False)


# ---- demo -------------------------------------------------------------------------------------------
@app.command()
def demo(
    model: ModelOpt = None,
    max_tokens: Annotated[
        int,
        typer.Option(
            "--max-tokens",
            min=96,
            max=1024,
            help="Tokens of each stage-2 "
            "completion; fewer than 96 leave too few distinct token pairs to "
            "test a marked text with power.",
        ),
    ] = 160,
    seed: Annotated[int, typer.Option("--seed")] = 7,
    quick: Annotated[bool, typer.Option("--quick", help="Every stage smaller: a few minutes instead of ~15.")] = False,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report-dir", help="Where the evidence report is written (default: demo-report in the data directory)."
        ),
    ] = None,
) -> None:
    """The main job, end to end: mark, watch (monitor and policy live), attack ourselves and prove it."""
    # imported here: the demo loads every part (gateway, monitor, forensics, the openai SDK), which --help must
    # not pay for
    from antidistill.demo.run import run_demo

    ok = run_demo(out, model=model, max_tokens=max_tokens, seed=seed, quick=quick, report_dir=report_dir)
    if not ok:
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the version."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill import __version__

    out.print(__version__)


def _click_kind(exc: BaseException) -> str | None:
    """The click exception family of ``exc`` by class name: typer >= 0.2x carries its own copy of click."""
    names = {c.__name__ for c in type(exc).__mro__}
    for kind in ("NoArgsIsHelpError", "UsageError", "ClickException", "Abort", "Exit"):
        if kind in names:
            return kind
    return None


#: the extras each command needs (the longest matching command path wins); the core's commands need none.
#: A part that only some uses of a command need (the local backend of `serve`, open weights in `scan`,
#: PostgreSQL, Redis, Parquet) is checked where it is used, see antidistill.extras.
COMMAND_EXTRAS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("generate",): ("model",),
    ("serve",): ("gateway",),
    ("accounts",): ("gateway",),
    ("audit",): ("gateway",),
    ("monitor",): ("monitor",),
    ("simulate",): ("monitor",),
    ("simulate", "plan"): (),
    ("simulate", "personas"): (),
    ("scan",): ("forensics",),
    ("report",): ("forensics",),
    ("distill",): ("redteam",),
    ("distill", "mix"): (),
    ("demo",): ("model", "monitor", "forensics", "redteam"),
}
_GROUPS = {"accounts", "audit", "monitor", "simulate", "distill", "keys"}


def _require_extras(argv: list[str]) -> None:
    """Refuse a command whose extra is not installed, in one line, before it starts (its help always works)."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.extras import require

    if any(a in ("--help", "-h") for a in argv):
        return
    path = tuple(a for a in argv[:2] if not a.startswith("-"))
    if not path or (path[0] in _GROUPS and len(path) < 2):  # a group without a command prints its help
        return
    for n in (2, 1):
        if path[:n] in COMMAND_EXTRAS:
            for extra in COMMAND_EXTRAS[path[:n]]:
                # the demo runs every part: one install that surely covers it
                require(extra, f"`antidistill {' '.join(path[:n])}`", install="all" if path[0] == "demo" else None)
            return


def _missing_module_message(exc: ModuleNotFoundError) -> str | None:
    """One line for a module of an extra that a command imported without having checked for it first."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.extras import extras_providing

    found = extras_providing(exc.name or "")
    if not found:
        return None
    choices = " or ".join(f"'antidistill[{e}]'" for e in found)
    return f"{exc.name} is not installed: pip install {choices}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr and a non-zero exit for every error."""
    # OpenMP threads that spin while waiting for each other make every decode step 3-10x slower as soon as
    # another process wants a core (measured on 2-core machines); passive waiting costs nothing when idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        _require_extras(list(sys.argv[1:] if argv is None else argv))
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc != 0:
            sys.exit(rc)
    except AntidistillError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        sys.exit(130)
    except MemoryError:
        err.print("error: out of memory", highlight=False)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        message = _missing_module_message(exc)
        if message is None:
            err.print(f"error: unexpected {type(exc).__name__}: {exc}", markup=False, highlight=False)
            sys.exit(3)
        err.print(f"error: {message}", markup=False, highlight=False)
        sys.exit(2)
    except Exception as exc:
        kind = _click_kind(exc)
        if kind == "NoArgsIsHelpError":  # `antidistill` alone: the help was printed
            sys.exit(0)
        if kind in ("UsageError", "ClickException"):
            err.print(f"error: {exc.format_message()}", markup=False, highlight=False)
            sys.exit(getattr(exc, "exit_code", 2) or 2)
        if kind == "Abort":
            err.print("aborted", highlight=False)
            sys.exit(130)
        if kind == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        # a bug of ours: still one line, with enough to report it
        err.print(f"error: unexpected {type(exc).__name__}: {exc}", markup=False, highlight=False)
        sys.exit(3)
