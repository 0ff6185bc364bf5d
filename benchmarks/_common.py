"""Helpers shared by the benchmark programs: machine description, token corpus, medians, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

# As the CLI does: OpenMP threads that spin while waiting make every step several times slower whenever another
# process wants a core (set before torch is imported, which the benchmark programs do after importing this).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TEXT_DIRS = (Path("/usr/share/common-licenses"),)


def machine() -> dict[str, Any]:
    """What the numbers were measured on (timings are only comparable on the same machine)."""
    import torch

    try:  # some benchmarks run where only torch and numpy are installed (marking_device.py on a GPU host)
        import transformers

        transformers_version: str | None = transformers.__version__
    except ImportError:
        transformers_version = None
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers_version,
        "numpy": np.__version__,
        "loadavg_at_start": load,
    }


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def corpus_text(max_chars: int = 2_000_000) -> str:
    """Plain English text found on the machine (licence texts), for realistic token statistics."""
    seen: set[Path] = set()
    parts: list[str] = []
    total = 0
    for d in TEXT_DIRS:
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            rp = p.resolve()
            if rp in seen or not rp.is_file() or rp.suffix in {".gz", ".html"}:
                continue
            seen.add(rp)
            try:
                t = rp.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            parts.append(t)
            total += len(t)
            if total >= max_chars:
                return "\n".join(parts)
    return "\n".join(parts)


def corpus_tokens(vocab_size: int, min_tokens: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Token ids of :func:`corpus_text` under the embedded model's tokenizer, or uniform random ids.

    Returns (ids, source description).
    """
    try:
        from antidistill.models.embedded import load_tokenizer, resolve_model
        from antidistill.settings import get_settings

        tok = load_tokenizer(resolve_model(), get_settings().cache_dir)
        text = corpus_text()
        ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        if len(ids) >= min_tokens:
            return ids, f"licence texts tokenized with the embedded tokenizer ({len(ids)} tokens)"
        reason = f"only {len(ids)} tokens of text"
    except Exception as exc:  # any failure: fall back, and say so in the results
        reason = f"tokenizer unavailable: {type(exc).__name__}: {exc}"
    rng = np.random.default_rng(seed)
    return rng.integers(2, vocab_size, size=max(min_tokens, 1), dtype=np.int64), f"random ids ({reason})"


def write_json(name: str, payload: dict[str, Any], out: str | None) -> Path:
    """Write results to ``out`` or ``benchmarks/results/<name>-<UTC timestamp>.json``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(out) if out else RESULTS_DIR / f"{name}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "utc": stamp, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=1, default=float) + "\n", encoding="utf-8")
    return path


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        if x != x:
            return "-"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.3g}"
    return "-" if x is None else str(x)


#: Varied chat prompts for generation benchmarks (the same list everywhere, so runs are comparable).
PROMPTS = [
    "Explain how a bicycle gear system works.",
    "Write a short poem about the sea at night.",
    "What are the main causes of inflation?",
    "Describe the water cycle for a ten-year-old.",
    "Give three tips for writing clear emails.",
    "Summarise the plot of a heist movie you invent.",
    "How does public-key cryptography work?",
    "List some good habits for learning a language.",
    "What is the difference between weather and climate?",
    "Write a recipe for a simple vegetable soup.",
    "Why is the sky blue?",
    "Describe a day in the life of a lighthouse keeper.",
    "What should I consider when adopting a dog?",
    "Explain recursion with an everyday example.",
    "Tell me about the history of the printing press.",
    "How do vaccines train the immune system?",
]
