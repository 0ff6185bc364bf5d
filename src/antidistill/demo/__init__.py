"""``antidistill demo``: the main job end to end on the embedded model, in eight stages.

1. Model: load the model.  2. Serve: watermarked completions for two accounts in one batch (each row with its own
account key) and unmarked ones.  3. Detect and attribute every completion among the candidate accounts (decoys
included).  4. Controls: human-written text is not flagged.  5. Mixed text: a marked passage inside human text is
found.  6. Gateway: the HTTP gateway with the same model, concurrent ``openai`` SDK clients, attribution, the
audit chain.  7. Watch: the monitor and the policy live on held-out simulated traffic.  8. Prove: harvest through
the gateway, distil a student and a control student, scan both, write the evidence report.

:func:`antidistill.demo.run.run_demo` runs them (what the command calls); each stage is a module of
:mod:`antidistill.demo.stages`, a function from a :class:`~antidistill.demo.context.DemoContext` to a frozen result
with its numbers and :class:`~antidistill.demo.checks.Check` s; :mod:`antidistill.demo.render` writes every line
the user sees. ``quick`` shrinks every stage (:class:`~antidistill.demo.context.DemoSizes`).

The demo is the top layer with the CLI: it may import the workflows and anything below, nothing below imports it.
This ``__init__`` imports nothing, so ``antidistill.demo.checks`` and the other light modules load on their own.
"""
