"""The ``antidistill`` command line: the top layer, beside the demo (see docs/architecture.md).

:mod:`.commands` holds the typer app and the entry point; each sub-command group has its module (``serve``,
``store`` for accounts and audit, ``monitor``, ``simulate``, ``distill``, ``scan``).

Each command imports the parts it runs inside its body, and that is on purpose: ``antidistill --help`` (and a
command's ``--help``) must not pay for pydantic-settings (~0.3 s), SQLAlchemy (~0.5 s), FastAPI (~0.7 s), scipy,
transformers or torch (over a second each), measured with ``python -X importtime`` on the project's machines.
The layer contract (``.importlinter``) sees these imports like any other.
"""

from antidistill.cli.commands import app, main

__all__ = ["app", "main"]
