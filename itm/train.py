"""The training harness: data, model, optimizer, fit, save, evaluate. One run, one output folder.

Outputs in the run folder: model.keras, history.csv, history.png, predictions.tsv, metrics.json,
and the evaluation's metrics-test.json, calibration.json, figures and report.md.
"""
from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

from .config import ConfigError, TrainConfig, resolve_data_dir
from .data import load_data_dir, load_image_cache, make_cached_dataset, make_dataset, model_inputs
from .extra_captions import load_extra_captions
from .resume import BACKUP_DIR, EpochBackup


def _callbacks(epochs: int, steps_per_epoch: int, every_seconds: float = 30.0) -> list:
    import keras

    class LearningRateLogger(keras.callbacks.Callback):
        """Adds the optimizer's current learning rate to each epoch's logs (and so to history.csv)."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["learning_rate"] = float(self.model.optimizer.learning_rate)

    class ProgressLogger(keras.callbacks.Callback):
        """A progress line every ``every_seconds`` when stdout is not a terminal (logs, CI), where
        Keras' progress bar stays silent until the end of each epoch."""

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.start = epoch + 1, time.perf_counter()
            self.last = self.start

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if now - self.last >= every_seconds:
                self.last = now
                done = batch + 1
                eta = (now - self.start) / done * (steps_per_epoch - done)
                print(f"  epoch {self.epoch}/{epochs} step {done}/{steps_per_epoch}: loss {logs['loss']:.4f} "
                      f"binary_accuracy {logs['binary_accuracy']:.4f} ({eta:.0f} s left in this epoch)", flush=True)

    return [LearningRateLogger()] + ([] if sys.stdout.isatty() else [ProgressLogger()])


def make_strategy(name: str):
    """tf.distribute's engine: one device, MirroredStrategy over all GPUs of this machine, or
    MultiWorkerMirroredStrategy over the machines that TF_CONFIG names (see itm/multiworker.py).

    Call it before any other TensorFlow op: MultiWorkerMirroredStrategy must be created first.
    """
    import tensorflow as tf

    if name == "multiworker":
        from .multiworker import check_tf_config

        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()  # waits here until every worker has started
    return tf.distribute.MirroredStrategy() if name == "mirrored" else tf.distribute.get_strategy()


def default_output_dir(preset: str) -> Path:
    return Path("runs") / f"{preset}-{datetime.now():%Y%m%d-%H%M%S}"


def write_history_csv(history: dict[str, list[float]], path: Path) -> None:
    first = ("loss", "binary_accuracy", "val_loss", "val_binary_accuracy")
    keys = [k for k in first if k in history] + sorted(k for k in history if k not in first and k != "learning_rate")
    keys += ["learning_rate"] if "learning_rate" in history else []
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", *keys])
        for i in range(len(history["loss"])):
            w.writerow([i + 1, *(f"{history[k][i]:.6g}" for k in keys)])


def train(config: TrainConfig) -> Path:
    """Train, save and evaluate one run as ``config`` says; returns the run folder (which, under
    --strategy multiworker, only the chief writes)."""
    data_dir, origin = resolve_data_dir(config.data_dir)
    print(origin, flush=True)
    out = Path(config.output_dir) if config.output_dir else default_output_dir(config.preset)
    if config.seed is None and (out / BACKUP_DIR).is_dir() and (out / "config.json").is_file():
        config.seed = json.loads((out / "config.json").read_text()).get("seed")  # resuming: same draws
    if config.seed is None:
        config.seed = random.SystemRandom().randrange(2**31)  # recorded, so the run can be repeated
    config.data_dir, config.output_dir = str(data_dir), str(out)

    print("Checking the data folder ...", flush=True)
    from .model import RAW_TEXT_TOWERS, build_model
    from .optim import create_optimizer

    data = load_data_dir(data_dir, limit=config.limit, need_embeddings=config.text_tower not in RAW_TEXT_TOWERS)
    for split in data.splits.values():
        print(f"  {split.name:5s} {len(split.triples):6d} triples ({split.n_match} match, "
              f"{len(split.triples) - split.n_match} no-match), {len({t.image for t in split.triples})} images")
    shards = None
    if config.pipeline == "shards":  # checked before anything is written: missing or stale shards are an error
        from .shards import read_index, shards_dir_of

        shards = shards_dir_of(data_dir, config.shards_dir)
        shard_index = read_index(shards, splits=("train", "dev"), data_dir=data_dir)
        print(f"  train and dev stream from {shards} ({shard_index['splits']['train']['shards']} + "
              f"{shard_index['splits']['dev']['shards']} TFRecord shards)")

    import keras

    strategy = make_strategy(config.strategy)
    # False only on a worker of a multi-worker cluster other than the chief: it writes nothing.
    chief = strategy.extended.should_checkpoint
    if config.strategy == "multiworker" and config.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"--batch-size {config.batch_size} is the global batch, split evenly across the "
                          f"{strategy.num_replicas_in_sync} replicas of all workers: make it a multiple of that")
    if chief:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    # Keras warns that fit(shuffle=True) is ignored for a tf.data input; the pipeline shuffles itself.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")

    keras.utils.set_random_seed(config.seed)
    print(f"BUILDING model (preset {config.preset})")
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        with strategy.scope():
            model = build_model(**config.model_kwargs())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.summary(line_length=110)

    train_split, dev_split = data.splits["train"], data.splits["dev"]
    extra = load_extra_captions(config.extra_captions, data_dir, train_split)
    if extra:
        extra, vectors = extra
        data.embeddings.update(vectors)
    cache = None
    if config.pipeline in ("cached", "grouped") or config.objective == "contrastive":
        start = time.perf_counter()
        cache = load_image_cache([train_split, dev_split], config.image_size)
        print(f"Decoded {len(cache.names)} images once into memory ({cache.pixels.nbytes / 2**20:.0f} MiB uint8) "
              f"in {time.perf_counter() - start:.1f} s", flush=True)

    train_images = len({t.image for t in train_split.triples})
    # grouped: as many images per step as make about batch_size triples, so the step count (and so the
    # learning-rate schedule) stays the original's.
    images_per_batch = max(1, round(config.batch_size * train_images / len(train_split.triples)))
    if config.objective == "contrastive":
        steps_per_epoch = len({t.image for t in train_split.triples if t.match}) // config.batch_size
    elif config.pipeline == "grouped":
        steps_per_epoch = math.ceil(train_images / images_per_batch)
    elif config.strategy == "multiworker":  # whole global batches only (itm/multiworker.py: epoch_shard)
        steps_per_epoch = len(train_split.triples) // config.batch_size
        if steps_per_epoch == 0:
            raise ConfigError(f"the train split has {len(train_split.triples)} triples, fewer than one global "
                              f"batch of {config.batch_size}; lower --batch-size")
    else:
        steps_per_epoch = math.ceil(len(train_split.triples) / config.batch_size)
    num_train_steps = steps_per_epoch * config.epochs
    with strategy.scope():
        optimizer = create_optimizer(init_lr=config.learning_rate, num_train_steps=num_train_steps,
                                     num_warmup_steps=int(config.warmup_fraction * num_train_steps),
                                     global_clipnorm=config.clipnorm or None,
                                     lr_multipliers=({"^minilm/": config.text_learning_rate / config.learning_rate}
                                                     if config.text_learning_rate else None))
        if config.precision == "mixed_float16":
            # float16 gradients underflow without loss scaling; compile adds it only for a model whose own
            # dtype policy is mixed_float16, which a functional model built under that global policy is not.
            # fit and the custom loops (which scale the loss with optimizer.scale_loss) all step this one.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # XLA (jit_compile, --xla) made this model's CPU step about 3x slower here, so it is off by default.
        model.compile(optimizer=optimizer, loss=keras.losses.KLDivergence(),
                      metrics=[keras.metrics.BinaryAccuracy()], jit_compile=config.xla)
    backup = EpochBackup(out)

    print(f"TRAINING model: {config.epochs} epochs x {steps_per_epoch} steps of {config.batch_size} "
          f"({config.objective} objective)", flush=True)
    start = time.perf_counter()
    if config.objective == "contrastive":
        from .grouped import fit_contrastive

        history = fit_contrastive(model, data, cache, optimizer, config.epochs, config.batch_size,
                                  temperature=config.temperature, contrastive_weight=config.contrastive_weight,
                                  seed=config.seed, backup=backup, extra=extra,
                                  hard_negatives=config.hard_negatives, soft_targets=config.soft_targets)
    elif config.pipeline == "grouped":
        from .grouped import fit_grouped_triples

        print(f"  image-grouped batches: {images_per_batch} images with all their triples per step", flush=True)
        history = fit_grouped_triples(model, data, cache, optimizer, config.epochs, images_per_batch,
                                      seed=config.seed, backup=backup)
    elif config.objective == "kl":
        if config.negatives != "fixed" and cache is None:
            raise ValueError("negatives='redraw' needs the cached pipeline (pipeline='cached')")
        inputs = tuple(model.input)  # image_input, and text_embedding or caption

        def batches(split, batch_size, shuffle=False):
            """The split's (inputs, one-hot label) batches; shuffled ones get the run's seed and negatives."""
            if shards is not None:
                from .shards import make_shard_dataset

                return model_inputs(make_shard_dataset(shards, split.name, batch_size, shuffle=shuffle,
                                                       seed=config.seed, image_size=config.image_size,
                                                       index=shard_index), inputs)
            if cache is not None:
                return make_cached_dataset(split, data.embeddings, cache, batch_size, shuffle=shuffle,
                                           seed=config.seed, negatives=config.negatives if shuffle else "fixed")
            return model_inputs(make_dataset(split, data.embeddings, batch_size, shuffle=shuffle, seed=config.seed,
                                             image_size=config.image_size), inputs)

        dev_ds = batches(dev_split, config.batch_size)
        if config.strategy == "multiworker":
            from .multiworker import fit_multiworker

            history = fit_multiworker(model, strategy, batches, train_split, dev_ds, config.epochs,
                                      config.batch_size, config.seed, backup=backup if chief else None)
        else:
            train_ds = batches(train_split, config.batch_size, shuffle=True)
            earlier = backup.history()  # epochs done before an interruption, if any
            callbacks = _callbacks(config.epochs, steps_per_epoch) + [
                backup.history_saver(earlier), keras.callbacks.BackupAndRestore(backup_dir=str(backup.dir))]
            fit = model.fit(train_ds, validation_data=dev_ds, epochs=config.epochs, callbacks=callbacks,
                            verbose=1 if sys.stdout.isatty() else 2)
            done = config.epochs - len(fit.history.get("loss", []))
            history = {k: [float(v) for v in earlier.get(k, [])[:done]] + [float(v) for v in vs]
                       for k, vs in fit.history.items()}
    else:
        raise ValueError(f"unknown objective {config.objective!r}; choose from kl, contrastive")
    train_seconds = time.perf_counter() - start
    print(f"model trained in {train_seconds:.1f} s", flush=True)

    if not chief:
        print("This worker is done; the chief writes and evaluates the run.", flush=True)
        return out
    backup.finish()
    model.save(out / "model.keras")
    write_history_csv(history, out / "history.csv")
    from .plots import plot_history

    plot_history(history, out / "history.png")

    if config.strategy == "multiworker":
        # The chief evaluates alone: a model built under the strategy would wait in predict for the other
        # workers, so it scores the saved model, loaded outside the strategy.
        model = keras.saving.load_model(out / "model.keras")
    finish_run(model, data, config, out, train_seconds)
    return out


def finish_run(model, data, config: TrainConfig, out: Path, train_seconds: float) -> dict:
    """Evaluate a trained model on test as the original did, and write metrics.json and report.md."""
    from .evaluate import evaluate_model
    from .report import write_report

    results = evaluate_model(model, data, out, splits=("test",), batch_size=config.batch_size,
                             image_size=config.image_size, seed=config.seed, original_printout=True)
    metrics = dict(results["test"])
    metrics.update({
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / config.epochs,
        "train_examples_per_second": len(data.splits["train"].triples) * config.epochs / train_seconds,
        "parameters": int(model.count_params()),
        "config": config.to_dict(),
    })
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(out)
    print(f"Run written to {out}/ (model.keras, metrics.json, report.md, predictions.tsv, history and figures)")
    return metrics
