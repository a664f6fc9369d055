"""Errors puyu raises for bad input.

Every error a user can cause is a :class:`PuyuError` whose message says what was
wrong and what to do.  The CLI prints it as one line (``--debug`` adds the
traceback) and exits with a non-zero code; library users catch the subclasses.
"""


class PuyuError(Exception):
    """Base class: a problem the user can fix; the message says how."""

    exit_code = 2


class ConfigError(PuyuError):
    """An invalid option, flag or parameter value."""


class ModelLoadError(PuyuError):
    """A model path, name or file that cannot be loaded."""


class TemplateError(PuyuError):
    """A chat template or conversation that cannot be rendered."""


class ContextLengthError(PuyuError):
    """A prompt that does not fit the model's context window."""


class DatasetError(PuyuError):
    """A training or evaluation dataset that cannot be read: the message names file, line and field."""


class QueueFullError(PuyuError):
    """The serving engine's waiting queue is full; retry later."""
