"""The ``itm`` logger: progress goes through it, so that a script or a notebook can silence or redirect it
(``logging.getLogger("itm").setLevel(logging.WARNING)``, or handlers of its own).

Result lines (the original's sample predictions and test accuracy, the evaluation's summary, what
``itm predict``, ``rank`` and ``search`` answer) are ``print()``s on standard output, never log records:
``--quiet`` leaves exactly them. Like TensorFlow's own logger, ``itm``'s shows its progress out of the
box (``setup()`` runs on import): raise its level to silence it, or call ``setup(QUIET)``; replace its
handlers (and set ``propagate``) to redirect it.
"""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger("itm")

QUIET, NORMAL, VERBOSE = -1, 0, 1
LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}


class _CurrentStream(logging.StreamHandler):
    """A handler writing to the ``sys.stdout`` (or stderr) of the moment, not the one at set-up: a notebook
    or pytest may swap it."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    @property
    def stream(self):
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the stream is always looked up
        pass


class _Only(logging.Filter):
    def __init__(self, below: int):
        super().__init__()
        self.below = below

    def filter(self, record):
        return record.levelno < self.below


def setup(verbosity: int = NORMAL, progress_to: str = "stdout") -> None:
    """Show the ``itm`` logger's records: progress (INFO; DEBUG too when verbose) on ``progress_to``
    (stdout, in order with the result lines, as the original's training printed; the data tools, whose
    stdout is their result, say stderr), warnings on stderr; ``QUIET`` shows warnings only. Calling it
    again replaces the earlier set-up."""
    for handler in [h for h in logger.handlers if isinstance(h, _CurrentStream)]:
        logger.removeHandler(handler)
    out, err = _CurrentStream(progress_to), _CurrentStream("stderr")
    out.addFilter(_Only(logging.WARNING))
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(LEVELS[max(QUIET, min(VERBOSE, verbosity))])
    logger.propagate = False  # the root logger's handlers (e.g. a notebook's basicConfig) would repeat them


def quiet() -> bool:
    """True when the ``itm`` logger's level hides progress (``--quiet``, or set by a user): Keras' bar and
    epoch lines stay silent too."""
    return logger.level > logging.INFO


def in_notebook() -> bool:
    """Running under a Jupyter kernel, whose output cell draws Keras' progress bar."""
    return "ipykernel" in sys.modules


class _Progress:
    """A file-like object for ``print(..., file=progress)`` and the ``log=`` arguments that take a stream:
    each line it receives becomes an INFO record of the ``itm`` logger."""

    def __init__(self):
        self._pending = ""

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            logger.info(line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            logger.info(self._pending)
            self._pending = ""


progress = _Progress()


if not logger.handlers:
    setup()
