"""itm turns TensorFlow's oneDNN on before TensorFlow loads, unless the user chose (issue 31), and keeps
TensorFlow's start-up log quiet. Each test runs a fresh process: the settings act only at import time."""
import os

import pytest

from conftest import ROOT

pytestmark = pytest.mark.fresh_process  # opt-in: pytest --run-slow

CHECK = ("import itm, os\n"
         "from tensorflow.python.util import _pywrap_util_port as p\n"
         "print(p.IsMklEnabled(), os.environ['TF_ENABLE_ONEDNN_OPTS'])\n")


def _env_without(*names, **extra):
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, **extra}


def _python(args, env):
    """A fresh interpreter with exactly ``env`` (not run_cli's, which adds this process's: after an
    ``import itm`` here, that holds itm's own TF_ENABLE_ONEDNN_OPTS=1)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_import_itm_turns_onednn_on_before_tensorflow_loads():
    """A fresh process: oneDNN's state is fixed when TensorFlow loads, after ``import itm``."""
    done = _python(["-c", CHECK], _env_without("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "1"]
    # quiet by default: no CUDA probe, no oneDNN banner, no cuInit line
    assert "cuInit" not in done.stderr and "oneDNN custom operations" not in done.stderr, done.stderr


def test_a_users_onednn_setting_is_kept():
    """A fresh process with TF_ENABLE_ONEDNN_OPTS=0: itm leaves the user's choice alone."""
    done = _python(["-c", CHECK], _env_without("TF_ENABLE_ONEDNN_OPTS", TF_ENABLE_ONEDNN_OPTS="0"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "0"]


def test_verbose_says_which_onednn_state_was_used_and_why(tmp_path):
    """A fresh process each: --verbose names oneDNN's state and where it came from, for itm's default and for
    the user's own setting (a run refused at its data folder: the line comes before any work)."""
    args = ["ITM_Classifier.py", "--verbose", "--data-dir", str(tmp_path / "missing")]
    ours = _python(args, _env_without("TF_ENABLE_ONEDNN_OPTS"))
    assert ours.returncode == 2
    assert "oneDNN: on (itm set TF_ENABLE_ONEDNN_OPTS=1" in ours.stdout, ours.stdout
    theirs = _python(args, _env_without("TF_ENABLE_ONEDNN_OPTS", TF_ENABLE_ONEDNN_OPTS="0"))
    assert theirs.returncode == 2
    assert "oneDNN: off (TF_ENABLE_ONEDNN_OPTS=0 set by the user)" in theirs.stdout, theirs.stdout
