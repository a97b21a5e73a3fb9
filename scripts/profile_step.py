#!/usr/bin/env python
"""Where one training step's time goes: the image tower forward, forward and backward, the whole model's loss
and gradients, the optimizer update, one pipeline batch, and a whole ``fit`` step.

Prints JSON of milliseconds per step (the mean of ``--repeats`` calls, after two warm-up calls).
A measurement, not a test.

    .venv/bin/python scripts/profile_step.py --data-dir ../shared/flickr8k-cmp9137 --preset faithful --fast
    .venv/bin/python scripts/profile_step.py --data-dir ../shared/flickr8k-cmp9137 --preset best-cpu
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed_ms(fn, repeats: int) -> float:
    fn(), fn()  # traced and warm before the clock starts
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    for tensor in result if isinstance(result, (list, tuple)) else [result]:
        if hasattr(tensor, "numpy"):
            tensor.numpy()
    return round((time.perf_counter() - start) / repeats * 1000, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--preset", default="faithful")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    import tensorflow as tf

    from itm.data.folder import load_data_dir
    from itm.data.pipelines import pipeline_for
    from itm.options import finish_config, resolve_config
    from itm.training import run

    config, _ = finish_config(resolve_config(args.preset, data_dir=args.data_dir, seed=0, fast=args.fast,
                                             precision=args.precision), args.data_dir)
    pipeline = pipeline_for(config)
    data = load_data_dir(args.data_dir)
    steps = pipeline.steps_per_epoch(data.splits["train"])
    model, trainer = run.build_trainer(config, tf.distribute.get_strategy(), steps)
    store = pipeline.image_store(data, model)
    dataset = pipeline.dataset(data, store, epochs=1000)  # an endless dataset to time from
    x, y = next(iter(dataset))
    images = tf.cast(x["images"], tf.float32)  # pixels 0..255 (the model scales them), or cached features
    tower = trainer.parts.image

    forward = tf.function(lambda v: tower(v, training=True))

    @tf.function
    def forward_backward(v):
        with tf.GradientTape() as tape:
            z = tower(v, training=True)
            loss = tf.reduce_sum(z * z)
        return tape.gradient(loss, tower.trainable_variables)

    @tf.function
    def loss_and_gradients(x, y):
        with tf.GradientTape() as tape:
            loss, _ = trainer.loss_and_predictions(x, y, training=True)
        return tape.gradient(loss, trainer.trainable_variables)

    gradients = loss_and_gradients(x, y)
    apply = tf.function(lambda g: trainer.optimizer.apply_gradients(zip(g, trainer.trainable_variables)))
    batches = iter(dataset)
    report = {
        "batch": {k: list(v.shape) for k, v in x.items()},
        "image_forward_ms": timed_ms(lambda: forward(images), args.repeats),
        "image_forward_backward_ms": timed_ms(lambda: forward_backward(images), args.repeats),
        "loss_and_gradients_ms": timed_ms(lambda: loss_and_gradients(x, y), args.repeats),
        "optimizer_update_ms": timed_ms(lambda: apply(gradients), args.repeats),
        "pipeline_batch_ms": timed_ms(lambda: next(batches), 3 * args.repeats),
    }
    trainer.fit(dataset.take(3), epochs=1, verbose=0)
    n = 2 * args.repeats
    start = time.perf_counter()
    trainer.fit(dataset.take(n), epochs=1, verbose=0)
    report["fit_step_ms"] = round((time.perf_counter() - start) / n * 1000, 1)
    report["steps_per_epoch"] = steps
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
