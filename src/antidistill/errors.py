"""Exceptions the CLI and the API turn into one clear message.

Every message is written for the person who made the mistake and never contains a secret.
"""


class AntidistillError(Exception):
    """Base class: an error the user can act on (bad input, missing file, bad configuration)."""


class ConfigError(AntidistillError):
    """The settings or the key material are unusable."""


class InputError(AntidistillError):
    """Text, a file or a parameter given to a command is unusable."""


class ModelError(AntidistillError):
    """A model could not be found or loaded."""
