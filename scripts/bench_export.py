#!/usr/bin/env python
"""What exporting a run costs and gives: prints JSON with

* each format's size on disk: model.keras, the SavedModel (all-MiniLM-L6-v2 included for a run on
  precomputed embeddings), the LiteRT model and its dynamic-range quantised form;
* pairs per second, on the same --pairs (image, caption) pairs, of ``itm.Matcher`` (encode each image and
  caption, then the head per pair) and of the SavedModel's ``serving_default`` (bytes and text in), both
  decoding JPEGs and embedding captions that are not in any data folder (the TensorFlow all-MiniLM-L6-v2);
  and of the LiteRT models on decoded pixels and caption embeddings (what they take);
* the largest |p_match| difference of the SavedModel from Matcher and of LiteRT from the SavedModel;
* with --test-metrics: the run's own test split scored by Keras (itm's Scorer), LiteRT and quantised LiteRT:
  ROC-AUC and balanced accuracy at the run's threshold, and the largest p_match difference.

    .venv/bin/python scripts/bench_export.py --run runs/RUN [--pairs 128] [--test-metrics]
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def best_rate(fn, n: int, repeats: int) -> float:
    """Pairs per second of the fastest of ``repeats`` calls, after one untimed call (tracing, warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / min(times)


def lite_runner(path: Path):
    import tensorflow as tf

    runner = tf.lite.Interpreter(str(path), num_threads=os.cpu_count()).get_signature_runner()
    return lambda pixels, emb, batch=64: np.concatenate([
        runner(pixels=pixels[i:i + batch], text_embedding=emb[i:i + batch])["p_match"]
        for i in range(0, len(pixels), batch)])


def pairs_from(run: Path, n: int):
    """n (image bytes, caption) pairs: the run's data-folder test images and captions, each caption changed so
    that no data folder holds its embedding."""
    from itm.data.folder import load_data_dir
    from itm.files import read_json

    config = read_json(run / "config.json", "config")
    data = load_data_dir(config["data_dir"], splits=("test",), need_embeddings=False).splits["test"]
    triples = data.triples[:n]
    images = [(data.images_dir / t.image).read_bytes() for t in triples]
    return images, [t.caption.rstrip(" .") + " , seen today" for t in triples], data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--test-metrics", action="store_true", help="also score the run's test split with each format")
    args = ap.parse_args()

    import tensorflow as tf

    import itm
    from itm.data.images import preprocess
    from itm.serving.export import export_litert, export_savedmodel

    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    saved, lite, lite_q = tmp / "savedmodel", tmp / "model.tflite", tmp / "model-quantized.tflite"
    start = time.perf_counter()
    export_savedmodel(args.run, saved)
    export_litert(args.run, lite)
    export_litert(args.run, lite_q, quantize=True)
    report = {"run": str(args.run), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
              "(shared with other jobs: noisy)", "export_seconds": round(time.perf_counter() - start, 1),
              "bytes": {"model.keras": size_of(args.run / "model.keras"), "savedmodel": size_of(saved),
                        "litert": size_of(lite), "litert_quantized": size_of(lite_q)}}

    images, captions, test = pairs_from(args.run, args.pairs)
    n = len(images)
    empty = tmp / "no-data"
    empty.mkdir()
    matcher = itm.load(args.run, data_dir=empty)  # no data-folder embeddings: every caption is encoded

    def with_matcher():
        img = matcher.encode_image(images)
        txt = matcher.encode_text(captions)
        return matcher.scorer.pairs(img, txt, np.arange(n), np.arange(n))[:, 0]

    model = tf.saved_model.load(str(saved))
    serve = model.signatures["serving_default"]

    def with_savedmodel(batch=64):
        return np.concatenate([serve(image=tf.constant(images[i:i + batch]),
                                     caption=tf.constant(captions[i:i + batch]))["p_match"].numpy()
                               for i in range(0, n, batch)])

    pixels = preprocess(images, matcher.image_size) * 255.0  # LiteRT takes resized RGB pixels, 0..255
    emb = matcher.captions(captions)
    run_lite, run_lite_q = lite_runner(lite), lite_runner(lite_q)
    p_matcher, p_saved = with_matcher(), with_savedmodel()
    score_emb = model.signatures["score_embeddings"]
    p_saved_emb = np.concatenate([score_emb(image=tf.constant(images[i:i + 64]),
                                            text_embedding=tf.constant(emb[i:i + 64]))["p_match"].numpy()
                                  for i in range(0, n, 64)])
    report["pairs"] = n
    report["pairs_per_second"] = {
        "matcher": round(best_rate(with_matcher, n, args.repeats), 1),
        "savedmodel": round(best_rate(with_savedmodel, n, args.repeats), 1),
        "litert_on_pixels_and_embeddings": round(best_rate(lambda: run_lite(pixels, emb), n, args.repeats), 1),
        "litert_quantized_on_pixels_and_embeddings": round(best_rate(lambda: run_lite_q(pixels, emb), n,
                                                                     args.repeats), 1)}
    report["max_abs_difference"] = {
        "savedmodel_vs_matcher": float(np.max(np.abs(p_saved - p_matcher))),
        "litert_vs_savedmodel_score_embeddings": float(np.max(np.abs(run_lite(pixels, emb) - p_saved_emb))),
        "litert_quantized_vs_savedmodel_score_embeddings": float(np.max(np.abs(run_lite_q(pixels, emb) - p_saved_emb)))}

    if args.test_metrics:
        from itm.data.folder import load_embeddings
        from itm.evaluation.metrics import binary_metrics, roc_auc
        from itm.models.scorer import Scorer

        config = json.loads((args.run / "config.json").read_text())
        known = load_embeddings(Path(config["data_dir"]))
        is_match = np.array([t.match for t in test.triples])
        p_keras = Scorer(matcher.model).score_split(test, known)[:, 0]
        names = sorted({t.image for t in test.triples})
        decoded = dict(zip(names, preprocess([test.images_dir / x for x in names], matcher.image_size) * 255.0))
        all_pixels = np.stack([decoded[t.image] for t in test.triples])
        all_emb = np.stack([known[t.caption] for t in test.triples])
        results = {}
        for name, p in (("keras", p_keras), ("litert", run_lite(all_pixels, all_emb)),
                        ("litert_quantized", run_lite_q(all_pixels, all_emb))):
            m = binary_metrics(is_match, p, matcher.threshold)
            results[name] = {"roc_auc": round(roc_auc(is_match, p), 4),
                             "balanced_accuracy_at_threshold": round(m["balanced_accuracy"], 4),
                             "max_abs_difference_from_keras": float(np.max(np.abs(p - p_keras)))}
        report["test_split"] = {"pairs": len(test.triples), "threshold": matcher.threshold, **results}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
