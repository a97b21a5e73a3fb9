"""The training harness: one run, one output folder. Data, model, optimizer, ``fit``, save, evaluate.

Outputs in the run folder: config.json, environment.json, model.keras, model.json (its architecture),
history.csv, history.png, predictions.tsv, metrics.json, README.md (the model card), TensorBoard logs
(tensorboard/), and the evaluation's metrics-test.json, calibration.json, figures and report.md.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..data.batches import positives_per_image
from ..data.extra_captions import load_extra_captions
from ..data.folder import load_data_dir
from ..data.pipelines import Pipeline, pipeline_for
from ..data.source import resolve_data_dir
from ..errors import ConfigError, DataError, OutOfMemory
from ..evaluation.evaluate import evaluate_model
from ..evaluation.plots import plot_history
from ..evaluation.report import write_report
from ..figures import wanted as figures_wanted
from ..files import write_json, written_as
from ..log import logger
from ..models.classifier import build_model
from ..models.optim import create_optimizer
from ..models.scorer import Scorer
from ..options import TrainConfig, finish_config
from ..run_files import record_run
from . import callbacks as cb
from . import run_folder
from .model_card import write_model_card
from .run_lock import RunLock
from .multiworker import check_tf_config, fit_multiworker
from .provenance import ENVIRONMENT_FILE, environment
from ..evaluation.tensorboard import TensorBoardLog
from .trainer import Trainer


def make_strategy(name: str):
    """tf.distribute's engine: one device, MirroredStrategy over all GPUs of this machine, or
    MultiWorkerMirroredStrategy over the machines that TF_CONFIG names (``itm.training.multiworker``).

    Call it before any other TensorFlow op: MultiWorkerMirroredStrategy must be created first.
    """
    if name == "multiworker":
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()  # waits here until every worker has started
    return tf.distribute.MirroredStrategy() if name == "mirrored" else tf.distribute.get_strategy()


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable), or None where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(pipeline: Pipeline, model, split) -> None:
    """Refuse a batch whose image activations cannot fit in memory, before training starts (an out-of-memory
    kill gives no message at all). The estimate: every layer output of the image encoder, in float32, kept
    for the backward pass, then its gradient: twice the outputs, per image of a step."""
    config = pipeline.config
    available = available_memory()
    if available is None:
        return
    per_image = 2 * 4 * sum(int(np.prod(layer.output.shape[1:])) for layer in model.flat_layers(model.image_encoder)
                            if layer.output is not None and None not in layer.output.shape[1:])
    need = pipeline.memory_needed(split, per_image)
    if need > available:
        raise ConfigError(f"--batch-size {config.batch_size} needs about {need / 2**30:.1f} GiB for the image tower's "
                          f"activations ({pipeline.images_per_step(split)} images a step at {config.image_size} px), "
                          f"more than the {available / 2**30:.1f} GiB this machine has free: lower --batch-size or "
                          "--image-size")


def print_summary(model, width: int = 110) -> None:
    """Keras' model summary at its full width, also when stdout is not a terminal (where rich, which draws
    it, would cut it at $COLUMNS, 80 by default)."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        model.summary(line_length=width, print_fn=lambda line, **_: logger.info(line))
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def build_trainer(config: TrainConfig, strategy, steps: int):
    """The classifier and its Trainer, built and compiled under ``strategy`` with the original's optimizer
    scheduled over ``steps`` x epochs; returns (model, trainer)."""
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        with strategy.scope():
            model = build_model(config.model)
            trainer = Trainer(model, temperature=config.temperature, contrastive_weight=config.contrastive_weight,
                              hard_negatives=config.hard_negatives, soft_targets=config.soft_targets,
                              head_negatives=config.head_negatives,
                              cached_features=config.cache_features)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    total = steps * config.epochs
    with strategy.scope():
        optimizer = create_optimizer(init_lr=config.learning_rate, num_train_steps=total,
                                     num_warmup_steps=int(config.warmup_fraction * total),
                                     global_clipnorm=config.clipnorm or None,
                                     lr_multipliers=({"^minilm/": config.text_learning_rate / config.learning_rate}
                                                     if config.text_learning_rate else None))
        if config.precision == "mixed_float16":
            # float16 gradients underflow without loss scaling; compile adds it only for a model whose own
            # dtype policy is mixed_float16, which a functional model built under the global policy is not.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        trainer.compile(optimizer=optimizer, jit_compile=config.xla)
    return model, trainer


def resolve_run(config: TrainConfig, origins: dict | None = None) -> tuple[TrainConfig, Path, bool]:
    """Apply the run-folder policy, finish the config (``itm.options.finish_config``: data folder, seed,
    precision) and check it against an interrupted run's; returns the finished config, the run folder and
    whether it resumes an interrupted run. ``origins``: where an option came from when not from its flag
    (e.g. ``{"seed": "--config RUN/config.json"}``), for the lines that say so."""
    origins = origins or {}
    out = Path(config.output_dir) if config.output_dir else run_folder.default_output_dir(config.preset)
    data_dir, origin = resolve_data_dir(config.data_dir, origins.get("data_dir", "--data-dir"))
    run_folder.check_not_in_data(out, data_dir)
    resuming = run_folder.open_run_folder(out, config.overwrite)
    logger.info(origin)
    saved = run_folder.saved_config(out) if resuming else {}
    config, chosen = finish_config(config, data_dir, out, saved_seed=saved.get("seed"),
                                   seed_origin=origins.get("seed", "--seed"))
    if resuming:
        run_folder.check_restart(out, config.to_dict())
    logger.info(f"{chosen}; run folder: {out}")
    logger.debug(f"options: {json.dumps(config.to_dict())}")
    return config, out, resuming


def train(config: TrainConfig, origins: dict | None = None) -> Path:
    """Train, save and evaluate one run as ``config`` says; returns the run folder (which, under
    --strategy multiworker, only the chief writes). The folder is held for the whole run: a second run
    into it is refused (``itm.training.run_lock``). ``origins``: as ``resolve_run``'s."""
    out = Path(config.output_dir) if config.output_dir else run_folder.default_output_dir(config.preset)
    config = config.replace(output_dir=str(out))
    run_folder.check_output_dir(out)  # before the lock file goes in: a user's folder is refused untouched
    with RunLock(out):
        return _train(config, origins)


def _train(config: TrainConfig, origins: dict | None = None) -> Path:
    config, out, _ = resolve_run(config, origins)
    pipeline = pipeline_for(config)
    logger.info("Checking the data folder ...")
    data = load_data_dir(config.data_dir, limit=config.limit, need_embeddings=config.text_tower == "precomputed")
    for split in data.splits.values():
        logger.info(f"  {split.name:5s} {len(split.triples):6d} triples ({split.n_match} match, "
                    f"{len(split.triples) - split.n_match} no-match), {len({t.image for t in split.triples})} images")
    pipeline.check_ready(config.data_dir)  # before training: missing or stale shards are an error
    extra = load_extra_captions(config.extra_captions, config.data_dir, data.splits["train"])
    if extra:
        extra, vectors = extra
        data.embeddings.update(vectors)
    images = len(positives_per_image(data.splits["train"]))
    if config.objective.name == "contrastive" and config.strategy == "default" and 1 < images < config.batch_size:
        # e.g. the retrieval preset's 256 on the 240 photos of the demo data: one batch of them all, not an error
        logger.warning(f"note: the train split has {images} images with a match, fewer than a batch of "
                       f"{config.batch_size}: training on batches of {images} (--batch-size {images})")
        config = config.replace(batch_size=images)
        pipeline = pipeline_for(config)
    if run_folder.is_trained(Path(out)) and config.strategy != "multiworker":
        return complete_run(config, data, Path(out))

    strategy = make_strategy(config.strategy)
    chief = strategy.extended.should_checkpoint  # False only on a multi-worker cluster's other workers
    steps = pipeline.steps_per_epoch(data.splits["train"], strategy.num_replicas_in_sync)
    if chief:
        record_run(Path(out))
        write_json(Path(out) / "config.json", config.to_dict(), "the run's config")
        write_json(Path(out) / "model.json", config.model.to_json(), "the run's architecture")
        write_json(Path(out) / ENVIRONMENT_FILE, environment(config.to_dict(), data), "the run's environment")
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")  # tf.data shuffles itself

    logger.info(f"BUILDING model (preset {config.preset})")
    model, trainer = build_trainer(config, strategy, steps)
    print_summary(model)
    if not config.cache_features:
        check_memory(pipeline, model, data.splits["train"])
    store = pipeline.image_store(data, model)

    backup = cb.EpochBackup(out, write=chief)
    done = backup.restore(trainer)
    callbacks = [cb.DevScores(Scorer(model), data.splits["dev"], data.embeddings, store), cb.LearningRate(),
                 cb.StopOnNonFinite(), TensorBoardLog(out, config.to_dict(), write=chief), backup]
    if cb.keras_verbosity() == 2:
        callbacks.insert(0, cb.Progress(config.epochs, steps))
    logger.info(f"TRAINING model: {config.epochs} epochs x {steps} steps of {config.batch_size} "
                f"({config.objective.name} objective, {config.pipeline} pipeline, {config.precision})")
    start = time.perf_counter()
    try:
        if config.strategy == "multiworker":
            fit_multiworker(trainer, strategy, pipeline, data.splits["train"], data.embeddings, steps, done, callbacks)
        elif done < config.epochs:
            trainer.fit(pipeline.dataset(data, store, done, extra), epochs=config.epochs, initial_epoch=done,
                        steps_per_epoch=steps if pipeline.drawn else None, callbacks=callbacks,
                        verbose=cb.keras_verbosity())
    except (MemoryError, tf.errors.ResourceExhaustedError) as e:
        raise OutOfMemory(f"training ran out of memory ({type(e).__name__}) with --batch-size {config.batch_size}: "
                               "lower --batch-size or --image-size; the last finished epoch's backup is kept in "
                               f"{Path(out) / 'backup'}") from None
    train_seconds = time.perf_counter() - start
    logger.info(f"model trained in {train_seconds:.1f} s")

    if not chief:
        logger.info("This worker is done; the chief writes and evaluates the run.")
        return out
    model.compile(optimizer=trainer.optimizer, loss=keras.losses.KLDivergence(),
                  metrics=[keras.metrics.BinaryAccuracy()])  # saved with the model, as the original's
    cb.write_history_csv(backup.history, Path(out) / "history.csv")
    if figures_wanted():
        plot_history(backup.history, Path(out) / "history.png")
    with written_as(Path(out) / "model.keras", "the model") as tmp:  # whole or absent: a later run completes from it
        model.save(tmp)
    finish_run(model, data, config, Path(out), train_seconds)
    backup.finish()
    return Path(out)


def complete_run(config: TrainConfig, data, out: Path) -> Path:
    """A run killed after saving model.keras but before its evaluation was written: evaluate the saved model
    and write the rest (metrics, report; history from the backup where it is left), instead of training again."""
    logger.info(f"{out / 'model.keras'} was saved but the run's evaluation did not finish: completing the run from "
                "the saved model (not training again)")
    record_run(out)
    backup = cb.EpochBackup(out)
    state, why = backup.read_state()
    try:
        model = run_folder.SavedRun(out).load_model()
    except DataError as e:
        raise DataError(f"{e}; pass --overwrite to train the run afresh") from None
    seconds = None
    if state is not None and not why:
        seconds = state.get("train_seconds")
        cb.write_history_csv(state["history"], out / "history.csv")
        if figures_wanted():
            plot_history(state["history"], out / "history.png")
    finish_run(model, data, config, out, seconds)
    backup.finish()
    return out


def finish_run(model, data, config: TrainConfig, out: Path, train_seconds: float | None) -> dict:
    """Evaluate a trained model on test as the original did, and write metrics.json and report.md."""
    results = evaluate_model(model, data, out, splits=("test",), seed=config.seed, original_printout=True,
                             run_config=config.to_dict())
    metrics = dict(results["test"])
    known = bool(train_seconds)  # None: a completed run whose backup did not keep its training time
    metrics.update({
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / config.epochs if known else None,
        "train_examples_per_second": len(data.splits["train"].triples) * config.epochs / train_seconds if known else None,
        "parameters": int(model.count_params()),
        "config": config.to_dict(),
    })
    write_json(out / "metrics.json", metrics, "the run's metrics")
    write_report(out)
    write_model_card(out)
    print(f"Run written to {out}/ (model.keras, README.md, metrics.json, report.md, predictions.tsv, history and "
          "figures)")
    return json.loads((out / "metrics.json").read_text())
