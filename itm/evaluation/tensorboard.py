"""TensorBoard logs in every run folder (``RUN/tensorboard/``), so that ``tensorboard --logdir runs``
compares runs side by side. Written with ``tf.summary`` (TensorBoard ships with TensorFlow).

What goes in: each epoch's scalars under the names of history.csv's columns (loss, binary_accuracy, the
dev metrics val_*, learning_rate), at step = epoch number; the run's options as a text table and as
hparams (the HParams dashboard's table of runs); and, after each evaluation, its figures as images and
its headline metrics as scalars.
"""
from __future__ import annotations

import math
from pathlib import Path

import keras
import tensorflow as tf

from ..run_files import TENSORBOARD_DIR


# Options that say where a run lives rather than what it is: no hparams (each run's own would differ).
NOT_HPARAMS = ("output_dir", "overwrite")
# The evaluation's headline metrics, logged as scalars SPLIT/NAME (the report has the rest).
HEADLINE = ("accuracy", "balanced_accuracy", "roc_auc", "average_precision")


def logdir(run_dir) -> Path:
    return Path(run_dir) / TENSORBOARD_DIR


def _writer(run_dir):
    return tf.summary.create_file_writer(str(logdir(run_dir)))


def options_table(config: dict) -> str:
    """The run's options as a Markdown table (TensorBoard's text dashboard renders it)."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in config.items())
    return "| option | value |\n|---|---|\n" + rows


class TensorBoardLog(keras.callbacks.Callback):
    """Each epoch's logs (after DevScores and LearningRate have added theirs) as scalars; the options at
    the start. A resumed run appends to the same folder; its steps carry on from the epochs done."""

    def __init__(self, run_dir, config: dict, write: bool = True):
        super().__init__()
        self.run_dir, self.config, self.write = Path(run_dir), config, write
        self.writer = None

    def on_train_begin(self, logs=None):
        if not self.write:
            return
        self.writer = _writer(self.run_dir)
        with self.writer.as_default():
            tf.summary.text("options", options_table(self.config), step=0)
            try:
                from tensorboard.plugins.hparams import api as hp
            except ImportError:  # tensorboard without its hparams plugin: the text table stands
                return
            hp.hparams({k: v for k, v in self.config.items() if k not in NOT_HPARAMS and v is not None},
                       trial_id=self.run_dir.name)
        self.writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        if self.writer is None:
            return
        with self.writer.as_default():
            for key, value in (logs or {}).items():
                value = float(value)
                if math.isfinite(value):
                    tf.summary.scalar(key, value, step=epoch + 1)
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def log_evaluation(run_dir, name: str, metrics: dict, figures: dict[str, Path], step: int = 0) -> None:
    """An evaluation of split (or folder) ``name``: its headline metrics as scalars ``NAME/METRIC`` and its
    figures (PNG files) as images ``NAME/FIGURE``."""
    writer = _writer(run_dir)
    with writer.as_default():
        for key in HEADLINE:
            if key in metrics and math.isfinite(float(metrics[key])):
                tf.summary.scalar(f"{name}/{key}", float(metrics[key]), step=step)
        for figure, path in figures.items():
            image = tf.image.decode_png(Path(path).read_bytes(), channels=3)
            tf.summary.image(f"{name}/{figure}", image[None], step=step)
    writer.close()
