"""The errors a user can cause. Each is reported as one readable message (exit status 2), never a traceback."""


class ItmError(Exception):
    """Base of every user-facing error: the command line prints its message and exits 2."""


class DataError(ItmError):
    """A problem with the user's data, files or run folders."""


class ConfigError(ItmError, ValueError):
    """An impossible option or combination of options."""


class MissingExtra(DataError):
    """An optional dependency is not installed: the message says what to install."""


class ImageError(DataError):
    """An input that is not a usable image."""


class CaptionError(DataError):
    """A caption that cannot be embedded (no encoder, and not in the run's embeddings)."""


class WeightsError(DataError):
    """A weights file that cannot be read, or does not fit the model it is loaded into."""


class TrainingDiverged(ItmError):
    """Training produced a non-finite loss: nothing that looks like a result is written."""


class OutOfMemory(ItmError):
    """Training ran out of memory: the message names the settings to lower; the last epoch's backup is kept."""


class ModelOutputError(DataError):
    """A model that gives NaN or infinity instead of a score: refused, never printed as a result."""
