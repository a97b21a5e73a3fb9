"""``itm bench``: input pipeline, training and inference speed of each training setting, as JSON.

Every setting runs in its own subprocess (so peak memory is its own), one after the other in
the same invocation, so the ratios to the naive original-style pipeline hold on a noisy
machine. This is a measurement, never a test: nothing here asserts a speed.
"""
from __future__ import annotations

import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import FAST_BATCH_SCALE

# name -> (pipeline, precision, triples per step); the model and loss are the faithful ones throughout.
SETTINGS = {
    "naive": ("faithful", "float32", 16),  # the original: decode a JPEG per triple, every epoch
    "cached": ("cached", "float32", 16),  # decode each image once, uint8 in memory
    "grouped": ("grouped", "float32", 16),  # ... and the image tower once per image
    "fast": ("grouped", "fast", 16 * FAST_BATCH_SCALE),  # ... mixed precision, 4x the triples per step (= --fast)
    "shards": ("shards", "float32", 16),  # stream TFRecord shards, each image decoded once per epoch (not by default)
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(setting: str, data_dir: str, steps: int, image_size: int = 224) -> dict:
    """Time ``steps`` training steps (after a warm-up), the input pipeline alone, and inference."""
    import keras
    import numpy as np

    from .config import fast_precision
    from .data import (load_data_dir, load_image_cache, make_cached_dataset, make_dataset, model_inputs)
    from .grouped import GroupedTriples
    from .model import build_model
    from .optim import create_optimizer

    pipeline, precision, batch_size = SETTINGS[setting]
    precision = fast_precision() if precision == "fast" else precision
    data = load_data_dir(data_dir)
    train = data.splits["train"]
    n_triples, n_images = len(train.triples), len({t.image for t in train.triples})
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    model = build_model(image_size=image_size)
    keras.mixed_precision.set_global_policy("float32")
    optimizer = create_optimizer(3e-5, 10_000, 2_000)
    model.compile(optimizer=optimizer, loss=keras.losses.KLDivergence(), metrics=[keras.metrics.BinaryAccuracy()],
                  jit_compile=False)
    out = {"setting": setting, "pipeline": pipeline, "precision": precision, "batch_size": batch_size,
           "train_triples": n_triples}

    cache = None
    if pipeline == "shards":
        shards, made = _shards_for(data_dir, out)
    elif pipeline != "faithful":
        start = time.perf_counter()
        cache = load_image_cache([train], image_size)
        out["decode_once_seconds"] = round(time.perf_counter() - start, 2)

    warmup = 3
    if pipeline == "grouped":
        images_per_batch = max(1, round(batch_size * n_images / n_triples))
        trainer = GroupedTriples(model, data, cache, optimizer, images_per_batch)
        batches = trainer.epoch_batches()
        for _ in range(warmup):
            trainer.train_step(*next(batches))
        start, examples = time.perf_counter(), 0
        for _ in range(steps):
            batch = next(batches)
            trainer.train_step(*batch)[0].numpy()
            examples += len(batch[1])
        seconds = time.perf_counter() - start
        start, n = time.perf_counter(), 0
        for _, batch in zip(range(steps * 4), trainer.epoch_batches()):
            n += len(batch[1])
        out["pipeline_examples_per_second"] = round(n / (time.perf_counter() - start), 1)
    else:
        if pipeline == "faithful":
            ds = model_inputs(make_dataset(train, data.embeddings, batch_size, shuffle=True, seed=0,
                                           image_size=image_size))
        elif pipeline == "shards":
            from .shards import make_shard_dataset

            ds = model_inputs(make_shard_dataset(shards, "train", batch_size, shuffle=True, seed=0,
                                                 image_size=image_size)).repeat()
        else:
            ds = make_cached_dataset(train, data.embeddings, cache, batch_size, shuffle=True, seed=0)
        model.fit(ds.take(warmup), epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(ds.take(steps), epochs=1, verbose=0)
        seconds = time.perf_counter() - start
        examples = steps * batch_size

        # The input pipeline alone, over more batches than training consumed.
        n = steps * 4
        start = time.perf_counter()
        for _ in ds.take(n):
            pass
        out["pipeline_examples_per_second"] = round(n * batch_size / (time.perf_counter() - start), 1)

    out["ms_per_step"] = round(seconds / steps * 1000, 1)
    out["train_examples_per_second"] = round(examples / seconds, 1)
    out["seconds_per_epoch"] = round(n_triples / (examples / seconds), 1)

    # Inference: p(match) for the triples of the test split, 64 at a time.
    texts = np.stack([data.embeddings[t.caption] for t in data.splits["test"].triples[:64]])
    x = {"image_input": np.random.default_rng(0).random((len(texts), image_size, image_size, 3), dtype=np.float32),
         "text_embedding": texts}
    model.predict(x, verbose=0)
    reps = max(1, math.ceil(256 / len(texts)))
    start = time.perf_counter()
    for _ in range(reps):
        model.predict(x, verbose=0)
    out["inference_examples_per_second"] = round(reps * len(texts) / (time.perf_counter() - start), 1)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 0)
    if pipeline == "shards" and made:
        shutil.rmtree(shards)
    return out


def _shards_for(data_dir: str, out: dict):
    """DIR/shards when written, else the train split's shards written into a temporary folder (timed)."""
    from .shards import INDEX_FILE, SHARDS_SUBDIR, read_index, write_shards

    shards = Path(data_dir) / SHARDS_SUBDIR
    if (shards / INDEX_FILE).is_file():
        read_index(shards, splits=("train",), data_dir=data_dir)  # refuses stale shards
        return shards, False
    start = time.perf_counter()
    shards = write_shards(data_dir, out=Path(tempfile.mkdtemp(prefix="itm-bench-shards-")), splits=("train",))
    out["shard_write_seconds"] = round(time.perf_counter() - start, 2)
    return shards, True


def run(data_dir: str, settings: list[str], steps: int) -> dict:
    """Measure each setting in a subprocess, then add the speed-ups over 'naive'."""
    results = []
    for setting in settings:
        print(f"measuring {setting} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "itm", "bench", "--data-dir", data_dir, "--steps", str(steps), "--one", setting]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark of {setting} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    naive = next((r for r in results if r["setting"] == "naive"), None)
    for r in results:
        if naive:
            r["speedup_vs_naive"] = round(r["train_examples_per_second"] / naive["train_examples_per_second"], 2)
        if "pipeline_examples_per_second" in r:
            r["pipeline_over_training"] = round(r["pipeline_examples_per_second"] / r["train_examples_per_second"], 1)
    return {"data_dir": data_dir, "steps": steps, "results": results}
