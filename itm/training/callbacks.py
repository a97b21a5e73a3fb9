"""What happens around the training steps, for every objective: Keras callbacks.

``DevScores`` scores dev after each epoch (exact metrics, through ``itm.evaluation.predict``);
``LearningRate`` logs the rate; ``Progress`` prints a step counter within long epochs when stdout is not
a terminal (where Keras' bar stays silent); ``StopOnNonFinite`` ends a run whose loss is NaN or infinite;
``EpochBackup`` keeps the run's state after each epoch so that a run killed at any moment and started
again with the same ``--output-dir`` resumes after its last finished epoch, with the same number of
optimizer steps as an uninterrupted one, and the history of every epoch.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from ..data.batches import one_hot
from .. import log
from ..errors import ConfigError, DataError, TrainingDiverged
from ..files import atomic_write, sha256_file, written_as
from ..log import logger
from ..evaluation.metrics import binary_metrics, roc_auc
from ..evaluation.predict import score_split
from ..run_files import BACKUP_DIR, BACKUP_FILES
HISTORY_COLUMNS = ("loss", "binary_accuracy", "val_loss", "val_binary_accuracy", "val_balanced_accuracy",
                   "val_roc_auc", "learning_rate")


class DevScores(keras.callbacks.Callback):
    """Adds val_loss, val_binary_accuracy, val_balanced_accuracy and val_roc_auc to each epoch's logs."""

    def __init__(self, scorer, dev, embeddings, store=None):
        super().__init__()
        self.scorer, self.dev, self.embeddings, self.store = scorer, dev, embeddings, store
        self.is_match = np.array([t.match for t in dev.triples])

    def on_epoch_end(self, epoch, logs=None):
        p = score_split(self.scorer, self.dev, self.embeddings, self.store)
        y = one_hot(self.dev.triples).astype(np.float64)
        clipped = np.clip(y, 1e-7, 1)  # Keras' KL divergence
        metrics = binary_metrics(self.is_match, p[:, 0])
        logs.update(val_loss=float(np.mean(np.sum(clipped * np.log(clipped / np.clip(p, 1e-7, 1)), axis=1))),
                    val_binary_accuracy=metrics["accuracy"], val_balanced_accuracy=metrics["balanced_accuracy"],
                    val_roc_auc=roc_auc(self.is_match, p[:, 0]))


class LearningRate(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to each epoch's logs (and so to history.csv)."""

    def on_epoch_end(self, epoch, logs=None):
        logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class StopOnNonFinite(keras.callbacks.Callback):
    """A NaN or infinite loss ends the run with TrainingDiverged: no model or metrics are written that
    could pass for a result."""

    def _check(self, logs, where):
        for key in ("loss", "val_loss"):
            if key in (logs or {}) and not math.isfinite(float(logs[key])):
                raise TrainingDiverged(
                    f"training diverged: {key} became {float(logs[key])} {where}. Nothing was saved as a result. "
                    "Check the data's embeddings for NaN or infinity, or lower --learning-rate.")

    def on_train_batch_end(self, batch, logs=None):
        if batch % 50 == 0:  # reading the loss waits for the step; every 50 steps costs nothing
            self._check(logs, f"at step {batch + 1} of epoch {self.epoch}")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"in epoch {epoch + 1}")


class Progress(keras.callbacks.Callback):
    """A step counter every ``every_seconds`` within each epoch, for logs and CI (not a terminal)."""

    def __init__(self, epochs: int, steps_per_epoch: int, every_seconds: float = 30.0):
        super().__init__()
        self.epochs, self.steps, self.every = epochs, steps_per_epoch, every_seconds

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.start = epoch + 1, time.perf_counter()
        self.last = self.start

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            done = batch + 1
            eta = (now - self.start) / done * (self.steps - done)
            logger.info(f"  epoch {self.epoch}/{self.epochs} step {done}/{self.steps}: loss {float(logs['loss']):.4f} "
                        f"binary_accuracy {float(logs['binary_accuracy']):.4f} ({eta:.0f} s left in this epoch)")


class EpochBackup(keras.callbacks.Callback):
    """The trainer's weights and optimizer state, the epoch count and every epoch's logs, after each epoch.

    Written to ``RUN/backup/`` (``write=False``: kept in memory only, as on a multi-worker cluster's
    non-chief workers). The weights go under a new name, then the state is switched to them by an atomic
    rename, so a kill at any instant leaves a state and the weights it names; the state holds the weights'
    sha256, so a backup damaged later is known before anything of it is loaded. A damaged or missing backup
    is reported in one line and the run starts afresh (saying how many epochs that loses); weights that are
    whole but do not load stop the run with the fix.
    """

    def __init__(self, run_dir, write: bool = True):
        super().__init__()
        self.dir = Path(run_dir) / BACKUP_DIR
        self.state = self.dir / "state.json"
        self.write = write
        self.history: dict[str, list[float]] = {}
        self.train_seconds = 0.0  # all sessions' epochs together, for a run completed after a restart

    def read_state(self) -> tuple[dict | None, str]:
        """(the backup's state, "") when it can be used; (None, why) when there is one that cannot."""
        try:
            state = json.loads(self.state.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, ""
        except (OSError, UnicodeDecodeError, ValueError) as e:
            return None, f"{self.state} is unreadable ({type(e).__name__})"
        if (not isinstance(state, dict) or not isinstance(state.get("epoch"), int) or state["epoch"] < 1
                or not isinstance(state.get("weights"), str) or "/" in state["weights"]
                or not isinstance(state.get("history"), dict)):
            return None, f"{self.state} does not hold a backup's state"
        weights = self.dir / state["weights"]
        if not weights.is_file():
            return state, f"its weights {weights} are missing"
        if "sha256" in state and sha256_file(weights) != state["sha256"]:
            return state, f"its weights {weights} are damaged (their checksum does not match)"
        return state, ""

    def epochs_done(self) -> int:
        if not self.write:
            return 0
        state, why = self.read_state()
        return 0 if why or state is None else state["epoch"]

    def restore(self, trainer) -> int:
        """Load the last backup into ``trainer`` (its optimizer built first); return the epochs it had done."""
        if not self.write:
            return 0
        state, why = self.read_state()
        if why:
            lost = f"{state['epoch']} finished epoch(s)" if state else "an unknown number of finished epochs"
            print(f"warning: the backup in {self.dir} cannot be used: {why}. Starting afresh from epoch 1: "
                  f"{lost} lost", file=sys.stderr, flush=True)
            self.finish()
            return 0
        if state is None:
            return 0
        if not trainer.optimizer.built:
            trainer.optimizer.build(trainer.trainable_variables)
        weights = self.dir / state["weights"]
        try:
            with warnings.catch_warnings():  # Keras warns of each part it cannot fill, then raises
                warnings.simplefilter("ignore")
                trainer.load_weights(weights)
        except (ValueError, KeyError):  # e.g. the backup of a run that itm 0.2 started (its flat model)
            raise ConfigError(f"the backup in {self.dir} does not fit this model (an interrupted run of an earlier "
                              "version of itm): pass --overwrite to start the run afresh") from None
        except Exception as e:  # h5py and Keras raise many kinds for weights that do not fit
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DataError(f"cannot load the backup weights {weights} ({first}): pass --overwrite to start the run "
                            "afresh, or run the itm version that wrote them") from None
        self.history = state["history"]
        self.train_seconds = float(state.get("train_seconds") or 0.0)
        logger.info(f"Resuming from the backup in {self.dir}: {state['epoch']} of the epochs already done")
        return state["epoch"]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.train_seconds += time.perf_counter() - getattr(self, "epoch_start", time.perf_counter())
        for key, value in (logs or {}).items():
            self.history.setdefault(key, [])
            self.history[key] = self.history[key][:epoch] + [float(value)]
        if not self.write:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"epoch{epoch + 1}.weights.h5"
        with written_as(self.dir / name, "the epoch backup") as tmp:
            self.model.save_weights(tmp)
        state = json.dumps({"epoch": epoch + 1, "weights": name, "sha256": sha256_file(self.dir / name),
                            "history": self.history, "train_seconds": self.train_seconds})
        atomic_write(self.state, lambda f: f.write(state.encode()), "the epoch backup's state")
        for old in self.dir.glob("epoch*.weights.h5"):
            if old.name != name:
                old.unlink()

    def finish(self) -> None:
        """Remove the backup's own files (its state, weights, and temporary files), then the folder if empty."""
        for pattern in BACKUP_FILES:
            for path in self.dir.glob(pattern):
                path.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass



def write_history_csv(history: dict[str, list[float]], path: Path) -> None:
    """One row per epoch, the same columns for every objective (HISTORY_COLUMNS)."""
    keys = [k for k in HISTORY_COLUMNS if k in history] + sorted(set(history) - set(HISTORY_COLUMNS))
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["epoch", *keys])
    for i in range(len(history["loss"])):
        w.writerow([i + 1, *(f"{history[k][i]:.6g}" for k in keys)])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()), "the training history")


def keras_verbosity() -> int:
    """Keras' progress bar on a terminal and in Jupyter; one line per epoch (with Progress's step counter)
    elsewhere; nothing when the itm logger is quiet (--quiet)."""
    if log.quiet():
        return 0
    return 1 if sys.stdout.isatty() or log.in_notebook() else 2
