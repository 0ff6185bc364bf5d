"""The radioactivity scan as one workflow: whose keys to test, what to feed or send, the suspect (weights or an
endpoint), the controls; used by ``antidistill scan``, ``antidistill report --suspect-model`` and the demo.

Open mode reads the suspect's predictions on our watermarked texts (reading mode); closed mode scores what an
OpenAI-compatible endpoint generates (Sander et al. 2024, https://arxiv.org/abs/2402.14904). The statistics are
:mod:`antidistill.forensics.scan`'s and :mod:`antidistill.forensics.attribution`'s; this module gathers their
inputs from the store, the key ring and the model files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from antidistill.errors import InputError
from antidistill.forensics import inputs
from antidistill.forensics.closed import RunOptions
from antidistill.forensics.endpoint import AnswerCache, public_url
from antidistill.forensics.scan import (
    DEFAULT_ALPHA,
    DEFAULT_BATCH_TOKENS,
    DEFAULT_CONTROL_KEYS,
    FedText,
    ScanKeys,
    ScanReport,
    check_same_tokenizer,
    make_client,
    scan_closed,
    scan_open,
)
from antidistill.keys import KeyRing
from antidistill.models.embedded import ModelSource, load_causal_lm, load_tokenizer, resolve_model
from antidistill.settings import Settings, get_settings
from antidistill.store.api import AuditLog
from antidistill.store.db import DEFAULT_SQLITE_FILE
from antidistill.store.sql import Store
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.schemes import scheme_class

#: the name that stands for the served model (the teacher) where a model path is expected
TEACHER = "teacher"
#: the answer cache of closed scans, under the data directory unless a scan names its own
SCAN_CACHE = "scan-cache"
#: the files that make a weights directory carry its own tokenizer
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class ScanInputs:
    """What a scan tests and feeds: the candidate accounts, their clusters and keys, the fed texts, the config.

    Args:
        candidates: the accounts whose keys are tested.
        clusters: cluster id -> member accounts, tested pooled.
        keys: the keys (provider, every version of every candidate's, pooled clusters).
        texts: watermarked texts to feed the suspect (open mode) or take prompts from (closed mode); texts from
            the audit log carry the configuration their record names, and are scored with it.
        config: the watermark parameters most texts were marked with (texts without their own are scored so).
        configs: every configuration the texts were marked with (a mixed deployment has several; closed mode
            scores the suspect's completions under each). Empty: ``config`` alone.
    """

    candidates: list[str]
    clusters: dict[str, list[str]]
    keys: ScanKeys
    texts: list[FedText] = field(default_factory=list)
    config: WatermarkConfig = field(default_factory=WatermarkConfig)
    configs: list[WatermarkConfig] = field(default_factory=list)

    def override(self, config: WatermarkConfig) -> None:
        """Score everything with ``config`` (parameters given by hand), whatever the records name."""
        self.config = config
        self.configs = [config]
        self.texts = [replace(t, config=None) for t in self.texts]


def open_store(settings: Settings) -> Store | None:
    """The installation's store, or ``None`` where there is none (no URL configured and no SQLite file)."""
    if not settings.database_url and not (settings.data_dir / DEFAULT_SQLITE_FILE).exists():
        return None
    return Store.open(None, settings)


def scan_config(
    base: WatermarkConfig | None,
    gamma: float | None = None,
    context_width: int | None = None,
    provider_fraction: float | None = None,
    scheme: str | None = None,
    entropy_threshold: float | None = None,
    layers: int | None = None,
) -> WatermarkConfig:
    """``base`` (default: the default config) with the given parameters overridden.

    A new ``scheme`` drops the base's parameters that do not apply to it: it gets its own default context width
    unless one is given (``antidistill-v1`` reads h = 1, the sampling members h = 3, whatever the base had), a
    single-key member gets provider fraction 0 unless one is given, a member other than ``kgw-entropy`` no entropy
    threshold, and a member other than ``tournament`` no number of rounds.

    Example:
        >>> base = WatermarkConfig(scheme="gumbel-dual")
        >>> scan_config(base, scheme="antidistill-v1").context_width, scan_config(base).context_width
        (1, 3)
        >>> scan_config(base, scheme="antidistill-v1", context_width=2).context_width
        2
    """
    params: dict[str, Any] = (base or WatermarkConfig()).to_dict()
    if scheme is not None and scheme != params.get("scheme"):
        params["scheme"] = scheme
        params.pop("context_width", None)
        if scheme_class(scheme).single_key:
            params["provider_fraction"] = 0.0
        elif params.get("provider_fraction") == 0.0 and (base is None or scheme_class(base.scheme).single_key):
            params["provider_fraction"] = WatermarkConfig().provider_fraction
        if scheme != "kgw-entropy":
            params.pop("entropy_threshold", None)
        if scheme != "tournament":
            params.pop("layers", None)
    for name, value in (
        ("gamma", gamma),
        ("context_width", context_width),
        ("provider_fraction", provider_fraction),
        ("entropy_threshold", entropy_threshold),
        ("layers", layers),
    ):
        if value is not None:
            params[name] = value
    return WatermarkConfig.from_dict(params)


def gather_inputs(
    settings: Settings,
    *,
    accounts: Sequence[str] = (),
    clusters: Sequence[str] = (),
    texts_file: Path | None = None,
    from_audit: bool = True,
    max_texts: int | None = None,
) -> ScanInputs:
    """The candidates (the named accounts and cluster members, else every account in the store), their keys, and
    the texts to feed: ``texts_file`` if given, else (``from_audit``) the candidates' watermarked exchanges.

    Args:
        clusters: each a comma-separated list of account ids or a file of ids (see
            :func:`antidistill.forensics.inputs.parse_cluster`).

    Raises:
        InputError: an unknown account, an unreadable file, no master key for the keys.
    """
    ring = KeyRing.open(settings, create=False)
    named_clusters: dict[str, list[str]] = {}
    for i, value in enumerate(clusters):
        members = inputs.parse_cluster(value)
        name = Path(value).stem if "," not in value and Path(value).is_file() else f"cluster-{i + 1}"
        named_clusters[name if name not in named_clusters else f"{name}-{i + 1}"] = members
    named = list(dict.fromkeys([*accounts, *(a for m in named_clusters.values() for a in m)]))
    texts: list[FedText] = []
    config = None
    configs: list[WatermarkConfig] = []
    store = open_store(settings)
    try:
        if store is not None:
            unknown = [a for a in named if store.get_account(a) is None]
            if unknown:
                raise InputError(f"unknown account: {', '.join(unknown)}")
            candidates = named or [a.id for a in store.list_accounts()]
        else:
            candidates = named
        if texts_file is not None:
            texts = inputs.read_texts_file(texts_file, max_texts)
        elif store is not None and from_audit:
            audit = inputs.texts_from_records(store.iter_records(), set(candidates) if named else None, max_texts)
            texts, config, configs = audit.texts, audit.config(), audit.all_configs()
    finally:
        if store is not None:
            store.close()
    keys = ScanKeys.from_keyring(ring, candidates, named_clusters)
    return ScanInputs(candidates, named_clusters, keys, texts, config or WatermarkConfig(), configs)


def load_model(path: str, settings: Settings) -> tuple[ModelSource, Any]:
    """A causal LM (and its source) on the CPU: ``teacher`` is the served model (settings or embedded)."""
    source = resolve_model(settings.model if path == TEACHER else path)
    model, _ = load_causal_lm(source, settings.cache_dir)
    return source, model


def check_tokenizer(source: ModelSource, tokenizer: Any, settings: Settings) -> None:
    """Refuse a model whose tokenizer differs from ours; a weights directory without tokenizer files is read with
    ours."""
    if source.kind == "dir" and not any((source.path / f).exists() for f in _TOKENIZER_FILES):
        return
    check_same_tokenizer(tokenizer, load_tokenizer(source, settings.cache_dir))


def served_tokenizer(settings: Settings) -> Any:
    """The served model's tokenizer (the one the marks were made with)."""
    return load_tokenizer(resolve_model(settings.model), settings.cache_dir)


def open_scan(
    settings: Settings,
    suspect_model: str,
    scan_inputs: ScanInputs,
    *,
    tokenizer: Any = None,
    control_models: Sequence[str] = (),
    exclude: str = "prefix-pairs",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    alpha: float = DEFAULT_ALPHA,
    control_keys: int = DEFAULT_CONTROL_KEYS,
    control_seed: int = 0,
    max_texts: int | None = None,
    label: str | None = None,
) -> ScanReport:
    """Scan the weights at ``suspect_model`` (or ``teacher``) by feeding it the inputs' texts (reading mode);
    ``label`` names the suspect in the report (default: the name and the path it resolved to).

    Raises:
        InputError: nothing to feed, no such model, a different tokenizer.
    """
    if not scan_inputs.texts:
        raise InputError(
            "no watermarked texts to feed: give --texts FILE, or scan accounts with watermarked "
            "traffic in the audit log"
        )
    tokenizer = tokenizer if tokenizer is not None else served_tokenizer(settings)
    source, model = load_model(suspect_model, settings)
    if suspect_model != TEACHER:
        check_tokenizer(source, tokenizer, settings)
    controls: dict[str, Any] = {}
    for name in control_models:
        csource, controls[name] = load_model(name, settings)
        if name != TEACHER:
            check_tokenizer(csource, tokenizer, settings)
    return scan_open(
        model,
        tokenizer,
        scan_inputs.texts,
        scan_inputs.keys,
        scan_inputs.config,
        exclude=exclude,
        control_models=controls,
        suspect=label or f"{suspect_model} ({source.path})",
        batch_tokens=batch_tokens,
        alpha=alpha,
        controls=control_keys,
        control_seed=control_seed,
        max_texts=max_texts,
    )


def endpoint_model_name(client: Any, url: str) -> str:
    """The first model an OpenAI-compatible endpoint lists (``default`` if it lists none)."""
    import openai  # the SDK: only closed-mode scans need it (about 0.5 s to import)

    try:
        listed = [m.id for m in client.models.list()]
    except openai.APIConnectionError:
        raise InputError(f"cannot reach the suspect endpoint {url}") from None
    except openai.APIStatusError as exc:
        if exc.status_code in (401, 403):
            raise InputError(
                f"the suspect endpoint refused the request (HTTP {exc.status_code}); give --suspect-api-key"
            ) from None
        listed = []
    return listed[0] if listed else "default"


def closed_scan(
    settings: Settings,
    url: str,
    prompts: Sequence[str],
    scan_inputs: ScanInputs,
    *,
    api_key: str | None = None,
    model_name: str | None = None,
    tokenizer: Any = None,
    control_models: Sequence[str] = (),
    samples: int = 1,
    temperature: float = 0.7,
    max_tokens: int = 128,
    max_prompts: int | None = 200,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    control_keys: int = DEFAULT_CONTROL_KEYS,
    control_seed: int = 0,
    run: RunOptions | None = None,
    top_logprobs: int = 0,
) -> ScanReport:
    """Send ``prompts`` to the endpoint at ``url`` and score its completions (closed mode); control models are
    loaded and sampled the same way. ``run``: concurrency, the answer cache (default: ``scan-cache`` in the data
    directory), early stopping, the pilot and its plan; with ``run.from_cache`` nothing is sent, and the model name
    defaults to the one the cache holds answers of. ``top_logprobs``: candidates per position to ask for, and the
    top-logprob mass statistic beside the sampled-token one (0: neither)."""
    from antidistill.models.local import LocalModel  # torch: only a scan with a local control model needs it

    if not prompts:
        raise InputError(
            "no prompts to send: give --prompts FILE or --texts FILE, or scan accounts with "
            "watermarked traffic in the audit log"
        )
    run = run or RunOptions()
    if run.cache_dir is None:
        run = replace(run, cache_dir=Path(settings.data_dir) / SCAN_CACHE)
    tokenizer = tokenizer if tokenizer is not None else served_tokenizer(settings)
    client = make_client(url, api_key)
    if model_name is not None:
        name = model_name
    elif run.from_cache:
        name = cached_model_name(run.cache_dir, url)
    else:
        name = endpoint_model_name(client, url)
    controls = {
        c: LocalModel.load(settings.model if c == TEACHER else c, settings.cache_dir, scan_inputs.config)
        for c in control_models
    }
    return scan_closed(
        client,
        list(prompts),
        tokenizer,
        scan_inputs.keys,
        scan_inputs.config,
        model_name=name,
        samples=samples,
        temperature=temperature,
        max_tokens=max_tokens,
        max_prompts=max_prompts,
        seed=seed,
        control_models=controls,
        alpha=alpha,
        controls=control_keys,
        control_seed=control_seed,
        configs=scan_inputs.configs,
        run=run,
        top_logprobs=top_logprobs,
    )


def with_prompt_pool(prompts: Sequence[Any], extra: int, seed: int = 0) -> list[Any]:
    """``prompts`` (e.g. the harvested ones), then up to ``extra`` built-in prompts of the harvest's domains (the red
    team's topics x tasks, shuffled by ``seed``), each prompt once. More distinct prompts give more distinct tuples
    per query than more samples of the same prompts, whose answers repeat each other's tuples."""
    from antidistill.redteam.harvest import TASKS, TOPICS, generate_prompts

    if extra < 0:
        raise InputError(f"the prompt pool size must be >= 0, got {extra}")
    pool = generate_prompts(min(extra, len(TOPICS) * len(TASKS)), seed)
    return list(dict.fromkeys([*prompts, *pool]))


def cached_model_name(cache_dir: Path | None, url: str) -> str:
    """The model whose answers from ``url`` the cache holds (``--from-cache`` without ``--suspect-model-name``)."""
    names = AnswerCache(cache_dir).models(public_url(url)) if cache_dir is not None else []
    if len(names) != 1:
        found = ", ".join(names) if names else "none"
        raise InputError(
            f"the scan cache holds answers of {len(names)} models of {public_url(url)} ({found}); "
            "give --suspect-model-name"
        )
    return names[0]


def scan_open_on_audit(
    store: AuditLog,
    suspect_model: str,
    account_ids: Sequence[str],
    *,
    cluster_id: str | None = None,
    settings: Settings | None = None,
    max_texts: int | None = None,
    teacher_control: bool = True,
) -> ScanReport:
    """Scan the open weights at ``suspect_model``, feeding it the watermarked exchanges of ``account_ids`` from the
    audit log (reading mode), as ``antidistill report --suspect-model`` does.

    Each text is scored with the configuration its own record names (records of a mixed deployment are grouped by
    configuration, see :mod:`antidistill.forensics.scan`). The provider key and every version of each account's
    key are tested (pooled as ``cluster_id`` when given), and
    the served model itself is scanned the same way as a control (``teacher_control``): it produced the marked text
    but was never trained on it, so it must come out not significant.

    Raises:
        InputError: no such model, no watermarked exchange to feed, a different tokenizer.
        ConfigError: no master key here (the scan needs the keys the gateway marked with).
    """
    settings = settings or get_settings()
    if not Path(suspect_model).exists():
        raise InputError(f"suspect model not found: {suspect_model}")
    fed = inputs.texts_from_records(store.iter_records(), accounts=set(account_ids), max_texts=max_texts)
    if not fed.texts:
        who = f"cluster {cluster_id}" if cluster_id is not None else f"account {', '.join(account_ids)}"
        raise InputError(f"the audit log holds no watermarked exchange of {who} to feed the suspect model")
    ring = KeyRing.open(settings, create=False)
    clusters = {cluster_id: list(account_ids)} if cluster_id is not None else {}
    keys = ScanKeys.from_keyring(ring, account_ids, clusters)
    scan_inputs = ScanInputs(
        list(account_ids), clusters, keys, fed.texts, fed.config() or WatermarkConfig(), fed.all_configs()
    )
    return open_scan(
        settings,
        suspect_model,
        scan_inputs,
        control_models=[TEACHER] if teacher_control else [],
        max_texts=max_texts,
        label=str(suspect_model),
    )


__all__ = ["TEACHER", "ScanInputs", "closed_scan", "gather_inputs", "open_scan", "scan_config", "scan_open_on_audit"]
