"""``python -m antidistill``: the command line (``python -m antidistill serve …`` runs the gateway)."""

from antidistill.cli import main

main()
