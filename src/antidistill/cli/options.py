"""What the command modules share: the ``--json`` and ``--database-url`` options and the JSON printer."""

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


def print_json(obj: Any) -> None:
    """One line of JSON on standard output (text as itself, anything else as ``str``)."""
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
