"""Radioactivity scans: does a suspect model carry our watermark, and whose outputs was it trained on?

A model fine-tuned on watermarked text picks up the watermark's bias ("radioactivity", Sander et al. 2024,
"Watermarking makes language models radioactive", https://arxiv.org/abs/2402.14904). Two ways to look for it:

* **open mode** (weights at hand, *reading mode* of the paper): feed our watermarked texts (the harvested prompts
  and answers from the audit log) through the suspect and score its top-1 next-token prediction at every answer
  position, as the tuple (window, predicted token).
* **closed mode** (only an OpenAI-compatible endpoint): send prompts, score the completions' tuples.

Each distinct (window, token) tuple is scored once, and the statistics are exact
(:mod:`antidistill.forensics.attribution`).

Mixed deployments
-----------------
Texts marked under different configurations (the server's scheme changed between them) are scored each with its
own: every :class:`FedText` may carry the configuration its audit record names, and a scan groups the texts by
configuration. In open mode each group's tuples are its own texts' answer positions (the prefix-pairs rule still
reads the whole fed corpus, so a tuple read in a text of another group is excluded too); in closed mode the same
completions are scored under every configuration. The groups are combined by Bonferroni
(:func:`antidistill.forensics.attribution.combine_groups`), valid whatever their dependence.

Why open mode excludes "prefix pairs"
-------------------------------------
With a context width of 1, a model that never saw the key (the untouched teacher) still looks green when fed
watermarked text: if the bigram (a, b) occurred earlier in the fed text (where it was sampled partly *because* it
is green), an induction head predicts b after a again. So the prediction at position t is skipped when its tuple
occurs as an actual adjacent tuple earlier in the fed corpus: in this text before t (prompt included) or in any
text fed before it. For every tuple that is scored, nothing the model has read shows the pair; the only evidence
about its colour is that it was *not* sampled where it could have been, which makes green less likely. So, given
what was read, each scored tuple is green with probability at most gamma, and the count is (up to the weak
dependence of the number of scored tuples on the text) stochastically below Binomial(n, gamma): exact or
conservative. Positions whose window touches the prompt are skipped too. A student that *memorised* the answers
still predicts the next actual token, which it has not read before in this corpus, and is caught.
``exclude="prompt"`` (skip only tuples occurring in the text's own prompt) is kept to measure the bias the rule
removes; it is not valid evidence.

In closed mode the suspect writes the text itself; under H0 it has no access to the key, so only what it copies
from its prompt (which may quote our outputs) can look green: tuples occurring in the prompt are skipped.

Example (the red team's students, the harvested texts and the test master key):
    >>> from antidistill.forensics import ScanKeys, load_suspect, scan_open, scan_closed    # doctest: +SKIP
    >>> student, _ = load_suspect("students/s1")                                           # doctest: +SKIP
    >>> _, tok = load_suspect("teacher")                                                   # doctest: +SKIP
    >>> keys = ScanKeys.from_master(master, ["attacker-001", "user-1"])                    # doctest: +SKIP
    >>> r = scan_open(student, tok, [(prompt, response) for ...], keys)                    # doctest: +SKIP
    >>> r.p_value, r.provider.p_value, r.attributed_account, r.to_dict()                   # doctest: +SKIP
    >>> r = scan_closed("http://127.0.0.1:8000/v1", prompts, tok, keys, samples=2)         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import openai

from antidistill.detection.detector import DEFAULT_ALPHA
from antidistill.errors import InputError
from antidistill.forensics.attribution import (
    DEFAULT_CONTROL_KEYS,
    AccountResult,
    Attribution,
    BinomialTest,
    ClusterResult,
    ControlResult,
    CurvePoint,
    attribute_tuples,
    combine_groups,
    control_keys,
)
from antidistill.forensics.closed import ClosedRun, Collected, RunOptions, ScanProgress, StreamScorer
from antidistill.forensics.endpoint import AnswerCache, Ask, Params, Querier, answers, plan_asks, public_url
from antidistill.forensics.logprobs import (
    MAX_TOP_LOGPROBS,
    PARTIAL_SEED_SCHEMES,
    MassTuples,
    TokenReader,
    gather,
    mass_report,
)
from antidistill.forensics.sequential import SequentialResult
from antidistill.keys import KeyRing, MasterKey, WatermarkKey
from antidistill.models.embedded import load_causal_lm, load_tokenizer, resolve_model
from antidistill.settings import get_settings
from antidistill.watermark.config import WatermarkConfig
from antidistill.watermark.marker import Watermark

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
EXCLUSION_POLICIES = ("prefix-pairs", "prompt")
DEFAULT_BATCH_TOKENS = 2048
DEFAULT_MAX_SEQ_TOKENS = 1024


# ---- inputs --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FedText:
    """One watermarked exchange to feed a suspect (open mode) or whose prompt to send it (closed mode).

    Args:
        prompt: chat messages, or a string (one user message when ``chat``, else a raw prompt), or ``None``.
        response: the watermarked answer we served.
        chat: encode the prompt with the chat template (``/v1/chat/completions``) or raw (``/v1/completions``).
        account: the account that received it (if known).
        config: the watermark configuration it was marked with, as its audit record names it (``None``: the
            scan's configuration).
    """

    prompt: str | Messages | None
    response: str
    chat: bool = True
    account: str | None = None
    config: WatermarkConfig | None = None

    @classmethod
    def coerce(cls, item: FedText | tuple | Mapping[str, Any]) -> FedText:
        if isinstance(item, FedText):
            return item
        if isinstance(item, Mapping):
            prompt = item.get("messages", item.get("prompt"))
            return cls(prompt, str(item.get("response", "")), bool(item.get("chat", True)), item.get("account"))
        prompt, response = item
        return cls(prompt, response)


@dataclass(frozen=True)
class ScanKeys:
    """The keys a scan tests: every provider key version, and every version of each candidate account's key.

    Args:
        provider: provider key versions (empty: no provider test).
        accounts: account id -> its key versions.
        clusters: cluster id -> member account ids (each must be in ``accounts``).

    Example:
        >>> keys = ScanKeys.from_master(MasterKey(b"k" * 32), ["alice", "bob"], {"c1": ["alice", "bob"]})
        >>> [k.key_id for k in keys.provider], sorted(keys.accounts)
        (['provider:v1'], ['alice', 'bob'])
    """

    provider: list[WatermarkKey]
    accounts: dict[str, list[WatermarkKey]]
    clusters: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_master(
        cls,
        master: MasterKey,
        accounts: Iterable[str] = (),
        clusters: Mapping[str, Sequence[str]] | None = None,
        versions: Mapping[str, int] | None = None,
        provider_versions: int = 1,
    ) -> ScanKeys:
        """Keys derived from the master: ``versions`` gives an account's newest version (default 1)."""
        versions = dict(versions or {})
        accts = list(dict.fromkeys(list(accounts) + [a for m in (clusters or {}).values() for a in m]))
        return cls(
            [master.provider_key(v) for v in range(1, provider_versions + 1)],
            {a: [master.account_key(a, v) for v in range(1, versions.get(a, 1) + 1)] for a in accts},
            {c: list(m) for c, m in (clusters or {}).items()},
        )

    @classmethod
    def from_keyring(
        cls, ring: KeyRing, accounts: Iterable[str] = (), clusters: Mapping[str, Sequence[str]] | None = None
    ) -> ScanKeys:
        """Every version the ring knows of the provider key and of each account's key."""
        accts = list(dict.fromkeys(list(accounts) + [a for m in (clusters or {}).values() for a in m]))
        return cls(
            ring.provider_keys(),
            {a: ring.account_keys(a) for a in accts},
            {c: list(m) for c, m in (clusters or {}).items()},
        )


# ---- the report ----------------------------------------------------------------------------------------
@dataclass
class ScanReport:
    """What a radioactivity scan found, with everything needed to replay it.

    Args:
        mode: ``"open"`` (reading mode on weights) or ``"closed"`` (endpoint).
        suspect: the model path or endpoint URL (and model name).
        parameters: watermark config, exclusion policy, alpha, budget, seeds, keys tested (ids only).
        texts: texts fed (open) or completions scored (closed).
        tokens_seen: positions looked at (answer positions fed, or completion tokens).
        tokens_scored: distinct tuples scored.
        skipped: positions not scored, by reason.
        provider: the provider test (``None`` without a provider key).
        accounts: per-account results, most significant first (p corrected for every key tested).
        best_account: the first of ``accounts``.
        clusters: pooled cluster tests.
        curve: provider (and best-account) p-value against tuples scored.
        controls: never-issued keys and control models scanned the same way.
        p_value: the overall p-value (best family, corrected for the families tested).
        significant: ``p_value <= alpha``; ``attributed_account`` / ``attributed_cluster`` likewise.
        verdict: the conclusion in plain words.
        stopping_rule: how the amount of data was decided (a fixed budget, or early stopping on the sequential
            p-value); it decides which p-value is valid evidence.
        sequential: the anytime-valid (sequential) p-values (closed mode), valid under any stopping rule.
        plan: the budget plan made from the pilot, if any.
        logprob: the top-logprob mass statistic (closed mode with ``top_logprobs``), beside the verdict.
    """

    mode: str
    suspect: str
    parameters: dict[str, Any]
    texts: int
    tokens_seen: int
    tokens_scored: int
    skipped: dict[str, int]
    provider: BinomialTest | None
    accounts: list[AccountResult]
    best_account: AccountResult | None
    clusters: list[ClusterResult]
    curve: list[CurvePoint]
    controls: list[ControlResult]
    p_value: float
    alpha: float
    significant: bool
    attributed_account: str | None
    attributed_cluster: str | None
    controls_ok: bool
    verdict: str
    seconds: float = 0.0
    stopping_rule: str = "fixed budget (no early stopping)"
    sequential: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    logprob: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.provider is not None:
            d["provider"]["green_fraction"] = self.provider.green_fraction
        return d


def _verdict(
    att: Attribution, alpha: float, controls_ok: bool, tokens_scored: int
) -> tuple[str, str | None, str | None]:
    lines = []
    acct = att.best_account.account if att.best_account and att.best_account.p_corrected <= alpha else None
    clus = att.clusters[0].cluster_id if att.clusters and att.clusters[0].p_corrected <= alpha else None
    if att.p_value <= alpha:
        lines.append(
            f"The suspect carries our watermark (p = {att.p_value:.3g} <= alpha {alpha:g}, "
            f"{tokens_scored} distinct tuples): it was very likely trained on our outputs."
        )
        if att.provider is not None:
            lines.append(
                f"Provider-key test: p = {att.provider.p_value:.3g} ({att.provider.green} of {att.provider.n} green)."
            )
        if acct:
            b = att.best_account
            lines.append(
                f"Attributed to account {acct} (corrected p = {b.p_corrected:.3g} over {att.account_keys_tested} keys)."
            )
        elif att.best_account is not None:
            lines.append("No single account is significant after correction.")
        if clus:
            c = att.clusters[0]
            lines.append(
                f"Pooled over the cluster {clus} ({len(c.accounts)} accounts): corrected p = {c.p_corrected:.3g}."
            )
    else:
        lines.append(
            f"No evidence at alpha {alpha:g} that the suspect was trained on our outputs (p = "
            f"{att.p_value:.3g}, {tokens_scored} distinct tuples). This is not proof that it was not: "
            "a weakly trained student or too few tuples may not show the mark."
        )
    if not controls_ok:
        lines.append("WARNING: a control came out significant; this scan is not reliable evidence.")
    return " ".join(lines), acct, clus


def _controls_ok(controls: Sequence[ControlResult], alpha: float) -> bool:
    keyed = [c for c in controls if c.model is None]
    models = [c for c in controls if c.model is not None]
    # controls must not be significant: the keyed ones corrected for their number (they are many tests)
    if keyed and min(c.p_value for c in keyed) * len(keyed) <= alpha:
        return False
    return all(c.p_value > alpha for c in models)


def build_report(
    mode: str,
    suspect: str,
    config: WatermarkConfig,
    contexts: np.ndarray,
    tokens: np.ndarray,
    keys: ScanKeys,
    *,
    alpha: float,
    parameters: dict[str, Any],
    texts: int,
    tokens_seen: int,
    skipped: Mapping[str, int],
    controls: int | Sequence[WatermarkKey] = DEFAULT_CONTROL_KEYS,
    control_seed: int = 0,
    model_controls: Sequence[ControlResult] = (),
    vocab_size: int | None = None,
    started: float | None = None,
    groups: Sequence[tuple[WatermarkConfig, np.ndarray, np.ndarray]] | None = None,
) -> ScanReport:
    """Run the statistics on the scored tuples and write the report (shared by both modes).

    ``groups``: for a mixed deployment, ``(config, contexts, tokens)`` per configuration, each scored with its
    own scheme and combined by :func:`~antidistill.forensics.attribution.combine_groups` (``config``,
    ``contexts`` and ``tokens`` are then not used). The report shows the most significant group, its p-values
    corrected for the groups, and lists every group under ``parameters["watermark_groups"]``.
    """
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    ctl = control_keys(controls, control_seed) if isinstance(controls, int) else list(controls)
    group_list = list(groups) if groups else [(config, contexts, tokens)]
    atts = [
        attribute_tuples(c, ctx, tok, keys.provider, keys.accounts, keys.clusters, ctl, vocab_size)
        for c, ctx, tok in group_list
    ]
    best, att = combine_groups(atts)
    config = group_list[best][0]
    total = sum(a.tuples for a in atts)
    all_controls = att.controls + list(model_controls)
    ok = _controls_ok(all_controls, alpha)
    verdict, acct, clus = _verdict(att, alpha, ok, total)
    group_params: dict[str, Any] = {}
    if len(group_list) > 1:
        group_params["watermark_groups"] = [
            {"watermark": c.to_dict(), "tuples": a.tuples, "p_value": a.p_value, "families": a.families}
            for (c, _, _), a in zip(group_list, atts, strict=True)
        ]
    params = {
        "watermark": config.to_dict(),
        "alpha": alpha,
        "provider_keys": [k.key_id for k in keys.provider],
        "account_keys": sum(len(v) for v in keys.accounts.values()),
        "accounts": len(keys.accounts),
        "account_keys_tested": att.account_keys_tested,
        "clusters": {c: list(m) for c, m in keys.clusters.items()},
        "control_keys": len(ctl),
        "control_seed": control_seed,
        "gamma": att.gamma,
        "overall_families": att.families,
        **group_params,
        **parameters,
    }
    return ScanReport(
        mode=mode,
        suspect=suspect,
        parameters=params,
        texts=texts,
        tokens_seen=tokens_seen,
        tokens_scored=total,
        skipped=dict(skipped),
        provider=att.provider,
        accounts=att.accounts,
        best_account=att.best_account,
        clusters=att.clusters,
        curve=att.curve,
        controls=all_controls,
        p_value=att.p_value,
        alpha=alpha,
        significant=att.p_value <= alpha,
        attributed_account=acct,
        attributed_cluster=clus,
        controls_ok=ok,
        verdict=verdict,
        seconds=round(time.perf_counter() - started, 3) if started is not None else 0.0,
    )


# ---- tuple selection (pure) ------------------------------------------------------------------------------
@dataclass
class Tuples:
    """Scored tuples in scoring order, with what was looked at and why the rest was skipped."""

    contexts: np.ndarray
    tokens: np.ndarray
    seen: int
    skipped: dict[str, int]

    def __len__(self) -> int:
        return len(self.tokens)


def _grams(ids: Sequence[int], h: int) -> set[tuple[int, ...]]:
    return {tuple(ids[j - h : j + 1]) for j in range(h, len(ids))}


def reading_tuples(
    sequences: Sequence[Sequence[int]],
    prompt_lens: Sequence[int],
    predictions: Sequence[Sequence[int]],
    context_width: int,
    exclude: str = "prefix-pairs",
    score: Sequence[bool] | None = None,
) -> Tuples:
    """The tuples an open (reading-mode) scan scores.

    Args:
        sequences: the fed token ids (prompt then answer), in feeding order.
        prompt_lens: the prompt's length in each sequence.
        predictions: ``predictions[i][t]`` is the suspect's top-1 prediction of ``sequences[i][t]`` from
            ``sequences[i][:t]`` (entry 0 unused).
        context_width: h.
        exclude: ``"prefix-pairs"`` (valid evidence, see the module docstring) or ``"prompt"`` (measurement only).
        score: optional, one flag per sequence: only flagged sequences are scored (one configuration group of a
            mixed deployment); the others are still read, so their tuples are excluded as ``seen-in-prefix``.

    Answer positions ``t`` (from the prompt's length on) are looked at. Skipped:
    ``seen-in-prefix`` (the tuple occurs in the corpus read so far), ``in-prompt`` (policy ``prompt``: it occurs
    in this text's prompt), ``duplicate`` (already scored), ``window-in-prompt`` (the first h answer positions).

    Example (prompt ``[9]``; the prediction 2 after 1 at t = 4 copies the pair read at t = 2):
        >>> t = reading_tuples([[9, 1, 2, 1, 2, 3]], [1], [[0, 1, 2, 1, 2, 7]], 1)
        >>> t.tokens.tolist(), t.skipped
        ([2, 1, 7], {'window-in-prompt': 1, 'seen-in-prefix': 1})
    """
    if exclude not in EXCLUSION_POLICIES:
        raise InputError(f"exclude must be one of {', '.join(EXCLUSION_POLICIES)}, got {exclude!r}")
    if not len(sequences) == len(prompt_lens) == len(predictions):
        raise InputError("sequences, prompt_lens and predictions must have the same length")
    if score is not None and len(score) != len(sequences):
        raise InputError(f"{len(score)} score flags for {len(sequences)} sequences")
    h = context_width
    corpus_seen: set[tuple[int, ...]] = set()
    scored: set[tuple[int, ...]] = set()
    ctx_out: list[tuple[int, ...]] = []
    tok_out: list[int] = []
    skipped: Counter[str] = Counter()
    looked = 0
    for i, (ids, plen, pred) in enumerate(zip(sequences, prompt_lens, predictions, strict=True)):
        ids = [int(x) for x in ids]
        pred = [int(x) for x in pred]
        if len(pred) < len(ids):
            raise InputError(f"{len(pred)} predictions for a sequence of {len(ids)} tokens")
        plen = max(0, min(int(plen), len(ids)))
        prompt_grams = _grams(ids[:plen], h) if exclude == "prompt" else set()
        scoring = score is None or bool(score[i])
        for t in range(1, len(ids)):
            if t - 1 >= h:
                corpus_seen.add(tuple(ids[t - 1 - h : t]))  # the actual tuple ending at t-1 is now read
            if t < plen or not scoring:
                continue  # predicting the prompt (not an answer position), or a text of another group
            looked += 1
            if t - h < plen or t < h:
                skipped["window-in-prompt"] += 1
                continue
            tup = (*ids[t - h : t], pred[t])
            if exclude == "prefix-pairs" and tup in corpus_seen:
                skipped["seen-in-prefix"] += 1
            elif exclude == "prompt" and tup in prompt_grams:
                skipped["in-prompt"] += 1
            elif tup in scored:
                skipped["duplicate"] += 1
            else:
                scored.add(tup)
                ctx_out.append(tup[:h])
                tok_out.append(tup[h])
        if len(ids) - 1 >= h:
            corpus_seen.add(tuple(ids[len(ids) - 1 - h :]))
    return Tuples(
        np.array(ctx_out, dtype=np.int64).reshape(-1, h), np.array(tok_out, dtype=np.int64), looked, dict(skipped)
    )


class TupleStream:
    """The closed scan's tuple selection, one completion at a time: every distinct (h+1)-gram of the completions not
    found in their prompt, in scoring order (the first occurrence of each; the selection does not use any key).

    Example:
        >>> s = TupleStream(1)
        >>> s.add([1, 2, 3, 1, 2], {(2, 3)})[1].tolist(), s.add([2, 1, 4], set())[1].tolist(), s.skipped
        ([2, 1], [1, 4], {'in-prompt': 1, 'duplicate': 1})
    """

    def __init__(self, context_width: int) -> None:
        self.h = context_width
        self.scored: set[tuple[int, ...]] = set()
        self.contexts: list[tuple[int, ...]] = []
        self.tokens: list[int] = []
        self.counts: Counter[str] = Counter()
        self.seen = 0

    @property
    def skipped(self) -> dict[str, int]:
        return dict(self.counts)

    def add(self, ids: Sequence[int], grams: set[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
        """Select the new tuples of one completion; returns their ``(contexts (k, h), tokens (k,))``."""
        h, start = self.h, len(self.tokens)
        ids = [int(x) for x in ids]
        for j in range(h, len(ids)):
            self.seen += 1
            tup = tuple(ids[j - h : j + 1])
            if tup in grams:
                self.counts["in-prompt"] += 1
            elif tup in self.scored:
                self.counts["duplicate"] += 1
            else:
                self.scored.add(tup)
                self.contexts.append(tup[:h])
                self.tokens.append(tup[h])
        return _arrays(self.contexts[start:], self.tokens[start:], h)

    def tuples(self) -> Tuples:
        return Tuples(*_arrays(self.contexts, self.tokens, self.h), self.seen, self.skipped)


def _arrays(contexts: list[tuple[int, ...]], tokens: list[int], h: int) -> tuple[np.ndarray, np.ndarray]:
    return np.array(contexts, dtype=np.int64).reshape(-1, h), np.array(tokens, dtype=np.int64)


def completion_tuples(
    completions: Sequence[Sequence[int]], prompt_grams: Sequence[set[tuple[int, ...]]], context_width: int
) -> Tuples:
    """The tuples a closed scan scores: every distinct (h+1)-gram of the completions not found in their prompt.

    Example:
        >>> t = completion_tuples([[1, 2, 3, 1, 2]], [{(2, 3)}], 1)
        >>> t.tokens.tolist(), t.skipped
        ([2, 1], {'in-prompt': 1, 'duplicate': 1})
    """
    stream = TupleStream(context_width)
    for ids, grams in zip(completions, prompt_grams, strict=True):
        stream.add(ids, grams)
    return stream.tuples()


# ---- tokenization ----------------------------------------------------------------------------------------
def encode_prompt(tokenizer: Any, prompt: str | Messages | None, chat: bool = True) -> list[int]:
    """Prompt ids as the gateway's model saw them: chat messages through the chat template (with the generation
    prompt), a raw prompt as text."""
    if prompt is None or (isinstance(prompt, (str, list)) and len(prompt) == 0):
        return []
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return [int(x) for x in out]
    if not isinstance(prompt, str):
        prompt = "\n".join(str(m.get("content", "")) for m in prompt)
    return [int(x) for x in tokenizer(prompt, add_special_tokens=True)["input_ids"]]


def encode_text(tokenizer: Any, text: str) -> list[int]:
    return [int(x) for x in tokenizer(text, add_special_tokens=False)["input_ids"]]


def _prompt_texts(prompt: str | Messages | None) -> list[str]:
    if prompt is None:
        return []
    if isinstance(prompt, str):
        return [prompt]
    out = []
    for m in prompt:
        c = m.get("content")
        if isinstance(c, list):
            c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
        if c:
            out.append(str(c))
    return out


def prompt_grams(tokenizer: Any, prompt: str | Messages | None, chat: bool, h: int) -> set[tuple[int, ...]]:
    """(h+1)-grams of a prompt, as templated and as each message's text alone (tokenization depends on context,
    so both; skipping more is conservative)."""
    grams = _grams(encode_prompt(tokenizer, prompt, chat), h)
    for text in _prompt_texts(prompt):
        grams |= _grams(encode_text(tokenizer, text), h)
    return grams


# ---- open mode -------------------------------------------------------------------------------------------
def predict_top1(
    model: Any, sequences: Sequence[Sequence[int]], pad_id: int = 0, batch_tokens: int = DEFAULT_BATCH_TOKENS
) -> list[np.ndarray]:
    """The model's top-1 prediction at every position: ``out[i][t]`` predicts ``sequences[i][t]`` (``out[i][0]``
    is -1). Sequences are sorted by length and batched (right padding, attention mask) to about ``batch_tokens``
    padded tokens per forward pass; logits are reduced to argmax batch by batch."""
    import torch  # torch: only open-weights scans need it (closed scans run without the model extra)

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: list[np.ndarray | None] = [None] * len(sequences)
    i = 0
    with torch.inference_mode():
        while i < len(order):
            j = i + 1
            while j < len(order) and len(sequences[order[j]]) * (j - i + 1) <= batch_tokens:
                j += 1
            batch = [list(sequences[k]) for k in order[i:j]]
            width = max(max(len(s) for s in batch), 1)
            ids = torch.full((len(batch), width), int(pad_id), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, s in enumerate(batch):
                ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[r, : len(s)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits
            top = logits.argmax(dim=-1).cpu().numpy()
            for r, k in enumerate(order[i:j]):
                n = len(batch[r])
                pred = np.full(n, -1, dtype=np.int64)
                pred[1:] = top[r, : n - 1]
                out[k] = pred
            i = j
    return out  # type: ignore[return-value]


def load_suspect(path: str | None = None, cache_dir: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a suspect on the CPU: a transformers directory (a student saved with
    ``save_pretrained``), a GGUF file, or ``None`` / ``"teacher"`` for the embedded model. The tokenizer is the
    suspect's own; :func:`check_same_tokenizer` tells whether open mode can read it."""

    if cache_dir is None:
        cache_dir = get_settings().cache_dir
    source = resolve_model(None if path in (None, "", "teacher") else path)
    model, _ = load_causal_lm(source, cache_dir)
    return model, load_tokenizer(source, cache_dir)


def _as_causal_lm(model: Any) -> Any:
    """A :class:`~antidistill.models.local.LocalModel` is scanned through its transformers model."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(model, "generate") and hasattr(model, "watermark") else model


def _encode_fed(tokenizer: Any, texts: Sequence[FedText], max_seq_tokens: int) -> tuple[list[list[int]], list[int]]:
    seqs, plens = [], []
    for t in texts:
        p = encode_prompt(tokenizer, t.prompt, t.chat)
        r = encode_text(tokenizer, t.response)
        seq = (p + r)[:max_seq_tokens]
        seqs.append(seq)
        plens.append(min(len(p), len(seq)))
    return seqs, plens


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad or 0)


def check_same_tokenizer(teacher: Any, suspect: Any) -> None:
    """Open mode reads the watermark on the teacher's token ids: the suspect must share the vocabulary."""
    probe = "The quick brown fox jumps over 13 lazy dogs; naïve café, 東京."
    if len(teacher) != len(suspect) or encode_text(teacher, probe) != encode_text(suspect, probe):
        raise InputError(
            "the suspect's tokenizer differs from the watermarked model's: open mode needs the same "
            "vocabulary (use closed mode, --suspect-url, for other models)"
        )


def scan_open(
    model: Any,
    tokenizer: Any,
    texts: Sequence[FedText | tuple | Mapping[str, Any]],
    keys: ScanKeys,
    config: WatermarkConfig | None = None,
    *,
    exclude: str = "prefix-pairs",
    alpha: float = DEFAULT_ALPHA,
    controls: int | Sequence[WatermarkKey] = DEFAULT_CONTROL_KEYS,
    control_seed: int = 0,
    control_models: Mapping[str, Any] | None = None,
    suspect: str = "model",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_texts: int | None = None,
    max_seq_tokens: int = DEFAULT_MAX_SEQ_TOKENS,
    vocab_size: int | None = None,
) -> ScanReport:
    """Open-weights radioactivity scan in reading mode (see the module docstring).

    Args:
        model: the suspect, a causal LM called as ``model(input_ids=, attention_mask=)`` returning ``.logits``
            (or a :class:`~antidistill.models.local.LocalModel`); see :func:`load_suspect`.
        tokenizer: the watermarked model's tokenizer (the suspect must share its vocabulary).
        texts: the watermarked exchanges to feed: :class:`FedText`, ``(prompt, response)`` pairs or dicts.
        keys: the keys to test.
        config: the watermark parameters the texts were marked with (default: the defaults).
        exclude: the exclusion policy: ``"prefix-pairs"`` (evidence) or ``"prompt"`` (measurement only).
        alpha: significance level of the verdict.
        controls: number of never-issued control keys (or the keys themselves); ``control_seed`` replays them.
        control_models: name -> a model known not to be distilled (e.g. the teacher), scanned the same way
            (reported among the controls with its overall p-value).
        suspect: a name for the report.
        batch_tokens: padded tokens per forward pass.
        max_texts: feed at most this many texts (the first ones).
        max_seq_tokens: truncate each fed sequence to this many tokens.
        vocab_size: for the ``hf-lefthash`` scheme.

    Example:
        >>> report = scan_open(student, tok, [("Hi", "Hello there!")], keys)   # doctest: +SKIP
        >>> report.p_value, report.attributed_account                           # doctest: +SKIP
    """
    started = time.perf_counter()
    config = config or WatermarkConfig()
    if exclude not in EXCLUSION_POLICIES:
        raise InputError(f"exclude must be one of {', '.join(EXCLUSION_POLICIES)}, got {exclude!r}")
    fed = [FedText.coerce(t) for t in texts]
    if max_texts is not None:
        fed = fed[:max_texts]
    seqs, plens = _encode_fed(tokenizer, fed, max_seq_tokens)
    pad = _pad_id(tokenizer)
    configs = list(dict.fromkeys(t.config or config for t in fed)) or [config]

    def tuples_of(m: Any) -> list[tuple[WatermarkConfig, Tuples]]:
        preds = predict_top1(_as_causal_lm(m), seqs, pad, batch_tokens)
        if len(configs) == 1:
            return [(configs[0], reading_tuples(seqs, plens, preds, configs[0].context_width, exclude))]
        return [
            (c, reading_tuples(seqs, plens, preds, c.context_width, exclude, [(t.config or config) == c for t in fed]))
            for c in configs
        ]

    groups = tuples_of(model)
    model_controls = [
        _model_control(name, tuples_of(cm), keys, vocab_size) for name, cm in (control_models or {}).items()
    ]
    params = {
        "exclude": exclude,
        "batch_tokens": batch_tokens,
        "max_seq_tokens": max_seq_tokens,
        "budget": {"max_texts": max_texts, "texts_fed": len(fed), "tokens_fed": int(sum(len(s) for s in seqs))},
    }
    skipped: Counter[str] = Counter()
    for _, t in groups:
        skipped.update(t.skipped)
    return build_report(
        "open",
        suspect,
        groups[0][0],
        groups[0][1].contexts,
        groups[0][1].tokens,
        keys,
        alpha=alpha,
        parameters=params,
        texts=len(fed),
        tokens_seen=sum(t.seen for _, t in groups),
        skipped=dict(skipped),
        controls=controls,
        control_seed=control_seed,
        model_controls=model_controls,
        vocab_size=vocab_size,
        started=started,
        groups=[(c, t.contexts, t.tokens) for c, t in groups] if len(groups) > 1 else None,
    )


def _model_control(
    name: str, groups: Sequence[tuple[WatermarkConfig, Tuples]], keys: ScanKeys, vocab_size: int | None
) -> ControlResult:
    """A control model's scan, one attribution per configuration group, combined as the suspect's are."""
    atts = [
        attribute_tuples(
            c, t.contexts, t.tokens, keys.provider, keys.accounts, keys.clusters, (), vocab_size, curve_points=0
        )
        for c, t in groups
    ]
    _, catt = combine_groups(atts)
    return ControlResult(
        f"model:{name}",
        None,
        name,
        catt.provider.green if catt.provider else 0,  # type: ignore[arg-type]
        sum(a.tuples for a in atts),
        catt.p_value,
    )


# ---- closed mode -----------------------------------------------------------------------------------------
@dataclass
class Sampled:
    """Completions drawn from an endpoint, with what they cost."""

    prompts: list[str | Messages]
    completions: list[list[str]]  # per prompt, one text per sample
    requests: int
    completion_tokens: int


def sample_endpoint(
    client: Any,
    prompts: Sequence[str | Messages],
    model_name: str,
    *,
    samples: int = 1,
    temperature: float = 0.7,
    max_tokens: int = 128,
    seed: int = 0,
    concurrency: int = 8,
    cache_dir: Path | None = None,
) -> Sampled:
    """Query an OpenAI-compatible endpoint (an ``openai.OpenAI`` client): ``samples`` chat completions per prompt,
    sample ``j`` with seed ``seed + j``, ``concurrency`` requests in flight, HTTP 429 retried after its Retry-After,
    answers cached in ``cache_dir`` (see :mod:`antidistill.forensics.endpoint`). Other errors become
    :class:`InputError` (one line for the CLI)."""
    params = Params(public_url(str(client.base_url)), model_name, temperature, max_tokens)
    asks = plan_asks(prompts, samples, seed)
    got = dict(answers(asks, AnswerCache(cache_dir), params, Querier(client, params), concurrency))
    completions: list[list[str]] = [[] for _ in prompts]
    for i, a in enumerate(asks):
        completions[a.prompt_index].extend(got[i].texts)
    return Sampled(list(prompts), completions, len(asks), sum(g.completion_tokens for g in got.values()))


def make_client(url: str, api_key: str | None = None, timeout: float = 60.0) -> Any:
    """An ``openai.OpenAI`` client for ``url`` (``…/v1``), no retries (a scan records every request it makes)."""

    return openai.OpenAI(base_url=url, api_key=api_key or "none", max_retries=0, timeout=timeout)


def scan_completions(
    sampled: Sampled,
    tokenizer: Any,
    keys: ScanKeys,
    config: WatermarkConfig,
    *,
    alpha: float,
    suspect: str,
    parameters: dict[str, Any],
    controls: int | Sequence[WatermarkKey] = DEFAULT_CONTROL_KEYS,
    control_seed: int = 0,
    model_controls: Sequence[ControlResult] = (),
    vocab_size: int | None = None,
    started: float | None = None,
    configs: Sequence[WatermarkConfig] = (),
) -> ScanReport:
    """Score sampled completions (closed mode) and write the report. ``configs``: in a mixed deployment, every
    configuration our outputs were marked with; the completions are scored under each (see the module docstring)."""
    cfgs = list(dict.fromkeys([config, *configs]))
    tups = [(c, _closed_tuples(sampled, tokenizer, c.context_width)) for c in cfgs]
    tup = tups[0][1]
    n_completions = sum(len(c) for c in sampled.completions)
    return build_report(
        "closed",
        suspect,
        config,
        tup.contexts,
        tup.tokens,
        keys,
        alpha=alpha,
        parameters=parameters,
        texts=n_completions,
        tokens_seen=tup.seen,
        skipped=tup.skipped,
        controls=controls,
        control_seed=control_seed,
        model_controls=model_controls,
        vocab_size=vocab_size,
        started=started,
        groups=[(c, t.contexts, t.tokens) for c, t in tups] if len(tups) > 1 else None,
    )


def _closed_tuples(sampled: Sampled, tokenizer: Any, h: int) -> Tuples:
    comps, grams = [], []
    for p, texts in zip(sampled.prompts, sampled.completions, strict=True):
        g = prompt_grams(tokenizer, p, True, h)
        for t in texts:
            comps.append(encode_text(tokenizer, t))
            grams.append(g)
    return completion_tuples(comps, grams, h)


def scan_closed(
    client: Any,
    prompts: Sequence[str | Messages],
    tokenizer: Any,
    keys: ScanKeys,
    config: WatermarkConfig | None = None,
    *,
    model_name: str = "default",
    api_key: str | None = None,
    samples: int = 1,
    temperature: float = 0.7,
    max_tokens: int = 128,
    max_prompts: int | None = None,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    controls: int | Sequence[WatermarkKey] = DEFAULT_CONTROL_KEYS,
    control_seed: int = 0,
    control_models: Mapping[str, Any] | None = None,
    vocab_size: int | None = None,
    progress: Callable[[ScanProgress], None] | None = None,
    configs: Sequence[WatermarkConfig] = (),
    run: RunOptions | None = None,
    top_logprobs: int = 0,
) -> ScanReport:
    """Closed-model radioactivity scan: query the suspect's endpoint, score its completions.

    Args:
        client: an ``openai.OpenAI`` client, or the endpoint's base URL (``http://host/v1``; ``api_key`` used).
        prompts: the prompts to send (strings or chat messages), e.g. the harvested prompts of the audit log.
        tokenizer: the watermarked model's tokenizer (the watermark lives on its token ids).
        keys: the keys to test.
        config: the watermark parameters.
        configs: in a mixed deployment, the other configurations our outputs were marked with: the completions
            are scored under each, and the groups combined (see the module docstring).
        model_name: the ``model`` field of the requests.
        samples, temperature, max_tokens, seed: sampling (sample ``j`` of a prompt uses ``seed + j``).
        max_prompts: the sampling budget in prompts (at most ``max_prompts x samples x max_tokens`` tokens).
        alpha, controls, control_seed, vocab_size: as in :func:`scan_open`.
        control_models: name -> a :class:`~antidistill.models.local.LocalModel` known not to be distilled, sampled
            locally on the same prompts, unmarked, and scored the same way.
        progress: called with a :class:`~antidistill.forensics.closed.ScanProgress` after every answer scored.
        run: concurrency, answer cache, early stopping, pilot and plan
            (:class:`~antidistill.forensics.closed.RunOptions`).
        top_logprobs: ask for this many candidates per position (1-20; 0: none) and add the top-logprob mass
            statistic (:mod:`antidistill.forensics.logprobs`) to the report (``logprob``), beside the sampled-token
            one, which still decides the verdict.

    Example:
        >>> report = scan_closed("http://127.0.0.1:8000/v1", ["Tell me a story."], tok, keys)   # doctest: +SKIP
    """
    started = time.perf_counter()
    config = config or WatermarkConfig()
    opts = run or RunOptions()
    if progress is not None:
        opts = replace(opts, progress=progress)
    opts.check()
    if samples < 1 or max_tokens < 1:
        raise InputError("samples and max_tokens must be >= 1")
    if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise InputError(f"top_logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {top_logprobs}")
    if top_logprobs and config.scheme in PARTIAL_SEED_SCHEMES and config.context_width > 1:
        raise InputError(
            f"the top-logprob statistic needs a member seeded by the whole context; {config.scheme} with h > 1 is not"
        )
    prompts = list(prompts)[:max_prompts] if max_prompts is not None else list(prompts)
    if not prompts:
        raise InputError("no prompts to send to the suspect")
    url = client if isinstance(client, str) else str(client.base_url)
    params = Params(public_url(url), model_name, temperature, max_tokens, top_logprobs)
    querier = None
    if not opts.from_cache:
        querier = Querier(make_client(client, api_key) if isinstance(client, str) else client, params)
    cfgs = list(dict.fromkeys([config, *configs]))
    scorer = StreamScorer(_selector(tokenizer, prompts), cfgs, keys.provider, keys.accounts, keys.clusters, vocab_size)
    asks = plan_asks(prompts, samples, seed)
    got = ClosedRun(asks, AnswerCache(opts.cache_dir), params, querier, scorer, opts).run(samples)
    used, texts = got.by_prompt(prompts)
    sampled = Sampled(used, texts, len(got.answers), got.tokens)
    model_controls = [
        _control_sample(name, lm, used, tokenizer, keys, cfgs, vocab_size, samples, max_tokens, temperature, seed)
        for name, lm in (control_models or {}).items()
    ]
    report = scan_completions(
        sampled,
        tokenizer,
        keys,
        config,
        alpha=alpha,
        suspect=f"{params.endpoint} ({model_name})",
        parameters=_closed_parameters(
            got, len(asks), prompts, max_prompts, samples, max_tokens, temperature, seed, model_name, opts
        ),
        controls=controls,
        control_seed=control_seed,
        model_controls=model_controls,
        vocab_size=vocab_size,
        started=started,
        configs=configs,
    )
    report = with_sequential(report, scorer.result(), got, opts)
    if top_logprobs:
        report.logprob = _mass_report(got, prompts, tokenizer, keys, config, controls, control_seed, vocab_size, alpha)
        report.verdict += " " + _mass_sentence(report.logprob)
    return report


def _mass_report(
    got: Collected,
    prompts: Sequence[str | Messages],
    tokenizer: Any,
    keys: ScanKeys,
    config: WatermarkConfig,
    controls: int | Sequence[WatermarkKey],
    control_seed: int,
    vocab_size: int | None,
    alpha: float,
) -> dict[str, Any]:
    """The top-logprob mass statistic over the answers that carried logprobs (every key, the control keys)."""
    h = config.context_width
    contexts: dict[int, set[tuple[int, ...]]] = {}

    def prompt_contexts(i: int) -> set[tuple[int, ...]]:
        if i not in contexts:
            contexts[i] = {g[:h] for g in prompt_grams(tokenizer, prompts[i], True, h)}
        return contexts[i]

    tuples = MassTuples(h)
    reader = TokenReader(tokenizer, vocab_size)
    texts = sum(len(a.texts) for a in got.answers)
    with_lp = gather(
        reader,
        tuples,
        (
            (prompt_contexts(ask.prompt_index), raw)
            for ask, a in zip(got.asks, got.answers, strict=True)
            for raw in (a.logprobs or [None] * len(a.texts))
        ),
    )
    ctl = control_keys(controls, control_seed) if isinstance(controls, int) else list(controls)
    out = mass_report(Watermark(config).scheme, tuples, keys.provider, keys.accounts, ctl, vocab_size, alpha)
    # the run stopped when the sampled tokens' sequential p under our keys crossed a threshold: a key-dependent
    # stopping time, and those tokens weigh in the mass statistic too, so its fixed-n p-values are not valid then
    out.update(texts=texts, texts_with_logprobs=with_lp, valid=not got.stopped_early)
    if got.stopped_early:
        out["attributed_account"] = None
    return out


def _mass_sentence(r: dict[str, Any]) -> str:
    if not r["texts_with_logprobs"]:
        return "The suspect sent no logprobs, so the top-logprob statistic was not computed."
    prov = r["provider"]
    head = f"Top-logprob mass statistic over {r['positions']} positions: " + (
        f"provider p = {prov['p_value']:.3g}" if prov else "no provider key"
    )
    if not r["valid"]:
        return head + " (NOT valid: the scan stopped early on the sampled tokens' evidence; not evidence)."
    who = f"; attributed to {r['attributed_account']}" if r["attributed_account"] else "; not attributed"
    return head + who + " (reported beside the sampled-token verdict)."


def _selector(tokenizer: Any, prompts: Sequence[str | Messages]) -> Callable[[Ask, str, WatermarkConfig], Any]:
    """The closed scan's tuple selection for the stream scorer: one :class:`TupleStream` per context width (the
    same selection :func:`_closed_tuples` makes at the end), prompt n-grams computed once per prompt."""
    streams: dict[int, TupleStream] = {}
    grams: dict[tuple[int, int], set[tuple[int, ...]]] = {}

    def select(ask: Ask, text: str, cfg: WatermarkConfig) -> tuple[np.ndarray, np.ndarray]:
        h = cfg.context_width
        key = (ask.prompt_index, h)
        if key not in grams:
            grams[key] = prompt_grams(tokenizer, prompts[ask.prompt_index], True, h)
        return streams.setdefault(h, TupleStream(h)).add(encode_text(tokenizer, text), grams[key])

    return select


def _control_sample(
    name: str,
    lm: Any,
    prompts: list[str | Messages],
    tokenizer: Any,
    keys: ScanKeys,
    cfgs: Sequence[WatermarkConfig],
    vocab_size: int | None,
    samples: int,
    max_tokens: int,
    temperature: float,
    seed: int,
) -> ControlResult:
    """A local control model answers the same prompts, unmarked, and is scored the same way."""
    texts = [
        [
            o.text
            for o in lm.generate(
                prompts, [None] * len(prompts), max_new_tokens=max_tokens, temperature=temperature, seed=seed + j
            )
        ]
        for j in range(samples)
    ]
    cs = Sampled(prompts, [[texts[j][i] for j in range(samples)] for i in range(len(prompts))], 0, 0)
    return _model_control(name, [(c, _closed_tuples(cs, tokenizer, c.context_width)) for c in cfgs], keys, vocab_size)


def _closed_parameters(
    got: Collected,
    planned: int,
    prompts: Sequence[Any],
    max_prompts: int | None,
    samples: int,
    max_tokens: int,
    temperature: float,
    seed: int,
    model_name: str,
    opts: RunOptions,
) -> dict[str, Any]:
    return {
        "exclude": "prompt",
        "model_name": model_name,
        "temperature": temperature,
        "seed": seed,
        "budget": {
            "max_prompts": max_prompts,
            "samples": samples,
            "max_tokens": max_tokens,
            "prompts_sent": len({a.prompt_index for a in got.asks}),
            "requests": len(got.answers),
            "requests_planned": planned,
            "answers_from_cache": got.cached,
            "retries_after_429": got.retries,
            "concurrency": opts.concurrency,
            "max_completion_tokens": len(prompts) * samples * max_tokens,
            "completion_tokens_used": got.tokens,
        },
    }


def with_sequential(report: ScanReport, seq: SequentialResult, got: Collected, opts: RunOptions) -> ScanReport:
    """Add the sequential test to a closed scan's report and state the stopping rule. When the scan stopped early,
    the verdict rests on the sequential p-value (the fixed-n one is kept, marked as not valid)."""
    report.sequential = {**seq.to_dict(), "fixed_n_p_value": report.p_value, "fixed_n_valid": not got.stopped_early}
    report.plan = got.plan.to_dict() if got.plan is not None else None
    if opts.stop_at is None:
        report.stopping_rule = "fixed budget (no early stopping): the fixed-n exact p-value is valid"
        report.verdict += f" Sequential (anytime-valid) p = {seq.p_value:.3g}."
        return report
    when = "it stopped early" if got.stopped_early else "the threshold was not reached, every request was made"
    report.stopping_rule = (
        f"early stopping once the sequential (e-process) p-value <= {opts.stop_at:g} ({when}, after "
        f"{len(got.answers)} answers)"
    )
    if not got.stopped_early:
        report.verdict += (
            f" Sequential (anytime-valid) p = {seq.p_value:.3g}; no early stop, so the fixed-n p is valid too."
        )
        return report
    return _decide_sequential(report, seq)


def _decide_sequential(report: ScanReport, seq: SequentialResult) -> ScanReport:
    alpha, fixed_p = report.alpha, report.p_value
    report.p_value = seq.p_value
    report.significant = seq.p_value <= alpha
    report.attributed_account = seq.best_account if seq.account_p is not None and seq.account_p <= alpha else None
    report.attributed_cluster = seq.best_cluster if seq.cluster_p is not None and seq.cluster_p <= alpha else None
    head = (
        f"The suspect carries our watermark (sequential p = {seq.p_value:.3g} <= alpha {alpha:g})."
        if report.significant
        else f"No evidence at alpha {alpha:g} (sequential p = {seq.p_value:.3g})."
    )
    who = (
        f" Attributed to account {report.attributed_account} (sequential corrected p = {seq.account_p:.3g})."
        if report.attributed_account
        else ""
    )
    report.verdict = (
        f"{head}{who} The scan stopped early on the anytime-valid (e-process) p-value, which stays valid under "
        f"stopping; the fixed-n exact p-values in this report (overall {fixed_p:.3g}, "
        "per account, per cluster) assume a fixed budget and are NOT valid evidence here."
    )
    if not report.controls_ok:
        report.verdict += " WARNING: a control came out significant; this scan is not reliable evidence."
    return report
