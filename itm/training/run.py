"""The training harness: one run, one output folder. Data, model, optimizer, ``fit``, save, evaluate.

Outputs in the run folder: config.json, model.keras, history.csv, history.png, predictions.tsv,
metrics.json, and the evaluation's metrics-test.json, calibration.json, figures and report.md.
"""
from __future__ import annotations

import json
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np

from ..data.folder import load_data_dir
from ..data.source import resolve_data_dir
from ..errors import ConfigError, TrainingDiverged
from ..files import write_json
from ..options import TrainConfig
from . import run_folder


def fast_precision() -> str:
    """Mixed precision where the hardware has fast low-precision maths: float16 on GPUs, bfloat16 on CPUs
    with AVX512-BF16 or AMX; else float32."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def make_strategy(name: str):
    """tf.distribute's engine: one device, MirroredStrategy over all GPUs of this machine, or
    MultiWorkerMirroredStrategy over the machines that TF_CONFIG names (``itm.training.multiworker``).

    Call it before any other TensorFlow op: MultiWorkerMirroredStrategy must be created first.
    """
    import tensorflow as tf

    if name == "multiworker":
        from .multiworker import check_tf_config

        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()  # waits here until every worker has started
    return tf.distribute.MirroredStrategy() if name == "mirrored" else tf.distribute.get_strategy()


def images_per_batch(config: TrainConfig, split) -> int:
    """Grouped batches: as many whole images as make about ``batch_size`` triples."""
    images = len({t.image for t in split.triples})
    return max(1, round(config.batch_size * images / len(split.triples)))


def steps_per_epoch(config: TrainConfig, split, replicas: int = 1) -> int:
    from ..data import batches

    if config.objective == "contrastive":
        steps = batches.contrastive_steps(split, config.batch_size)
        if steps == 0:
            raise ConfigError(f"the train split has {len(batches.positives_per_image(split))} images with a match, "
                              f"fewer than one batch of {config.batch_size}; lower --batch-size")
        return steps
    if config.pipeline == "grouped":
        return batches.grouped_steps(split, images_per_batch(config, split))
    if config.strategy == "multiworker":  # whole global batches only (itm.training.multiworker.epoch_shard)
        if config.batch_size % replicas:
            raise ConfigError(f"--batch-size {config.batch_size} is the global batch, split evenly across the "
                              f"{replicas} replicas of all workers: make it a multiple of that")
        steps = len(split.triples) // config.batch_size
        if steps == 0:
            raise ConfigError(f"the train split has {len(split.triples)} triples, fewer than one global batch of "
                              f"{config.batch_size}; lower --batch-size")
        return steps
    return -(-len(split.triples) // config.batch_size)


def image_store(config: TrainConfig, data, model):
    """The training images held in memory, or None (the faithful and shards pipelines read files): a frozen
    backbone's cached features (--cache-features), or every train and dev image decoded once."""
    splits = [data.splits["train"], data.splits["dev"]]
    if config.cache_features:
        from ..data.features import load_feature_cache

        return load_feature_cache(model, splits, config)
    if config.pipeline in ("cached", "grouped") or config.objective == "contrastive":
        from ..data.images import load_image_cache

        start = time.perf_counter()
        store = load_image_cache([t.image for s in splits for t in s.triples], splits[0].images_dir,
                                 config.image_size)
        print(f"Decoded {len(store.names)} images once into memory ({store.pixels.nbytes / 2**20:.0f} MiB uint8) "
              f"in {time.perf_counter() - start:.1f} s", flush=True)
        return store
    return None


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable), or None where that is unknown."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(config: TrainConfig, model, split) -> None:
    """Refuse a batch whose image activations cannot fit in memory, before training starts (an out-of-memory
    kill gives no message at all). The estimate: every layer output of the image encoder, in float32, kept
    for the backward pass, then its gradient: twice the outputs, per image of a step."""
    from ..models.classifier import parts_layers, split_model

    available = available_memory()
    if available is None:
        return
    per_image = 2 * 4 * sum(int(np.prod(layer.output.shape[1:])) for layer in parts_layers(split_model(model)[0])
                            if layer.output is not None and None not in layer.output.shape[1:])
    images = (images_per_batch(config, split) if config.pipeline == "grouped" and config.objective == "kl"
              else config.batch_size)
    need = per_image * images
    if need > available:
        raise ConfigError(f"--batch-size {config.batch_size} needs about {need / 2**30:.1f} GiB for the image tower's "
                          f"activations ({images} images a step at {config.image_size} px), more than the "
                          f"{available / 2**30:.1f} GiB this machine has free: lower --batch-size or --image-size")


def train_dataset(config: TrainConfig, data, store, first_epoch: int, extra=None):
    """The train split as the pipeline ``config`` names; each pipeline is a dataset of itm.data.batches."""
    from ..data import batches

    split = data.splits["train"]
    if config.objective == "contrastive":
        return batches.contrastive_epochs(split, data.embeddings, store, config.batch_size, config.seed,
                                          first_epoch, config.epochs, extra)
    if config.pipeline == "grouped":
        return batches.grouped_epochs(split, data.embeddings, store, images_per_batch(config, split), config.seed,
                                      first_epoch, config.epochs)
    if config.pipeline == "cached":
        return batches.cached_triples(split, data.embeddings, store, config.batch_size, config.seed, first_epoch,
                                      config.epochs, config.negatives)
    inputs = ("image_input", "caption" if config.text_tower != "precomputed" else "text_embedding")
    if config.pipeline == "shards":
        from ..data.shards import make_shard_dataset, shards_dir_of

        ds = make_shard_dataset(shards_dir_of(data.path, config.shards_dir), "train", config.batch_size,
                                shuffle=True, seed=config.seed, image_size=config.image_size)
    else:
        ds = batches.file_triples(split, data.embeddings, config.batch_size, shuffle=True, seed=config.seed,
                                  image_size=config.image_size)
    return batches.model_inputs(ds, inputs)


def _resource_exhausted():
    import tensorflow as tf

    return tf.errors.ResourceExhaustedError


def print_summary(model, width: int = 110) -> None:
    """Keras' model summary at its full width, also when stdout is not a terminal (where rich, which draws
    it, would cut it at $COLUMNS, 80 by default)."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        model.summary(line_length=width, print_fn=lambda line, **_: print(line, flush=True))
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def build_trainer(config: TrainConfig, strategy, steps: int):
    """The classifier and its Trainer, built and compiled under ``strategy`` with the original's optimizer
    scheduled over ``steps`` x epochs; returns (model, trainer)."""
    import keras

    from ..models.classifier import build_model
    from ..models.optim import create_optimizer
    from .trainer import Trainer

    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        with strategy.scope():
            model = build_model(**config.model_kwargs())
            trainer = Trainer(model, temperature=config.temperature, contrastive_weight=config.contrastive_weight,
                              hard_negatives=config.hard_negatives, soft_targets=config.soft_targets,
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


def resolve_run(config: TrainConfig) -> tuple[Path, bool]:
    """Fill in what the options left open (data folder, run folder, seed, precision), apply the run-folder
    policy, and write config.json; returns the run folder and whether it resumes an interrupted run."""
    out = Path(config.output_dir) if config.output_dir else run_folder.default_output_dir(config.preset)
    resuming = run_folder.open_run_folder(out, config.overwrite)
    data_dir, origin = resolve_data_dir(config.data_dir)
    print(origin, flush=True)
    saved = run_folder.saved_config(out) if resuming else {}
    if config.seed is None:
        config.seed = saved.get("seed", random.SystemRandom().randrange(2**31))
        how = "the interrupted run's" if resuming else "random; pass --seed to choose one"
    else:
        how = "from --seed"
    if config.precision == "auto":
        config.precision = fast_precision()
    config.data_dir, config.output_dir = str(Path(data_dir).resolve()), str(out)
    if resuming:
        run_folder.check_restart(out, config.to_dict())
    print(f"Seed: {config.seed} ({how}); precision: {config.precision}; run folder: {out}", flush=True)
    return out, resuming


def train(config: TrainConfig) -> Path:
    """Train, save and evaluate one run as ``config`` says; returns the run folder (which, under
    --strategy multiworker, only the chief writes)."""
    out, _ = resolve_run(config)
    print("Checking the data folder ...", flush=True)
    data = load_data_dir(config.data_dir, limit=config.limit, need_embeddings=config.text_tower == "precomputed")
    for split in data.splits.values():
        print(f"  {split.name:5s} {len(split.triples):6d} triples ({split.n_match} match, "
              f"{len(split.triples) - split.n_match} no-match), {len({t.image for t in split.triples})} images")
    if config.pipeline == "shards":  # checked before training: missing or stale shards are an error
        from ..data.shards import read_index, shards_dir_of

        shards = shards_dir_of(config.data_dir, config.shards_dir)
        index = read_index(shards, splits=("train", "dev"), data_dir=config.data_dir)
        print(f"  train streams from {shards} ({index['splits']['train']['shards']} TFRecord shards)")
    from ..data.extra_captions import load_extra_captions

    extra = load_extra_captions(config.extra_captions, config.data_dir, data.splits["train"])
    if extra:
        extra, vectors = extra
        data.embeddings.update(vectors)

    import keras

    strategy = make_strategy(config.strategy)
    chief = strategy.extended.should_checkpoint  # False only on a multi-worker cluster's other workers
    steps = steps_per_epoch(config, data.splits["train"], strategy.num_replicas_in_sync)
    if chief:
        write_json(Path(out) / "config.json", config.to_dict())
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")  # tf.data shuffles itself

    from ..models.scorer import Scorer
    from . import callbacks as cb

    print(f"BUILDING model (preset {config.preset})")
    model, trainer = build_trainer(config, strategy, steps)
    print_summary(model)
    if not config.cache_features:
        check_memory(config, model, data.splits["train"])
    store = image_store(config, data, model)

    backup = cb.EpochBackup(out, write=chief)
    done = backup.restore(trainer)
    callbacks = [cb.DevScores(Scorer(model), data.splits["dev"], data.embeddings, store), cb.LearningRate(),
                 cb.StopOnNonFinite(), backup]
    if cb.keras_verbosity() == 2:
        callbacks.insert(0, cb.Progress(config.epochs, steps))
    print(f"TRAINING model: {config.epochs} epochs x {steps} steps of {config.batch_size} "
          f"({config.objective} objective, {config.pipeline} pipeline, {config.precision})", flush=True)
    start = time.perf_counter()
    try:
        if config.strategy == "multiworker":
            from .multiworker import fit_multiworker

            fit_multiworker(trainer, strategy, data.splits["train"], data.embeddings, config, steps, done, callbacks)
        elif done < config.epochs:
            train_ds = train_dataset(config, data, store, done, extra)
            drawn = config.objective == "contrastive" or config.pipeline in ("grouped", "cached")
            trainer.fit(train_ds, epochs=config.epochs, initial_epoch=done, steps_per_epoch=steps if drawn else None,
                        callbacks=callbacks, verbose=cb.keras_verbosity())
    except (MemoryError, _resource_exhausted()) as e:
        raise TrainingDiverged(f"training ran out of memory ({type(e).__name__}) with --batch-size {config.batch_size}: "
                               "lower --batch-size or --image-size; the last finished epoch's backup is kept in "
                               f"{Path(out) / 'backup'}") from None
    train_seconds = time.perf_counter() - start
    print(f"model trained in {train_seconds:.1f} s", flush=True)

    if not chief:
        print("This worker is done; the chief writes and evaluates the run.", flush=True)
        return out
    model.compile(optimizer=trainer.optimizer, loss=keras.losses.KLDivergence(),
                  metrics=[keras.metrics.BinaryAccuracy()])  # saved with the model, as the original's
    model.save(Path(out) / "model.keras")
    cb.write_history_csv(backup.history, Path(out) / "history.csv")
    from ..evaluation.plots import plot_history

    plot_history(backup.history, Path(out) / "history.png")
    backup.finish()
    finish_run(model, data, config, Path(out), train_seconds)
    return Path(out)


def finish_run(model, data, config: TrainConfig, out: Path, train_seconds: float) -> dict:
    """Evaluate a trained model on test as the original did, and write metrics.json and report.md."""
    from ..evaluation.evaluate import evaluate_model
    from ..evaluation.report import write_report

    results = evaluate_model(model, data, out, splits=("test",), seed=config.seed, original_printout=True)
    metrics = dict(results["test"])
    metrics.update({
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / config.epochs,
        "train_examples_per_second": len(data.splits["train"].triples) * config.epochs / train_seconds,
        "parameters": int(model.count_params()),
        "config": config.to_dict(),
    })
    write_json(out / "metrics.json", metrics)
    write_report(out)
    print(f"Run written to {out}/ (model.keras, metrics.json, report.md, predictions.tsv, history and figures)")
    return json.loads((out / "metrics.json").read_text())
