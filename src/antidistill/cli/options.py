"""What the command modules share: the ``--json`` and ``--database-url`` options, the scheme family's help text and
the JSON printer."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Database URL (default: ANTIDISTILL_DATABASE_URL, else the SQLite file in the data directory).",
        show_default=False,
    ),
]

#: the scheme family's members, for --help (the registry itself loads numpy and scipy); tests keep it in step with
#: antidistill.watermark.schemes.scheme_names(), which validates the value
SCHEME_HELP = (
    "Watermark scheme: antidistill-v1 (default, KGW green lists), kgw-entropy (KGW at high-entropy steps only), "
    "gumbel (Gumbel-max sampling), gumbel-dual (dual-key Gumbel-max), tournament (SynthID-style tournament "
    "sampling), hf-lefthash (transformers' lists), "
    "markllm-exp (MarkLLM's EXP); read-only, to detect vLLM's native marks (its --watermark-config key is "
    "--hashing-key): vllm-gumbel (algorithm gumbel), vllm-dual-gumbel (dual_key_gumbel)."
)


def print_json(obj: Any) -> None:
    """One line of JSON on standard output (text as itself, anything else as ``str``)."""
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
