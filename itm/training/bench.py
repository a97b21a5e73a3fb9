"""``itm bench``: training, input-pipeline and inference speed of each setting, as JSON.

A setting is a set of ``itm train`` options (``SETTINGS``), resolved, checked, fed and built by the same
code as a training run (``itm.options``, ``itm.data.pipelines``, ``itm.training.run``), so a figure here
is the speed of that command. Every setting runs in its own subprocess (so peak memory is its own), one after the other
in the same invocation, so the ratios to ``naive`` hold on a noisy machine. The report also says which CPU
and which precision each figure comes from, and the achieved GFLOP/s against the machine's float32 peak
(nominal, from its clock and vector width, and measured, by a large matrix product). A measurement,
never a test: nothing here asserts a speed.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..data.folder import load_data_dir
from ..data.pipelines import pipeline_for
from ..data.shards import INDEX_FILE, SHARDS_SUBDIR, write_shards
from ..log import logger
from ..options import finish_config, resolve_config
from ..tfenv import onednn_enabled, onednn_line
from .run import build_trainer

# name -> itm train options; the model and loss are the faithful ones except for best-cpu.
SETTINGS = {
    "naive": {},  # the original: decode a JPEG per triple, every epoch
    "cached": {"pipeline": "cached"},  # decode each image once, uint8 in memory
    "grouped": {"pipeline": "grouped"},  # ... and the image tower once per image
    "fast": {"fast": True},  # ... 4x the triples per step at 4x the rate, the machine's fast precision (= --fast)
    "shards": {"pipeline": "shards"},  # stream TFRecord shards, each image decoded once per epoch
    "best-cpu": {"preset": "best-cpu"},  # the from-scratch preset's own step
}


def cpu_info() -> dict:
    """The CPU's model name, vector extensions that matter here, cores and clock (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {"model": "unknown", "cores": os.cpu_count()}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": fields.get("model name", "unknown"), "cores": len(os.sched_getaffinity(0)),
            "mhz": float(fields.get("cpu MHz", 0) or 0), "features": [f for f in wanted if f in flags]}


def nominal_peak_gflops(info: dict) -> float:
    """cores x clock x float32 FLOPs per cycle: two FMA units of 16 lanes (AVX-512) or 8 (AVX2). A ceiling:
    some AVX-512 CPUs split each 512-bit FMA in two, which halves it."""
    lanes = 16 if "avx512f" in info.get("features", []) else 8
    return info.get("cores", 1) * info.get("mhz", 0) / 1000 * 2 * lanes * 2


def measured_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """float32 GFLOP/s of a large matrix product through TensorFlow (oneDNN): what dense maths reaches here."""
    a = tf.random.uniform((n, n))
    b = tf.random.uniform((n, n))
    (a @ b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        c = a @ b
    c.numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def forward_flops(model) -> float:
    """Multiply-adds x 2 of a model's convolutions and dense layers, per example (the bulk of its cost)."""
    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            out = layer.output.shape  # (B,H,W,C)
            k = math.prod(layer.kernel.shape[:-1]) if isinstance(layer, keras.layers.Conv2D) else \
                math.prod(layer.kernel.shape[:2])
            total += 2 * out[1] * out[2] * out[3] * k
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * math.prod(layer.kernel.shape) * math.prod(layer.output.shape[1:-1] or (1,))
    return float(total)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(setting: str, data_dir: str, steps: int, precision: str | None = None) -> dict:
    """Time ``steps`` training steps of ``setting`` (after a warm-up), the input pipeline alone, and inference."""
    options = dict(SETTINGS[setting])
    preset = options.pop("preset", "faithful")
    if precision:
        options["precision"] = precision
    config = resolve_config(preset, data_dir=data_dir, seed=0, **options)
    data = load_data_dir(data_dir)
    train = data.splits["train"]
    made_shards, shard_seconds = None, None
    if config.pipeline == "shards":
        made_shards, shard_seconds = _shards_for(data_dir)
        config = resolve_config(preset, data_dir=data_dir, seed=0, **options,
                                shards_dir=str(made_shards or Path(data_dir) / SHARDS_SUBDIR))
    config, _ = finish_config(config, data_dir)
    pipeline = pipeline_for(config)
    out = {"setting": setting, "options": SETTINGS[setting], "pipeline": config.pipeline,
           "precision": config.precision, "batch_size": config.batch_size, "train_triples": len(train.triples)}
    if shard_seconds is not None:
        out["shard_write_seconds"] = shard_seconds
    steps_per_epoch = pipeline.steps_per_epoch(train)
    model, trainer = build_trainer(config, tf.distribute.get_strategy(), steps_per_epoch)
    start = time.perf_counter()
    store = pipeline.image_store(data, model)
    if store is not None:
        out["decode_once_seconds"] = round(time.perf_counter() - start, 2)
    ds = pipeline.dataset(data, store, epochs=10**6).repeat()  # the drawn pipelines' stream: long enough for any --steps

    warmup = 3
    trainer.fit(ds.take(warmup), epochs=1, verbose=0)
    start = time.perf_counter()
    trainer.fit(ds.take(steps), epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    epoch_seconds = seconds / steps * steps_per_epoch
    out["ms_per_step"] = round(seconds / steps * 1000, 1)
    out["steps_per_epoch"] = steps_per_epoch
    out["seconds_per_epoch"] = round(epoch_seconds, 1)
    out["train_triples_per_second"] = round(len(train.triples) / epoch_seconds, 1)

    # An epoch's work: the image tower forward and backward (about 3x the forward) once per image it runs
    # on (every triple for the triples pipelines, every image for the grouped ones), the rest per pair.
    images = pipeline.images_per_epoch(train)
    flops = 3 * (images * forward_flops(model.image_encoder) + len(train.triples) * (forward_flops(model.text_encoder)
                                                                                     + forward_flops(model.head)))
    out["train_gflop_per_epoch"] = round(flops / 1e9, 1)
    out["achieved_gflops"] = round(flops / epoch_seconds / 1e9, 1)

    # The input pipeline alone, over more batches than training consumed.
    n = 0
    start = time.perf_counter()
    for _, labels in ds.take(steps * 4):
        n += int(labels.shape[0])
    out["pipeline_triples_per_second"] = round(n / (time.perf_counter() - start), 1)
    out["pipeline_over_training"] = round(out["pipeline_triples_per_second"] / out["train_triples_per_second"], 1)

    # Inference: p(match) of 64 pairs at a time.
    texts = np.stack([data.embeddings[t.caption] for t in data.splits["test"].triples[:64]])
    size = config.image_size
    x = {"image_input": np.random.default_rng(0).random((len(texts), size, size, 3), dtype=np.float32),
         "text_embedding": texts}
    model.predict(x, verbose=0)
    reps = max(1, math.ceil(256 / len(texts)))
    start = time.perf_counter()
    for _ in range(reps):
        model.predict(x, verbose=0)
    out["inference_pairs_per_second"] = round(reps * len(texts) / (time.perf_counter() - start), 1)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 0)
    if made_shards:
        shutil.rmtree(made_shards)
    keras.backend.clear_session()
    return out


def _shards_for(data_dir: str) -> tuple[Path | None, float | None]:
    """(None, None) when DIR/shards is written, else the train split's shards written into a temporary folder,
    and the seconds that took."""
    if (Path(data_dir) / SHARDS_SUBDIR / INDEX_FILE).is_file():
        return None, None
    start = time.perf_counter()
    made = write_shards(data_dir, out=Path(tempfile.mkdtemp(prefix="itm-bench-shards-")), splits=("train", "dev"))
    return made, round(time.perf_counter() - start, 2)


def run(data_dir: str, settings: list[str], steps: int, precision: str | None = None) -> dict:
    """Measure each setting in a subprocess, then add the speed-ups over 'naive' and the machine's peak."""
    info = {**cpu_info(), "onednn": "on" if onednn_enabled() else "off"}  # the subprocesses inherit this setting
    logger.info(f"CPU: {info['model']}, {info['cores']} cores, {', '.join(info['features']) or 'no AVX2'}; "
                f"{onednn_line()}")
    results = []
    for setting in settings:
        logger.info(f"measuring {setting} ...")
        cmd = [sys.executable, "-m", "itm", "bench", "--data-dir", data_dir, "--steps", str(steps), "--one", setting]
        if precision:
            cmd += ["--precision", precision]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark of {setting} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        logger.info(f"  {setting}: {results[-1]['seconds_per_epoch']} s per epoch, "
                    f"{results[-1]['achieved_gflops']} GFLOP/s ({results[-1]['precision']})")
    naive = next((r for r in results if r["setting"] == "naive"), None)
    for r in results:
        if naive and r["setting"] != "best-cpu":
            r["speedup_vs_naive"] = round(naive["seconds_per_epoch"] / r["seconds_per_epoch"], 2)

    peak = measured_peak_gflops()
    for r in results:
        r["share_of_measured_float32_peak"] = round(r["achieved_gflops"] / peak, 3)
    return {"data_dir": data_dir, "steps": steps, "cpu": info,
            "float32_peak_gflops": {"nominal": round(nominal_peak_gflops(info), 1), "measured_matmul": round(peak, 1)},
            "results": results}
