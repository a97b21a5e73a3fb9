"""Nothing of the user's is ever lost (issue 30): every command writes only into a folder it made (or an empty
one, or its own earlier output), never into the data it reads or over its inputs; ``--overwrite`` removes only
what itm recorded; evaluating another folder never replaces the run's own metrics; SIGTERM is an interruption.
Real files on disk and the real command line, in-process (``itm_cli``) except where a signal needs a process."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, itm_cli

TRAIN = ("train", "--image-size", "32", "--limit", "24", "--seed", "1", "--epochs", "1")
FLAT_RUN = Path(__file__).parent / "fixtures" / "run-itm-0.2-faithful"


def tree(root: Path) -> dict:
    """Every file under ``root`` with its bytes (the record aside)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".itm-folder.json"}


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr[-2000:])
    return lines[0]


def users_folder(folder: Path) -> Path:
    """A folder of the user's own: the names a run writes among them, and a backup/ folder."""
    (folder / "backup").mkdir(parents=True)
    (folder / "backup" / "thesis.docx").write_bytes(b"PK\x03\x04 four months of work")
    for name in ("README.md", "report.md", "history.csv", "config.json", "notes.txt"):
        (folder / name).write_text(f"the user's {name}\n")
    return folder


@pytest.fixture(scope="module")
def trained(faithful_run):
    """A tiny finished run: the session's ``faithful_run`` (copy it before changing it)."""
    return faithful_run


# ---------------------------------------------------------------- itm train

@pytest.mark.parametrize("overwrite", [False, True])
def test_train_refuses_a_users_folder_and_overwrite_deletes_nothing_of_it(overwrite, tiny_data, tmp_path):
    out = users_folder(tmp_path / "mine")
    before = tree(out)
    r = itm_cli(*TRAIN, "--data-dir", tiny_data, "--output-dir", out, *(["--overwrite"] if overwrite else []))
    line = one_error_line(r)
    assert f"--output-dir {out} is not an empty folder" in line and "not written by itm train" in line
    assert tree(out) == before and not (out / ".itm-folder.json").exists()  # untouched: no record, no lock


def test_train_refuses_the_data_folder_and_a_checkout(tiny_data, tmp_path, monkeypatch):
    before = tree(tiny_data)
    line = one_error_line(itm_cli(*TRAIN, "--data-dir", tiny_data, "--output-dir", tiny_data))
    assert f"--output-dir {tiny_data}" in line
    line = one_error_line(itm_cli(*TRAIN, "--data-dir", tiny_data, "--output-dir", tiny_data / "run"))
    assert "lies inside the data folder" in line and "choose another --output-dir" in line
    assert tree(tiny_data) == before and not (tiny_data / "run").exists()
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "README.md").write_text("# my project\n")
    (checkout / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    monkeypatch.chdir(checkout)
    line = one_error_line(itm_cli(*TRAIN, "--data-dir", tiny_data, "--output-dir", ".", "--overwrite"))
    assert "--output-dir . is not an empty folder" in line
    assert (checkout / "README.md").read_text() == "# my project\n"


def test_overwrite_replaces_only_what_the_run_recorded(trained, tiny_data_master, tmp_path):
    out = shutil.copytree(trained, tmp_path / "run")
    recorded = json.loads((out / ".itm-folder.json").read_text())
    assert recorded["kind"] == "run" and {"model.keras", "metrics.json", "README.md"} <= set(recorded["files"])
    (out / "thesis.docx").write_bytes(b"mine")
    (out / "backup").mkdir()
    (out / "backup" / "notes.txt").write_text("mine too")
    (out / "metrics-dev.json").write_text("{}")  # a name a run writes, put there by the user: not recorded
    old_model = (out / "model.keras").read_bytes()
    r = itm_cli(*TRAIN, "--data-dir", tiny_data_master, "--output-dir", out, "--overwrite", "--seed", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "thesis.docx").read_bytes() == b"mine" and (out / "backup" / "notes.txt").read_text() == "mine too"
    assert (out / "metrics-dev.json").read_text() == "{}"
    assert (out / "model.keras").read_bytes() != old_model and (out / "README.md").read_text().startswith("# Model card")


def test_a_run_of_before_the_record_is_still_its_own(tmp_path):
    """tests/fixtures/run-itm-0.2-faithful (config.json + model.keras, no record) is recognised as a run;
    --overwrite's clearing takes its own files and leaves its README (not a model card) and the user's."""
    from itm import output_folder, run_files
    from itm.training import run_folder

    run = shutil.copytree(FLAT_RUN, tmp_path / "old")
    (run / "notes.txt").write_text("mine")
    assert run_folder.check_output_dir(run) is True
    output_folder.clear(run, run_files.RUN)
    assert sorted(p.name for p in run.iterdir()) == [".itm-folder.json", "README.md", "expected.npz", "notes.txt"]
    interrupted = tmp_path / "interrupted"
    (interrupted / "backup").mkdir(parents=True)
    (interrupted / "backup" / "state.json").write_text('{"epoch": 1, "weights": "epoch1.weights.h5", "history": {}}')
    assert run_folder.check_output_dir(interrupted) is True


# ---------------------------------------------------------------- itm evaluate

def test_evaluating_another_folder_named_test_keeps_the_runs_own_metrics(trained, tiny_data_master, tmp_path):
    run = shutil.copytree(trained, tmp_path / "run")
    own = (run / "metrics-test.json").read_bytes() if (run / "metrics-test.json").exists() else None
    own_metrics, card = (run / "metrics.json").read_bytes(), (run / "README.md").read_text()
    other = shutil.copytree(tiny_data_master, tmp_path / "other" / "test")
    r = itm_cli("evaluate", "--run", run, "--data-dir", other, "--no-retrieval")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "as 'other-test'" in r.stdout
    scored = json.loads((run / "metrics-other-test.json").read_text())
    assert scored["data_dir"] == str(other.resolve())
    assert ((run / "metrics-test.json").read_bytes() if own is not None else None) == own
    assert (run / "metrics.json").read_bytes() == own_metrics
    new_card = (run / "README.md").read_text()
    test_row = [line for line in card.splitlines() if line.startswith("| test |")]
    assert len(test_row) == 2 and all(row in new_card.splitlines() for row in test_row)
    assert "\n| other-test | 24 (6) |" in new_card

    again = shutil.copytree(tiny_data_master, tmp_path / "elsewhere" / "other" / "test")
    r = itm_cli("evaluate", "--run", run, "--data-dir", again, "--no-retrieval")
    assert r.returncode == 0 and "as 'other-test-2'" in r.stdout, r.stdout[-1000:] + r.stderr[-1000:]
    assert json.loads((run / "metrics-other-test.json").read_text())["data_dir"] == str(other.resolve())
    line = one_error_line(itm_cli("evaluate", "--run", run, "--data-dir", again, "--name", "other-test"))
    assert f"already holds the evaluation of {other.resolve()}" in line and "choose another --name" in line


@pytest.mark.parametrize("name, message", [
    ("a/b", "no path separators"), ("x" * 300, "use 1 to 64 letters"), ("..", "no path separators"),
    ("test", "the name of the run's own test split"), ("dev", "the run's own dev split"),
])
def test_evaluate_checks_its_name(name, message, trained, tiny_data_master, tmp_path):
    run = shutil.copytree(trained, tmp_path / "run")
    before = tree(run)
    line = one_error_line(itm_cli("evaluate", "--run", run, "--data-dir", tiny_data_master / "..", "--name", name))
    assert message in line and len(line) < 300
    assert tree(run) == before


def test_a_readme_that_is_not_a_model_card_is_never_rewritten(tmp_path):
    """The itm 0.2 fixture's README.md is a note, not a model card: itm leaves it (and says so)."""
    from itm.training.model_card import write_model_card

    run = shutil.copytree(FLAT_RUN, tmp_path / "old")
    readme = (run / "README.md").read_text()
    assert write_model_card(run) is None
    assert (run / "README.md").read_text() == readme


# ---------------------------------------------------------------- the data commands

@pytest.fixture
def photos_and_captions(tiny_data, tmp_path):
    folder = shutil.copytree(tiny_data / "flickr8k-resised", tmp_path / "more")
    names = sorted(p.name for p in folder.glob("*.jpg"))
    lines = [f"{name}#{k}\tphoto {i} caption {k}" for i, name in enumerate(names) for k in range(5)]
    (tmp_path / "token.txt").write_text("\n".join(lines) + "\n")
    return folder, tmp_path / "token.txt"


def test_ood_split_writes_only_its_own_folders(photos_and_captions, tiny_data, tmp_path):
    folder, token = photos_and_captions
    ood = ("ood-split", "--captions", token, "--images", folder, "--photos", "6", "--no-embed")
    before = tree(tiny_data)
    line = one_error_line(itm_cli(*ood, "--out", tiny_data))
    assert f"--out {tiny_data} is not an empty folder" in line
    line = one_error_line(itm_cli(*ood, "--out", tmp_path / "o", "--train-out", tiny_data, "--course", tiny_data))
    assert f"--train-out {tiny_data} is --course {tiny_data}" in line
    line = one_error_line(itm_cli(*ood, "--out", tmp_path / "x", "--train-out", tmp_path / "x",
                                  "--course", tiny_data))
    assert "are the same folder" in line
    line = one_error_line(itm_cli(*ood, "--out", folder / "ood"))
    assert "lies inside it" in line
    assert tree(tiny_data) == before and not (tmp_path / "o").exists() and not (tmp_path / "x").exists()
    r = itm_cli(*ood, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr[-2000:]
    assert itm_cli(*ood, "--out", tmp_path / "o", "--seed", "1").returncode == 0  # its own: written again


def test_prepare_and_shard_refuse_a_users_folder(photos_and_captions, tiny_data, tmp_path):
    folder, token = photos_and_captions
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.json").write_text('{"my": "index"}')
    (mine / "train-00000-of-00001.tfrecord").write_bytes(b"my records")
    before = tree(mine)
    line = one_error_line(itm_cli("prepare", "flickr8k", "--captions", token, "--images", folder,
                                  "--out", mine, "--no-embed", "--image-size", "32"))
    assert f"--out {mine} is not an empty folder" in line and "itm prepare" in line
    line = one_error_line(itm_cli("shard", "--data-dir", tiny_data, "--out", mine))
    assert f"--out {mine} is not an empty folder" in line and "itm shard" in line
    assert tree(mine) == before
    line = one_error_line(itm_cli("shard", "--data-dir", tiny_data, "--out", tiny_data))
    assert "the data folder" in line
    shards = tmp_path / "shards"
    assert itm_cli("shard", "--data-dir", tiny_data, "--out", shards).returncode == 0
    (shards / "mine.tfrecord").write_bytes(b"mine")
    assert itm_cli("shard", "--data-dir", tiny_data, "--out", shards, "--shards", "2").returncode == 0
    assert (shards / "mine.tfrecord").read_bytes() == b"mine"


def test_embed_never_drops_another_folders_vectors(tiny_data, tmp_path):
    from itm.data.folder import SPLIT_FILES, embeddings_path

    theirs = embeddings_path(tiny_data)
    smaller = shutil.copytree(tiny_data, tmp_path / "smaller")
    for name in SPLIT_FILES.values():  # fewer captions than the first folder's embeddings hold
        lines = (smaller / name).read_text().splitlines()
        (smaller / name).write_text("\n".join(lines[:4]) + "\n")
    before = theirs.read_bytes()
    line = one_error_line(itm_cli("embed", "--data-dir", smaller, "--out", theirs))
    assert f"--out {theirs} holds" in line and "rewriting it would drop them" in line
    assert theirs.read_bytes() == before


def test_export_never_replaces_a_file_it_did_not_write(trained, tmp_path):
    mine = tmp_path / "model.tflite"
    mine.write_text("my own file")
    line = one_error_line(itm_cli("export", "--run", trained, "--format", "litert", "--output", mine))
    assert f"--output {mine} exists: pass --overwrite" in line
    line = one_error_line(itm_cli("export", "--run", trained, "--format", "litert", "--output", mine, "--overwrite"))
    assert "is not a LiteRT model" in line
    assert mine.read_text() == "my own file"
    line = one_error_line(itm_cli("export", "--run", trained, "--format", "litert", "--output", trained / "m.tflite"))
    assert f"--run {trained}" in line and not (trained / "m.tflite").exists()


def test_the_demo_generator_refuses_a_users_folder(tmp_path):
    from itm.data.demo import generate
    from itm.errors import DataError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is not an empty folder"):
        generate(tmp_path / "mine", sizes={"train": (4, 2, 2), "dev": (2, 1, 3), "test": (2, 1, 3)}, image_size=32)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------- SIGTERM

@pytest.mark.fresh_process
def test_sigterm_during_training_says_interrupted_and_the_same_command_resumes(tiny_data, tmp_path):
    """A fresh process: only a real process receives a real SIGTERM."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "itm", *TRAIN[:-1], "6", "--data-dir", str(tiny_data), "--output-dir", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "backup" / "state.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == ("interrupted: run the same command again to resume the run from its "
                                               "last finished epoch")
    assert "Traceback" not in stderr and not (out / ".itm-train.lock").exists()
    assert (out / "backup" / "state.json").is_file() and not (out / "metrics.json").exists()
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Resuming from the backup" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert (out / "metrics.json").is_file()
