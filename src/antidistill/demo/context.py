"""What every stage of the demo is given: how much work to do, the settings, a throwaway directory, and a screen
to say what it is doing and show what it found (:class:`~antidistill.demo.render.Renderer`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from antidistill.settings import Settings

#: tokens of each stage-2 completion: enough distinct pairs for the default mark (gumbel-dual, h = 3) to be detected
#: text by text. Attribution among the ten candidates is checked on each account's texts together: one text's
#: account half (~70 pairs) does not always single out its account (under 3 of 4 master keys a 256-token text was
#: not attributed on its own), the account's texts pooled do (docs/watermark-schemes.md).
SERVE_TOKENS = 160


@dataclass(frozen=True)
class DemoSizes:
    """How much work each stage does (``quick`` shrinks every stage to fit a few minutes on two cores).

    Args:
        serve_tokens: tokens of each stage-2 completion; gateway_tokens: of each stage-6 answer.
        harvest: prompts the attacker harvests for training; heldout: further harvested prompts kept out of
            training (loss before/after); harvest_tokens: ``max_tokens`` of each harvest request.
        epochs, lr, batch_size: the distillation recipe (LoRA on the last blocks, same for both students).
        customer_requests: requests each customer account sends in stage 8.
        closed_prompts: prompts of the closed-mode scan of the served student (0: no closed scan).
    """

    quick: bool
    serve_tokens: int
    gateway_tokens: int
    harvest: int
    heldout: int
    harvest_tokens: int
    epochs: float
    lr: float
    batch_size: int
    customer_requests: int
    closed_prompts: int

    @classmethod
    def for_mode(cls, quick: bool, max_tokens: int = SERVE_TOKENS) -> DemoSizes:
        """The sizes of a quick or a full run; ``max_tokens`` is the length of stage 2's completions."""
        if quick:
            # 160-token gateway answers: at 96 about one in eight had fewer distinct pairs than a test with power
            # needs (checks.DEMO_MIN_PAIRS) and was asked again; at 128 an account's two answers of the default
            # member (gumbel-dual) came to corrected p 3.6e-5 together in one run, close enough to alpha 1e-3 to
            # fail under some key; at 160 two answers together reached corrected p 1.5e-5 or less under 32 of 32
            # accounts (docs/watermark-schemes.md)
            return cls(
                True,
                max_tokens,
                160,
                harvest=12,
                heldout=2,
                harvest_tokens=80,
                epochs=5.0,
                lr=4e-3,
                batch_size=4,
                customer_requests=1,
                closed_prompts=0,
            )
        return cls(
            False,
            max_tokens,
            256,
            harvest=36,
            heldout=4,
            harvest_tokens=128,
            epochs=6.0,
            lr=4e-3,
            batch_size=8,
            customer_requests=2,
            closed_prompts=6,
        )


class Bar(Protocol):
    """Moves a progress bar: ``completed`` of ``total`` (``None``: unchanged), with a new description if given."""

    def __call__(self, completed: int, total: int | None = None, description: str | None = None) -> None: ...


class Screen(Protocol):
    """What a stage may do on the screen: say what it is busy with, move a progress bar, and show a result (a
    stage's or a step's frozen dataclass) as soon as it is known; how a result looks is the renderer's business."""

    def busy(self, text: str) -> AbstractContextManager[Any]: ...

    def bar(self, description: str, total: int | None = None) -> AbstractContextManager[Bar]: ...

    def show(self, result: object) -> None: ...


@dataclass(frozen=True)
class DemoContext:
    """What every stage is given (the model and keys the stages share are passed beside it).

    Args:
        settings: the installation's settings (its model, cache and master key); stages 6-8 run throwaway
            installations derived from them (:func:`throwaway_settings`).
        sizes: how much work each stage does (``sizes.quick``).
        seed: the seed of every sampled completion and of the distillation.
        work: a throwaway directory for the stages' own installations (databases, keys, students); deleted after
            the run.
        screen: where the stages say what they are doing and show what they found.
    """

    settings: Settings
    sizes: DemoSizes
    seed: int
    work: Path
    screen: Screen


def throwaway_settings(base: Settings, data_dir: Path, **update: Any) -> Settings:
    """Settings of a throwaway installation in ``data_dir`` (its own master key; never the user's): watermarking
    on, no monitor, no Redis, its own SQLite database, whatever the environment says for the real one."""
    values = base.model_dump()
    values.update(
        env="dev",
        data_dir=data_dir,
        master_key=None,
        admin_token=None,
        redis_url=None,
        database_url=f"sqlite:///{(data_dir / 'antidistill.db').resolve()}",
        policy_file=None,
        accept_client_clock=False,
        trust_forwarded_for=False,
        monitor=False,
        watermark=True,
    )
    values.update(update)
    return Settings(**{k: v for k, v in values.items() if k in Settings.model_fields})


@contextlib.contextmanager
def quiet_logs(level: int = logging.ERROR) -> Iterator[None]:
    """The library logs every policy action as a warning; the demo shows them itself, once, in its own words."""
    logger = logging.getLogger("antidistill")
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)
