"""TensorFlow's process settings, made before TensorFlow is first imported (``import itm`` runs ``prepare``).

oneDNN: TensorFlow 2.20's pip build leaves its oneDNN kernels off on CPUs without AVX-512 (AMD Zen 2/3,
Intel consumer chips since the 12th generation), where every convolution then falls back to generic
kernels: a faithful epoch took 1.9x as long on an AVX2-only AMD EPYC (issue 31). itm turns oneDNN on
unless the user set ``TF_ENABLE_ONEDNN_OPTS`` themselves. Quiet: TensorFlow's C++ start-up log (and its
CUDA probe's 'failed call to cuInit' line on a machine without an NVIDIA driver, which says only that there
is no GPU) is kept to errors, or hidden, unless the user set ``TF_CPP_MIN_LOG_LEVEL`` (``--verbose`` does).
"""
from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
USER_ONEDNN = os.environ.get(ONEDNN)  # the user's own setting, read before itm sets anything


def prepare() -> None:
    """oneDNN on and TensorFlow's C++ log quiet, where the user has not chosen; a no-op once TensorFlow is
    imported (it reads both when it loads)."""
    os.environ.setdefault(ONEDNN, "1")
    os.environ.setdefault(LOG_LEVEL, "2" if os.path.exists("/dev/nvidiactl") else "3")


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN kernels in this process (imports TensorFlow)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def onednn_line() -> str:
    """One line: oneDNN's state in this process and why (imports TensorFlow)."""
    state = "on" if onednn_enabled() else "off"
    if USER_ONEDNN is not None:
        why = f"{ONEDNN}={USER_ONEDNN} set by the user"
    elif os.environ.get(ONEDNN) == "1":
        why = f"itm set {ONEDNN}=1 (TensorFlow leaves it off on CPUs without AVX-512); set {ONEDNN}=0 to compare"
    else:
        why = "TensorFlow's default"
    return f"oneDNN: {state} ({why})"


@contextmanager
def quiet_native_log():
    """Hold back what C++ code writes to the process's stderr inside the block (the LiteRT converter logs
    through absl, which TF_CPP_MIN_LOG_LEVEL does not reach); shown if the block fails, and never held
    back under --verbose (TF_CPP_MIN_LOG_LEVEL=0)."""
    if os.environ.get(LOG_LEVEL) == "0":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
