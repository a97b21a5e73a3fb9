"""Training really learns, the command line produces a complete run folder, and the run folder's policy."""
import csv
import json

import keras
import numpy as np
import pytest

from conftest import NO_COURSE_DATA, SHARED, TINY_IMAGE, itm_cli, run_cli
from itm.data.batches import file_triples, model_inputs
from itm.data.folder import load_data_dir
from itm.data.demo import DEMO_VERSION
from itm.models.classifier import build_model
from itm.models.optim import create_optimizer


def test_short_training_lowers_the_loss(tiny_data):
    keras.utils.set_random_seed(0)
    data = load_data_dir(tiny_data)
    ds = model_inputs(file_triples(data.splits["train"], data.embeddings, batch_size=16, shuffle=True, seed=0,
                                   image_size=TINY_IMAGE)).cache()
    model = build_model(image_size=TINY_IMAGE)
    steps = 4 * 8
    model.compile(optimizer=create_optimizer(1e-3, steps, steps // 5), loss=keras.losses.KLDivergence(),
                  metrics=[keras.metrics.BinaryAccuracy()], jit_compile=False)
    before = model.evaluate(ds, verbose=0, return_dict=True)["loss"]
    model.fit(ds, epochs=8, verbose=0)
    after = model.evaluate(ds, verbose=0, return_dict=True)["loss"]
    assert after < 0.8 * before, (before, after)


def _check_run_folder(out, n_test):
    for name in ("model.keras", "history.csv", "history.png", "predictions.tsv", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "binary_accuracy", "val_loss", "val_binary_accuracy",
                             "val_balanced_accuracy", "val_roc_auc", "learning_rate"]
    lines = (out / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "image\tcaption\tlabel\tp_match" and len(lines) == n_test + 1
    p = np.array([float(line.split("\t")[3]) for line in lines[1:]])
    assert ((0 <= p) & (p <= 1)).all()
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("split", "n", "accuracy", "tf_evaluate", "balanced_accuracy", "precision", "recall", "f1",
                "confusion", "majority_baseline_accuracy", "train_seconds", "train_examples_per_second", "config"):
        assert key in metrics, key
    assert metrics["n"] == n_test and sum(metrics["confusion"].values()) == n_test
    # The original's own accuracy and Keras' binary accuracy agree on a 2-way softmax.
    assert metrics["accuracy"] == pytest.approx(metrics["tf_evaluate"]["binary_accuracy"], abs=1e-6)
    labels = [line.split("\t")[2] == "match" for line in lines[1:]]
    assert metrics["accuracy"] == pytest.approx(np.mean((p > 0.5) == np.array(labels)), abs=1e-6)
    return metrics, rows


def _check_tensorboard(out, history):
    """RUN/tensorboard holds what history.csv holds, epoch by epoch, the options and the test figures."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    tags = set(events.Tags()["tensors"])  # tf.summary (v2) writes every summary as a tensor
    for column in history[0]:
        if column == "epoch":
            continue
        logged = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(column)]
        assert [step for step, _ in logged] == [int(row["epoch"]) for row in history], column
        assert [v for _, v in logged] == pytest.approx([float(row[column]) for row in history], rel=1e-5, abs=1e-7)
    assert {"test/accuracy", "test/roc_auc", "test/confusion", "test/scores", "test/samples", "test/roc-pr"} <= tags
    width, height, png = tf.make_ndarray(events.Tensors("test/confusion")[-1].tensor_proto)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int(width) > 100 and int(height) > 100
    options = tf.make_ndarray(events.Tensors("options")[0].tensor_proto).item().decode()
    assert "| batch_size | 8 |" in options and "| seed | 7 |" in options


@pytest.mark.slow
def test_itm_classifier_end_to_end(tiny_data, tmp_path, with_figures):
    out = tmp_path / "run"
    r = itm_cli("--data-dir", str(tiny_data), "--epochs", "2", "--batch-size", "8", "--learning-rate", "1e-4",
                "--seed", "7", "--image-size", str(TINY_IMAGE), "--output-dir", str(out), train_script=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Data: {tiny_data} (from --data-dir)" in r.stdout
    assert "Seed: 7 (from --seed); precision: float32" in r.stdout
    assert "TEST accuracy=" in r.stdout and "Tensorflow test method: Loss:" in r.stdout
    assert any(line.startswith("ITM=") and " PREDICTIONS: match=" in line and ", no-match=" in line and " -> " in line
               for line in r.stdout.splitlines())
    metrics, history = _check_run_folder(out, n_test=24)
    assert len(history) == 2 and float(history[-1]["learning_rate"]) == 0.0
    _check_tensorboard(out, history)
    assert metrics["config"]["seed"] == 7 and metrics["config"]["batch_size"] == 8
    assert metrics["config"]["learning_rate"] == 1e-4 and metrics["parameters"] == 6_529_570 - (28 * 28 - 8 * 8) * 64 * 128

    # The saved model loads back in a fresh process and gives the same predictions as it does loaded here
    # (one fresh process, compared with this one's load, where two fresh processes were compared before).
    check = (
        "import sys, numpy as np, keras, itm.models.optim\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "x = {'image_input': np.full((1, 64, 64, 3), 128.0, 'float32'), 'text_embedding': np.full((1, 384), 0.05, 'float32')}\n"
        "print(type(m.optimizer).__name__, float(m.predict(x, verbose=0)[0, 0]))\n")
    r1 = run_cli(["-c", check, str(out / "model.keras")])
    assert r1.returncode == 0, r1.stderr
    here = keras.saving.load_model(out / "model.keras")
    x = {"image_input": np.full((1, 64, 64, 3), 128.0, "float32"), "text_embedding": np.full((1, 384), 0.05, "float32")}
    optimizer, p = r1.stdout.split()
    assert optimizer == "AdamWeightDecay" == type(here.optimizer).__name__
    assert float(p) == pytest.approx(float(here.predict(x, verbose=0)[0, 0]), abs=1e-6)


def test_the_original_class_names_load_data_and_train(tiny_data, tmp_path):
    """``from itm import ITM_DataLoader, ITM_Classifier`` works as in the original: the loader gives batched
    (image, embedding) -> one-hot datasets; constructing the classifier trains, evaluates and saves a run."""
    from itm import ITM_Classifier, ITM_DataLoader

    loader = ITM_DataLoader(str(tiny_data), batch_size=4, seed=0)
    (x, y) = next(iter(loader.train_ds))
    assert tuple(x["image_input"].shape) == (4, 224, 224, 3) and tuple(x["text_embedding"].shape) == (4, 384)
    assert tuple(y.shape) == (4, 2) and np.allclose(y.numpy().sum(axis=1), 1.0)
    assert sum(len(b[1]) for b in loader.val_ds) == len(loader.splits["dev"].triples)

    clf = ITM_Classifier(data_dir=str(tiny_data), epochs=1, limit=8, image_size=32, seed=0,
                         output_dir=str(tmp_path / "run"))
    assert clf.run_dir == tmp_path / "run" and (clf.run_dir / "model.keras").is_file()
    assert clf.metrics["config"]["limit"] == 8 and 0.0 <= clf.metrics["accuracy"] <= 1.0
    assert (clf.config.seed, clf.config.precision, clf.config.data_dir) == (0, "float32", str(tiny_data.resolve()))


def test_progress_goes_through_the_itm_logger(tiny_data, tmp_path, capsys):
    """A script can silence itm's progress (or redirect it) through logging; setup() shows it on stdout."""
    import logging

    from itm import log
    from itm.options import resolve_config
    from itm.training.run import resolve_run

    try:
        logging.getLogger("itm").setLevel(logging.WARNING)
        resolve_run(resolve_config(data_dir=str(tiny_data), output_dir=str(tmp_path / "a"), seed=1))
        assert capsys.readouterr().out == ""
        log.setup()
        resolve_run(resolve_config(data_dir=str(tiny_data), output_dir=str(tmp_path / "b"), seed=1))
        assert "Seed: 1 (from --seed)" in capsys.readouterr().out
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("itm").addHandler(handler)
        resolve_run(resolve_config(data_dir=str(tiny_data), output_dir=str(tmp_path / "c"), seed=2))
        assert any("Seed: 2" in r.getMessage() for r in records)
    finally:
        log.setup()


def test_keras_progress_follows_the_logger_and_the_notebook(monkeypatch):
    import sys

    from itm import log
    from itm.training.callbacks import keras_verbosity

    try:
        log.setup(log.QUIET)
        assert keras_verbosity() == 0
        log.setup()
        assert keras_verbosity() == 2  # pytest's stdout is not a terminal: one line per epoch
        monkeypatch.setitem(sys.modules, "ipykernel", sys)
        assert keras_verbosity() == 1  # Jupyter draws Keras' bar
    finally:
        log.setup()


@pytest.mark.slow
def test_quiet_prints_the_result_lines_only(tiny_data, tmp_path):
    r = itm_cli("train", "--quiet", "--data-dir", str(tiny_data), "--epochs", "1",
                "--image-size", "32", "--seed", "7", "--output-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert "TEST accuracy=" in r.stdout and any(line.startswith("ITM=") for line in lines)  # the original's
    assert lines[-1].startswith("Run written to")
    for progress in ("Data:", "Seed:", "TRAINING", "Epoch 1/1", "Total params", "model trained"):
        assert progress not in r.stdout + r.stderr, progress


def test_itm_train_is_the_same_command(tiny_data, tmp_path):
    r = itm_cli("train", "--help")
    assert r.returncode == 0 and "--data-dir" in r.stdout and "--limit" in r.stdout and "faithful" in r.stdout


@pytest.mark.slow
def test_demo_is_used_when_no_data_is_configured(tmp_path):
    env = {"ITM_CACHE_DIR": str(tmp_path / "cache"), "ITM_DATA_DIR": ""}
    r = itm_cli("--epochs", "1", "--limit", "8", "--image-size", "32",
                "--output-dir", str(tmp_path / "run"), cwd=tmp_path, env=env, train_script=True)
    assert r.returncode == 0, r.stdout + r.stderr
    first = r.stdout.splitlines()[:3]
    assert any("bundled DEMO dataset" in line for line in first), first
    assert any("flickr8k.dataset-cmp9137-item1" in line for line in first)
    assert (tmp_path / "cache" / f"demo-{DEMO_VERSION}" / "flickr8k-resised").is_dir()
    assert "(random; pass --seed to choose one)" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--data-dir", "/nonexistent/flickr8k"], "data folder /nonexistent/flickr8k (from --data-dir) does not exist"),
    (["--epochs", "0"], "must be at least 1"),
    (["--learning-rate", "abc"], "is not a number"),
])
def test_user_mistakes_get_a_clear_error(args, message, tmp_path):
    r = itm_cli(*args, train_script=True, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_data_folder_fails_before_training(tiny_data, tmp_path):
    (tiny_data / "flickr8k.TestImages.txt").write_text("img.jpg\tcaption\tperhaps\n")
    r = itm_cli("--data-dir", tiny_data, "--output-dir", tmp_path / "o", train_script=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "label other than match/no-match: 1" in r.stderr and "flickr8k.TestImages.txt:1" in r.stderr
    assert "TRAINING" not in r.stdout and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason=NO_COURSE_DATA)
def test_real_data_one_epoch(tmp_path, with_figures):
    out = tmp_path / "real"
    r = itm_cli("--data-dir", str(SHARED), "--epochs", "1", "--limit", "256", "--seed", "0",
                "--output-dir", str(out), train_script=True)
    assert r.returncode == 0, r.stdout + r.stderr
    metrics, _ = _check_run_folder(out, n_test=256)
    assert metrics["parameters"] == 6_529_570


# ---------------------------------------------------------------- the run folder's policy

def _train(tiny_data, out, *extra):
    return itm_cli("train", "--data-dir", tiny_data, "--epochs", "1", "--image-size", "32", "--limit", "24", "--seed", "1",
                  "--output-dir", out, *extra)


@pytest.mark.slow
def test_a_finished_run_is_not_overwritten_unless_asked(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_data, out).returncode == 0
    from itm.run_files import record

    record(out, "metrics-dev.json")  # an earlier evaluation's file, recorded as itm records what it writes
    (out / "metrics-dev.json").write_text("{}")
    before = (out / "model.keras").read_bytes()
    r = _train(tiny_data, out)
    assert r.returncode == 2 and "holds a finished run: pass --overwrite" in r.stderr and "Traceback" not in r.stderr
    assert (out / "model.keras").read_bytes() == before
    r = _train(tiny_data, out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not (out / "metrics-dev.json").exists() and (out / "metrics.json").is_file()


def test_an_interrupted_run_resumes_only_with_its_own_options(tiny_data, tmp_path):
    from itm.errors import ConfigError
    from itm.options import resolve_config
    from itm.training.run import resolve_run

    out = tmp_path / "run"
    first, _, resuming = resolve_run(resolve_config(data_dir=str(tiny_data), output_dir=str(out), seed=3))
    assert resuming is False
    (out / "backup").mkdir(parents=True)  # as a run killed after its first epoch leaves it
    (out / "config.json").write_text(json.dumps(first.to_dict()))
    (out / "backup" / "state.json").write_text('{"epoch": 1, "weights": "epoch1.weights.h5", "history": {}}')
    same = resolve_config(data_dir=str(tiny_data), output_dir=str(out))  # no --seed: the run's own is taken
    resumed, _, resuming = resolve_run(same)
    assert resuming is True and resumed.seed == 3 and same.seed is None  # a new config; the given one unchanged
    other = resolve_config(data_dir=str(tiny_data), output_dir=str(out), fusion="mlp")
    with pytest.raises(ConfigError, match="--fusion was 'concat', now 'mlp'"):
        resolve_run(other)
    assert json.loads((out / "config.json").read_text())["fusion"] == "concat"  # nothing was written


@pytest.mark.parametrize("where, message", [("file", "is a file, not a folder"), ("inside", "which is a file"),
                                           ("proc", "cannot write the run folder")])
def test_an_output_dir_that_cannot_hold_a_run_is_refused_before_the_data_check(where, message, tiny_data, tmp_path):
    (tmp_path / "f").write_text("x")
    out = {"file": tmp_path / "f", "inside": tmp_path / "f" / "run", "proc": "/proc/itm-run"}[where]
    r = itm_cli("train", "--data-dir", tiny_data / "absent", "--output-dir", out)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert "does not exist" not in r.stderr  # refused before the data folder was looked at


# ---------------------------------------------------------------- training that cannot give a result

def test_a_diverging_run_stops_with_a_clear_error_and_no_result(tiny_data, tmp_path):
    out = tmp_path / "run"
    r = _train(tiny_data, out, "--learning-rate", "1e30", "--clipnorm", "0", "--epochs", "2")
    assert r.returncode == 2 and "error: training diverged: loss became nan" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (out / "model.keras").exists() and not (out / "metrics.json").exists()


def test_running_out_of_memory_is_its_own_error_not_divergence(tiny_data, tmp_path, monkeypatch):
    """Out of memory in ``fit`` is ``OutOfMemory`` (its own message, exit status 2), not ``TrainingDiverged``.
    The fault is injected (``Trainer.fit`` raises what TensorFlow and Python raise when memory runs out): a
    real exhaustion would take the shared machine's memory with it."""
    import tensorflow as tf

    from itm import ITM_Classifier
    from itm.errors import OutOfMemory, TrainingDiverged
    from itm.training.trainer import Trainer

    def out_of_memory(error):
        def fit(*args, **kwargs):
            raise error
        return fit

    monkeypatch.setattr(Trainer, "fit", out_of_memory(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating")))
    out = tmp_path / "run"
    r = _train(tiny_data, out, "--batch-size", "4")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert ("error: training ran out of memory (ResourceExhaustedError) with --batch-size 4: lower --batch-size or "
            "--image-size" in r.stderr) and "diverged" not in r.stderr
    assert not (out / "model.keras").exists() and not (out / "metrics.json").exists()

    monkeypatch.setattr(Trainer, "fit", out_of_memory(MemoryError()))
    with pytest.raises(OutOfMemory, match=r"ran out of memory \(MemoryError\)") as caught:
        ITM_Classifier(data_dir=str(tiny_data), epochs=1, limit=8, image_size=32, output_dir=str(tmp_path / "run2"))
    assert not isinstance(caught.value, TrainingDiverged)


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "100000", "--image-size", "224"], "needs about"),
    (["--image-size", "7"], "--image-size 7 is too small for the faithful-cnn image tower"),
    (["--learning-rate", "inf"], "must be a finite number"),
    (["--negatives", "redraw"], "--negatives redraw needs --pipeline cached"),
])
def test_options_that_cannot_train_are_refused_before_training(args, message, tiny_data, tmp_path):
    r = _train(tiny_data, tmp_path / "run", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert "TRAINING" not in r.stdout
