"""Exceptions the CLI and the API turn into one clear message.

Every message is written for the person who made the mistake and never contains a secret.
"""


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
