"""User-facing errors.

A ``LightsegError`` is a mistake the user can fix (a path, a key, a value). The command line
prints its message and exits with status 2, without a traceback (``--debug`` shows one).
Subclasses ``ValueError`` so that Python callers can catch it as the standard error type.
"""


class LightsegError(ValueError):
    """An error caused by user input; the message names the file/key/value and the fix."""


class ConfigError(LightsegError):
    """A recipe key or value is wrong."""


class DataError(LightsegError):
    """A dataset file is missing, unreadable or inconsistent."""


class CheckpointError(LightsegError):
    """A checkpoint cannot be loaded safely or does not match the model."""
