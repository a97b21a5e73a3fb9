"""Training that scales out on tf.distribute and survives being killed."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, itm_cli, run_cli


def _iterations(model_path):
    """The steps the saved model's optimizer took (loaded in this process, as ``itm.load`` would)."""
    import keras

    import itm.models.optim  # noqa: F401  (registers itm's serializable classes)

    return int(keras.saving.load_model(model_path).optimizer.iterations)


def test_auto_precision_is_the_fast_one_this_machine_has():
    from itm.options import fast_precision

    flags = open("/proc/cpuinfo").read()
    assert fast_precision() == ("mixed_bfloat16" if "avx512_bf16" in flags or "amx_bf16" in flags else "float32")


@pytest.mark.parametrize("extra", [["--objective", "contrastive", "--batch-size", "4"], ["--pipeline", "grouped"]],
                         ids=["contrastive", "grouped"])
@pytest.mark.slow
def test_float16_grouped_steps_go_through_the_loss_scaler(extra, tiny_data, tmp_path):
    """Under mixed_float16 the optimizer is a LossScaleOptimizer; the image-grouped steps must step that
    one (scaling the loss), or small float16 gradients underflow to zero."""
    import keras

    import itm.models.classifier  # noqa: F401  (registers itm's serializable layers and functions)
    import itm.models.optim  # noqa: F401

    out = tmp_path / "run"
    r = itm_cli("train", "--data-dir", str(tiny_data), "--epochs", "2", "--image-size", "32",
                "--image-tower", "cnn-bn", "--fusion", "interaction", "--learning-rate", "1e-3", "--seed", "0",
                "--output-dir", str(out), *extra, "--precision", "mixed_float16")
    assert r.returncode == 0, r.stdout + r.stderr
    history = (out / "history.csv").read_text().splitlines()
    header, last = history[0].split(","), history[-1].split(",")
    assert np.isfinite(float(last[header.index("loss")]))
    optimizer = keras.saving.load_model(out / "model.keras").optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # The scaler's own state moves only when the steps go through it: its count of finite steps, or
    # its scale, halved at each step whose scaled gradients overflowed.
    assert int(optimizer.step_counter) > 0 or float(optimizer.dynamic_scale) != optimizer.initial_scale


# --fast with an explicit --batch-size keeps 16 triples (4 images of the fixture) per step: 4 steps an epoch.
@pytest.mark.parametrize("extra, steps_per_epoch", [([], 4), (["--fast", "--batch-size", "16"], 4)],
                         ids=["fit", "grouped"])
@pytest.mark.slow
@pytest.mark.fresh_process
def test_sigkilled_run_resumes_with_the_same_total_steps(extra, steps_per_epoch, tiny_data, tmp_path):
    """Fresh process: the first run is another process, killed with SIGKILL after its first backup; the
    resume is in this process."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "itm", "train", "--data-dir", str(tiny_data), "--epochs", "8", "--image-size", "32",
            "--seed", "4", "--output-dir", str(out), *extra]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "backup" / "state.json").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "backup").is_dir() and not (out / "model.keras").exists(), "killed before the first backup"
    r = itm_cli(*args[3:])
    assert r.returncode == 0, r.stdout + r.stderr
    # Resumed, and said so: the restart did not redo the first epoch.
    assert "Resuming from the backup" in r.stdout and "Epoch 1/8" not in r.stdout
    with open(out / "history.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(1, 9))
    assert _iterations(out / "model.keras") == 8 * steps_per_epoch
    assert not (out / "backup").exists()


MIRRORED = r"""
import sys
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from itm.models.classifier import build_model
from itm.models.optim import create_optimizer
rng = np.random.default_rng(0)
x = {"image_input": 255 * rng.random((64, 32, 32, 3), dtype=np.float32),
     "text_embedding": rng.normal(0, 0.05, (64, 384)).astype(np.float32)}
y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 64)]
results = []
for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy()):
    keras.utils.set_random_seed(5)
    with strategy.scope():
        model = build_model(image_size=32, dropout=0.0)
        model.compile(optimizer=create_optimizer(1e-3, 8, 2, global_clipnorm=None),
                      loss=keras.losses.KLDivergence(), jit_compile=False)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=2, verbose=0)
    results.append((strategy.num_replicas_in_sync, [np.asarray(w) for w in model.weights]))
(n1, w1), (n2, w2) = results
print(n1, n2, max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)))
"""


@pytest.mark.slow
@pytest.mark.fresh_process
def test_mirrored_over_two_cpus_matches_one_device():
    """Same seed, same batches: the weights after 8 steps agree to 1e-5 (float sums in another order).
    A fresh process: the CPU is split into two logical devices, which TensorFlow allows only before it starts.

    Clipping is off here: under a strategy it applies to each replica's gradient before the sum,
    as in the reference optimizer, which is a different (documented) computation."""
    r = run_cli(["-c", MIRRORED])
    assert r.returncode == 0, r.stderr
    n1, n2, diff = r.stdout.split()[-3:]
    assert (n1, n2) == ("1", "2")
    assert float(diff) < 1e-5


@pytest.mark.slow
def test_mirrored_strategy_from_the_command_line(tiny_data, tmp_path):
    r = itm_cli("train", "--data-dir", tiny_data, "--epochs", "1", "--image-size", "32",
                "--strategy", "mirrored", "--output-dir", tmp_path / "run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "run" / "model.keras").is_file()


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(args, n, logs, timeout=150):
    """Run ``python *args(i)`` as worker i of an n-worker cluster on loopback; return each one's
    (exit status, output)."""
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(n)]
    procs = []
    try:
        for i in range(n):
            tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(tf_config)}
            with open(logs / f"worker{i}.log", "w") as log:  # a file, not a pipe, which could fill and stall
                procs.append(subprocess.Popen([sys.executable, *args(i)], cwd=ROOT, env=env, stdout=log,
                                              stderr=subprocess.STDOUT))
        deadline = time.time() + timeout
        codes = [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(code, (logs / f"worker{i}.log").read_text()) for i, code in enumerate(codes)]


@pytest.mark.slow
@pytest.mark.fresh_process
def test_two_workers_on_loopback_complete_a_multiworker_run(tiny_data, tmp_path):
    """The tiny train split has 64 triples: a global batch of 16 split over the two workers makes
    4 steps an epoch (8 in 2 epochs); a batch of 16 per worker would make 2 (4). Fresh processes: each
    worker is a process of its own, as on a cluster."""
    outs = [tmp_path / "chief", tmp_path / "worker1"]
    results = _run_workers(lambda i: ["-m", "itm", "train", "--data-dir", str(tiny_data), "--epochs", "2",
                                      "--image-size", "32", "--batch-size", "16", "--strategy", "multiworker",
                                      "--output-dir", str(outs[i])], 2, tmp_path)
    for code, output in results:
        assert code == 0, output
    # Keras' epoch lines: "4/4 - 2s - 500ms/step - binary_accuracy: ... - loss: ... - val_loss: ..."
    epochs = [[line.split("binary_accuracy: ", 1)[1] for line in output.splitlines() if " - binary_accuracy: " in line]
              for _, output in results]
    assert len(epochs[0]) == 2
    # One cluster: both workers report the same global loss, epoch for epoch.
    assert epochs[0] == epochs[1]
    assert _iterations(outs[0] / "model.keras") == 2 * 64 // 16
    assert (outs[0] / "metrics.json").is_file() and (outs[0] / "report.md").is_file()
    assert not (outs[0] / "backup").exists()
    assert not outs[1].exists(), "only the chief writes"


SAME_RUN = r"""
import sys
import itm.training.run
from itm.options import resolve_config
itm.training.run.finish_run = lambda *args: None  # the test split's evaluation is not what is compared here
itm.training.run.train(resolve_config(data_dir=sys.argv[1], output_dir=sys.argv[2], epochs=2, image_size=32, seed=4,
                                      strategy="multiworker", dropout=0.0, clipnorm=0.0))
"""


@pytest.mark.slow
@pytest.mark.fresh_process
def test_two_workers_train_as_one_on_the_same_global_batches(tiny_data, tmp_path):
    """Same seed, so the same global batches: one worker and two (each with half of every batch)
    end with the same history. Dropout is off, as is clipping (under a strategy it applies to each
    replica's gradient before the sum). Fresh processes: each worker is a process of its own."""
    histories = []
    for n in (1, 2):
        out = tmp_path / f"{n}-workers"
        (tmp_path / f"logs{n}").mkdir()
        for code, output in _run_workers(lambda i, out=out: ["-c", SAME_RUN, str(tiny_data), str(out / str(i))], n,
                                         tmp_path / f"logs{n}"):
            assert code == 0, output
        with open(out / "0" / "history.csv") as f:
            histories.append([{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)])
    assert len(histories[0]) == 2
    for one, two in zip(*histories):
        assert two == pytest.approx(one, rel=1e-5)


@pytest.mark.parametrize("tf_config", ["", "{not json"], ids=["missing", "malformed"])
def test_multiworker_without_a_usable_tf_config_is_a_clean_error(tf_config, tiny_data, tmp_path):
    r = itm_cli("train", "--data-dir", tiny_data, "--epochs", "1", "--image-size", "32", "--strategy", "multiworker",
                "--output-dir", tmp_path / "run", env={"TF_CONFIG": tf_config})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "error:" in r.stderr and "TF_CONFIG" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tf_config", [
    '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
    '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
    '{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
    '{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}',
    '["a:1"]',
])
def test_tf_config_is_checked(tf_config):
    from itm.errors import ConfigError
    from itm.training.multiworker import check_tf_config

    with pytest.raises(ConfigError, match="TF_CONFIG"):
        check_tf_config(tf_config)
    good = '{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}'
    assert check_tf_config(good)["task"] == {"type": "worker", "index": 0}
