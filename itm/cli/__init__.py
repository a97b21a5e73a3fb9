"""The ``itm`` command line: ``parser`` declares every subcommand's arguments, ``commands`` runs them.
``ITM_Classifier.py`` is ``itm train`` under the original's name.

Neither imports TensorFlow: each command imports the library it drives only when it runs (``commands``),
so ``itm --help``, argument mistakes and the light commands answer at once.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Callable

from .. import log, tfenv
from ..errors import ItmError
from ..files import cause
from .commands import COMMANDS, run_train
from .parser import build_parser, train_parser


def dispatch(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; a user's mistake becomes a one-paragraph error and exit status 2."""
    try:
        return func(args)
    except ItmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM where the command treats it so (Interrupted)
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    except OSError as e:  # a write the disk refused where no caller named it (figures, tables)
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO):
            raise
        print(f"error: cannot write {e.filename or 'a file'}: {cause(e)}", file=sys.stderr)
        return 2


# Commands whose progress goes to stdout with their result lines, as the original's training printed; the
# others keep stdout for their result alone (a ranking, JSON, a table) and report progress on stderr.
STDOUT_PROGRESS = ("train", "evaluate")


def _set_output(args: argparse.Namespace) -> None:
    """--quiet / --verbose: the itm logger's level (result lines are prints, always shown); --verbose also
    lets TensorFlow's C++ log through (set before TensorFlow is imported, which parsing does not do)."""
    command = getattr(args, "command", "train")  # ITM_Classifier.py's parser has no command: it trains
    log.setup(getattr(args, "verbosity", 0), "stdout" if command in STDOUT_PROGRESS else "stderr")
    if getattr(args, "verbosity", 0) > 0:
        os.environ[tfenv.LOG_LEVEL] = "0"
        log.logger.debug(tfenv.onednn_line())  # imports TensorFlow: only under --verbose


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _set_output(args)
    return dispatch(COMMANDS[args.command], args)


def itm_classifier_main(argv: list[str] | None = None) -> int:
    """``python ITM_Classifier.py [options]``: the same run as ``itm train [options]``."""
    args = train_parser().parse_args(argv)
    _set_output(args)
    return dispatch(run_train, args)
