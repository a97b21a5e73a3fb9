#!/usr/bin/env python
"""One training epoch of the original baseline against one of ``ITM_Classifier.py --fast``, side by side.

The original is rebuilt here as the course published it: legacy Keras 2 (tf-keras, under
TF_USE_LEGACY_KERAS=1), tf-models-official's AdamW, its own tf.data pipeline (a JPEG decoded per triple,
shuffle buffer 128, batches of 16), the same CNN, projections and head, ``fit`` with dev validation.
Each side runs in its own process, one after the other, and this prints JSON with both epoch times and
their ratio. A measurement, not a test. Needs the test extras (``scripts/setup.sh test``: tf-keras and
tf-models-official).

    .venv/bin/python scripts/bench_original.py --data-dir ../shared/flickr8k-cmp9137 [--precision float32]
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ORIGINAL = r'''
import os, pickle, sys, time
import tensorflow as tf
import tf_keras as keras
from tf_keras import layers
from official.nlp import optimization

data_dir, epochs = sys.argv[1], int(sys.argv[2])
images = os.path.join(data_dir, "flickr8k-resised")
with open(os.path.join(data_dir, "flickr8k.cmp9137.sentence_transformers.pkl"), "rb") as f:
    embeddings = pickle.load(f)

def process_input(img_path, dense_vector, text, label):
    img = tf.io.read_file(img_path)
    img = tf.image.decode_jpeg(img, channels=3)
    img = tf.image.resize(img, (224, 224))
    img = tf.image.convert_image_dtype(img, tf.float32)
    img = tf.cast(img, tf.float32) / 255
    return {"image_input": img, "text_embedding": dense_vector, "caption": text, "file_name": img_path}, label

def load(name):
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(data_dir, name)) if line.strip()]
    ds = tf.data.Dataset.from_tensor_slices(([os.path.join(images, r[0].strip()) for r in rows],
                                             [tf.constant(embeddings[r[1]]) for r in rows], [r[1] for r in rows],
                                             [[1, 0] if r[2] == "match" else [0, 1] for r in rows]))
    return ds.shuffle(16 * 8).map(process_input, num_parallel_calls=tf.data.AUTOTUNE).batch(16).prefetch(tf.data.AUTOTUNE)

train_ds, val_ds = load("flickr8k.TrainImages.txt"), load("flickr8k.DevImages.txt")

def project(x, dims=128, rate=0.1):
    p = layers.Dense(dims)(x)
    h = tf.nn.gelu(p)
    h = layers.Dense(dims)(h)
    h = layers.Dropout(rate)(h)
    return layers.LayerNormalization()(layers.Add()([p, h]))

img_input = layers.Input(shape=(224, 224, 3), name="image_input")
x = img_input
for filters in (16, 32, 64):
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
x = layers.Flatten()(layers.Dropout(0.1)(x))
text_input = keras.Input(shape=(384,), name="text_embedding")
net = layers.Concatenate(axis=1)([project(x), project(text_input)])
net = layers.Dense(2, activation="softmax", name="ITM_Classifier-flickr")(layers.Dropout(0.1)(net))
model = keras.Model(inputs=[img_input, text_input], outputs=net)
steps = tf.data.experimental.cardinality(train_ds).numpy()
optimizer = optimization.create_optimizer(init_lr=3e-5, num_train_steps=steps * epochs,
                                          num_warmup_steps=int(0.2 * steps * epochs), optimizer_type="adamw")
model.compile(optimizer=optimizer, loss=keras.losses.KLDivergence(), metrics=keras.metrics.BinaryAccuracy())
start = time.perf_counter()
model.fit(x=train_ds, validation_data=val_ds, epochs=epochs, verbose=2)
print("ORIGINAL_SECONDS", time.perf_counter() - start)
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--precision", default="float32", help="for ITM_Classifier.py --fast (default: float32, "
                    "the original's; 'auto' for the machine's fast one)")
    ap.add_argument("--skip-original", action="store_true", help="time only ITM_Classifier.py --fast")
    args = ap.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = {"data_dir": args.data_dir, "machine": platform.processor() or platform.machine(),
           "cpu_flags": sorted({"avx2", "avx512f", "avx512_bf16"} & set(open("/proc/cpuinfo").read().split()))}
    if not args.skip_original:
        print("the original (legacy Keras, its own pipeline), 1 epoch ...", file=sys.stderr, flush=True)
        r = subprocess.run([sys.executable, "-c", ORIGINAL, args.data_dir, "1"], env={**env, "TF_USE_LEGACY_KERAS": "1"},
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"the original failed:\n{r.stderr[-3000:]}")
        out["original_epoch_seconds"] = round(float(re.search(r"ORIGINAL_SECONDS (\S+)", r.stdout)[1]), 1)
    print(f"ITM_Classifier.py --fast --epochs 1 --precision {args.precision} ...", file=sys.stderr, flush=True)
    run_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"itm-bench-original-{os.getpid()}-{int(time.time())}"
    r = subprocess.run([sys.executable, str(ROOT / "ITM_Classifier.py"), "--fast", "--epochs", "1", "--seed", "0",
                        "--precision", args.precision, "--data-dir", args.data_dir, "--output-dir", str(run_dir)],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ITM_Classifier.py --fast failed:\n{r.stderr[-3000:]}")
    out["fast_epoch_seconds"] = round(float(re.search(r"model trained in (\S+) s", r.stdout)[1]), 1)
    out["fast_precision"] = re.search(r"precision: (\S+);", r.stdout)[1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out["fast_test"] = {k: round(metrics[k], 4) for k in ("accuracy", "balanced_accuracy", "roc_auc")}
    if "original_epoch_seconds" in out:
        out["speedup"] = round(out["original_epoch_seconds"] / out["fast_epoch_seconds"], 2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
