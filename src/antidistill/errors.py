"""Exceptions the CLI and the API turn into one clear message.

Every message is written for the person who made the mistake and never contains a secret.
"""

from __future__ import annotations


class AntidistillError(Exception):
    """Base class: an error the user can act on (bad input, missing file, bad configuration)."""


class ConfigError(AntidistillError):
    """The settings or the key material are unusable."""


class InputError(AntidistillError, ValueError):
    """Text, a file or a parameter given to a command or a function is unusable.

    The domain's validation error: every check of a caller's value raises it, naming the field. It is a
    ``ValueError`` too, so code that catches ``ValueError`` keeps working; the CLI turns it into one line and a
    non-zero exit, the gateway into a 400.
    """


class ModelError(AntidistillError):
    """A model could not be found or loaded."""


class MissingExtraError(AntidistillError, ModuleNotFoundError):
    """An optional part is not installed: the message names the extra that installs it.

    Also a :class:`ModuleNotFoundError`, so code that falls back when an import fails keeps doing so.

    Args:
        extra: the extra to install (``"gateway"``).
        module: the first module of it that is missing.
        what: what needs it (``"`antidistill serve`"``); default: "this".
        install: the extra to tell the user to install (default: ``extra``; ``"all"`` for the demo).
    """

    def __init__(self, extra: str, module: str, what: str | None = None, install: str | None = None) -> None:
        self.extra, self.what, self.install = extra, what, install
        need = f"{what} needs" if what else "this needs"
        super().__init__(
            f"{need} the {extra} extra: pip install 'antidistill[{install or extra}]' ({module} is not installed)",
            name=module,
        )

    def __reduce__(self) -> tuple[type[MissingExtraError], tuple[str, str | None, str | None, str | None]]:
        return type(self), (self.extra, self.name, self.what, self.install)


def retry_after(exc: object) -> float | None:
    """The wait, in seconds, that a refused HTTP request asks for (an ``openai`` SDK error's response headers:
    ``retry-after-ms``, else ``retry-after``), or ``None`` when it names none."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            continue
    return None
