"""Workflows: the jobs that put several parts of antidistill together (simulate traffic through an in-process
gateway, train and evaluate the monitor on it, scan a suspect model, the demo's stages).

The layer between the commands (``antidistill.cli``, ``antidistill.demo``) and the parts (gateway, forensics,
monitor, simulate, redteam): a workflow may import any part, no part imports a workflow (import-linter checks
this in ``make test``; see ``docs/architecture.md``).
"""
