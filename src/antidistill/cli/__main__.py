"""``python -m antidistill.cli``: the command line (the same as ``antidistill`` and ``python -m antidistill``)."""

from antidistill.cli import main

main()
