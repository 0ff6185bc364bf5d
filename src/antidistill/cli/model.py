"""``antidistill model``: the model the product serves, in the forms other engines read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from antidistill.cli.options import JsonOpt, print_json

model_app = typer.Typer(help="The served model: export it for other engines.", no_args_is_help=True)
out = Console()


@model_app.command("export")
def export(
    target: Annotated[Path, typer.Argument(help="The directory to write (created; must be empty or absent).")],
    model: Annotated[
        str | None,
        typer.Option("--model", help="A local transformers model directory or GGUF file (default: embedded model)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty TARGET.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the model (default: the embedded SmolLM2-135M-Instruct) as a transformers directory (float32
    safetensors, tokenizer, chat template): what vLLM is started on (`--model TARGET`)."""
    # the parts load when the command runs, not for --help (see antidistill.cli)
    from antidistill.extras import require
    from antidistill.models.embedded import export_model, resolve_model
    from antidistill.settings import get_settings

    require("model", "exporting the model")
    source = resolve_model(model)
    path = export_model(target, source, get_settings().cache_dir, overwrite=force)
    if as_json:
        print_json({"model": source.name, "source": str(source.path), "path": str(path)})
    else:
        out.print(f"exported {source.name} to {path}", markup=False, highlight=False)
