#!/usr/bin/env python
"""One training epoch of the original baseline against one of ``ITM_Classifier.py --fast``, side by side.

The original is rebuilt here as the course published it: legacy Keras 2 (tf-keras, under
TF_USE_LEGACY_KERAS=1), tf-models-official's AdamW, its own tf.data pipeline (a JPEG decoded per triple,
shuffle buffer 128, batches of 16), the same CNN, projections and head, ``fit`` with dev validation.
Each side runs in its own process, one after the other, with oneDNN off and on (``TF_ENABLE_ONEDNN_OPTS``;
TensorFlow leaves it off on CPUs without AVX-512, itm turns it on), and this prints JSON with the CPU, the
epoch times and the ratios, the headline being ``--fast`` (oneDNN on, as itm runs it) against the original
as a user runs it (TensorFlow's defaults). A measurement, not a test. Needs the test extras
(``scripts/setup.sh test``: tf-keras and tf-models-official).

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


ONEDNN_STATES = {"default": None, "on": "1", "off": "0"}  # None: TensorFlow's own choice (off on AVX2-only CPUs)


def _env(onednn: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env if onednn is None else {**env, "TF_ENABLE_ONEDNN_OPTS": onednn}


def _onednn_enabled(onednn: str | None) -> bool:
    """Whether TensorFlow runs oneDNN under that setting, asked of a fresh TensorFlow (not itm)."""
    r = subprocess.run([sys.executable, "-c", "from tensorflow.python.util import _pywrap_util_port as p; "
                        "print(p.IsMklEnabled())"], env=_env(onednn), capture_output=True, text=True)
    return r.stdout.strip() == "True"


def original_epoch(data_dir: str, onednn: str | None) -> float:
    r = subprocess.run([sys.executable, "-c", ORIGINAL, data_dir, "1"], env={**_env(onednn), "TF_USE_LEGACY_KERAS": "1"},
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"the original failed:\n{r.stderr[-3000:]}")
    return round(float(re.search(r"ORIGINAL_SECONDS (\S+)", r.stdout)[1]), 1)


def fast_epoch(data_dir: str, precision: str, onednn: str | None) -> dict:
    run_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"itm-bench-original-{os.getpid()}-{time.time_ns()}"
    r = subprocess.run([sys.executable, str(ROOT / "ITM_Classifier.py"), "--fast", "--epochs", "1", "--seed", "0",
                        "--precision", precision, "--data-dir", data_dir, "--output-dir", str(run_dir)],
                       env=_env(onednn), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ITM_Classifier.py --fast failed:\n{r.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"epoch_seconds": round(float(re.search(r"model trained in (\S+) s", r.stdout)[1]), 1),
            "precision": re.search(r"precision: (\S+)", r.stdout)[1],
            "test": {k: round(metrics[k], 4) for k in ("accuracy", "balanced_accuracy", "roc_auc")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--precision", default="float32", help="for ITM_Classifier.py --fast (default: float32, "
                    "the original's; 'auto' for the machine's fast one)")
    ap.add_argument("--skip-original", action="store_true", help="time only ITM_Classifier.py --fast")
    ap.add_argument("--onednn", choices=("both", "default"), default="both",
                    help="both (default): each side with oneDNN off and on, back to back; default: the original "
                    "under TensorFlow's own choice and --fast under itm's (on unless TF_ENABLE_ONEDNN_OPTS is set)")
    args = ap.parse_args()
    flags = set(open("/proc/cpuinfo").read().split())
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor() or platform.machine())
    out = {"data_dir": args.data_dir, "cpu": model, "cores": len(os.sched_getaffinity(0)),
           "cpu_flags": sorted({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"} & flags),
           "tensorflow_default_onednn": "on" if _onednn_enabled(None) else "off",
           "load_average_before": os.getloadavg()[0]}
    # the original as a user runs it: TensorFlow's defaults; --fast as itm runs it: oneDNN on
    sides = [("original", None), ("fast", "1")] if args.onednn == "default" else \
        [("original", None), ("original", "0" if _onednn_enabled(None) else "1"), ("fast", "1"), ("fast", "0")]
    for side, onednn in sides:
        if side == "original" and args.skip_original:
            continue
        state = "on" if _onednn_enabled(onednn) else "off"
        label = f"{side}, oneDNN {state}" + (" (TensorFlow's default)" if onednn is None else "")
        print(f"{label}: 1 epoch ...", file=sys.stderr, flush=True)
        if side == "original":
            out[f"original_epoch_seconds_onednn_{state}"] = original_epoch(args.data_dir, onednn)
            if onednn is None:
                out["original_as_a_user_runs_it"] = f"oneDNN {state}"
        else:
            out[f"fast_onednn_{state}"] = fast_epoch(args.data_dir, args.precision, onednn)
    out["load_average_after"] = os.getloadavg()[0]
    user = out.get("original_epoch_seconds_onednn_" + out["tensorflow_default_onednn"])
    fast_on = out.get("fast_onednn_on", {}).get("epoch_seconds")
    if user and fast_on:
        out["speedup_fast_onednn_on_vs_original_as_a_user_runs_it"] = round(user / fast_on, 2)
    for state in ("on", "off"):
        orig, fast = out.get(f"original_epoch_seconds_onednn_{state}"), out.get(f"fast_onednn_{state}", {}).get("epoch_seconds")
        if orig and fast:
            out[f"speedup_same_onednn_{state}"] = round(orig / fast, 2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
