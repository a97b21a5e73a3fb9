"""The command line answers ``--help`` without TensorFlow, and the modules that import it at their top import
in any order (issue 33: the defaults the parser shows live in ``itm.defaults``; imports wait in the command
runner, ``itm.cli.commands``, and for optional extras)."""
import ast

import pytest

from conftest import ROOT, run_cli

HELP_EVERYWHERE = """
import sys
from itm.cli import COMMANDS, main

for args in (["--help"], *([name, "--help"] for name in COMMANDS)):
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None), (args, e.code)
print("IMPORTED", sorted(m for m in ("tensorflow", "keras", "matplotlib") if m in sys.modules), len(COMMANDS))
"""


@pytest.mark.fresh_process
def test_help_of_itm_and_of_every_subcommand_imports_no_tensorflow():
    """Fresh process: what a bare interpreter imports answering ``itm --help`` and ``itm COMMAND --help`` for
    every command (this test process has TensorFlow loaded already)."""
    r = run_cli(["-c", HELP_EVERYWHERE])
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("IMPORTED"))
    assert line.startswith("IMPORTED [] "), line
    assert int(line.split()[-1]) >= 14  # every command was asked, train and evaluate among them
    assert "usage: itm train" in r.stdout and "usage: itm evaluate" in r.stdout


@pytest.mark.fresh_process
def test_itm_train_help_as_a_user_types_it_imports_no_tensorflow(tmp_path):
    """Fresh process: ``python -m itm train --help`` with TensorFlow made unimportable (a ``tensorflow`` package
    first on the path that raises): a command line that imported it would fail instead of printing its help."""
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("raise ImportError('TensorFlow imported by --help')\n")
    r = run_cli(["-m", "itm", "train", "--help"], env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "usage: itm train" in r.stdout and "--preset" in r.stdout


def test_the_defaults_module_imports_nothing():
    """``itm.defaults`` is what the parser reads instead of the heavy modules: it must stay an import-free list."""
    tree = ast.parse((ROOT / "itm" / "defaults.py").read_text())
    imports = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports == []


@pytest.mark.fresh_process
@pytest.mark.parametrize("module", ["itm.models.tokenizer", "itm.models.torch_weights", "itm.models.minilm",
                                    "itm.models.efficientnet_lite", "itm.data.embed"])
def test_a_module_that_imports_keras_first_imports_whole(module):
    """Fresh process each: the first ``import keras`` registers itm's Keras classes (itm.models.keras_registry), which
    imports the classifier and its towers while ``module`` is half-made; none of them takes a name from it."""
    r = run_cli(["-c", f"import {module}, sys; print('keras' in sys.modules)"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "True"

