"""The ``antidistill`` command line: the top layer, beside the demo (see docs/architecture.md).

:mod:`.commands` holds the typer app and the entry point; each sub-command group has its module (``serve``,
``store`` for accounts and audit, ``monitor``, ``simulate``, ``distill``, ``scan``).
"""

from antidistill.cli.commands import app, main

__all__ = ["app", "main"]
