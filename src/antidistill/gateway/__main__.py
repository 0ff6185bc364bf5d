"""``python -m antidistill.gateway``: run the gateway (the ``antidistill serve`` command alone)."""

from antidistill.gateway.cli import main

if __name__ == "__main__":
    main()
