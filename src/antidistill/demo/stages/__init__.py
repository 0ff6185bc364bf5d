"""The demo's stages, one module each, in the order they run.

Each stage is a function: a :class:`~antidistill.demo.context.DemoContext` (and the model, keys or earlier results
it needs) in, a frozen dataclass out with the stage's numbers and its ``checks``. A stage shows each result on the
context's screen as soon as it is known, so long stages (7 and 8) show their steps as they finish.

1. :mod:`.model` (Model)  2. :mod:`.serve` (Serve)  3. :mod:`.detection` (Detect and attribute)
4. :mod:`.controls` (Controls: human text)  5. :mod:`.mixed` (Mixed text)  6. :mod:`.gateway` (Gateway, its audit
log)  7. :mod:`.watch` (Watch: the monitor and the policy, live)  8. :mod:`.prove` (Prove: the attack, the
student, the forensic scan, the evidence)
"""
