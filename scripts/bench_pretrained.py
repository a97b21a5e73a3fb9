#!/usr/bin/env python
"""The pretrained preset's cost: feature extraction speed, then the whole command, cold and warm.

1. The frozen MobileNetV2's pooled features of every photo in ``--images`` folders, computed with the
   training pipeline's decoding, into an empty cache: images per second.
2. ``ITM_Classifier.py --preset pretrained --data-dir DIR`` with an empty feature cache (extraction
   included), then again with the cache warm: wall seconds of each, and the run's test figures (and, with
   ``--ood DIR``, the figures of ``itm evaluate`` on that folder).

Prints JSON. A measurement, not a test.

    .venv/bin/python scripts/bench_pretrained.py --data-dir ../shared/flickr8k-cmp9137 \\
        --images ../shared/flickr8k-cmp9137/flickr8k-resised --images ../shared/flickr8k-more/flickr8k-resised \\
        [--ood data/flickr8k-ood] [--options "--seed 0"] [--keep runs/pretrained]
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def extraction(folders: list[str], image_size: int) -> dict:
    """Features of every image of ``folders`` through the preset's frozen backbone, timed (no cache)."""
    import numpy as np

    from itm.data.features import frozen_encoder
    from itm.data.image_files import list_images
    from itm.data.images import decoded_paths
    from itm.models.classifier import build_model
    from itm.options import resolve_config

    config = resolve_config("pretrained", image_size=image_size)
    encode = frozen_encoder(build_model(**config.model_kwargs()).image_frozen)  # as load_feature_cache
    paths = [p for folder in folders for p in list_images(folder)]
    encode(np.zeros((64, image_size, image_size, 3), np.float32))  # a full batch traced before the clock starts
    start = time.perf_counter()
    n = 0
    for batch in decoded_paths(paths, image_size).batch(64):
        n += len(np.asarray(encode(batch)))
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": round(seconds, 1), "images_per_second": round(n / seconds, 1)}


def whole_command(data_dir: str, options: list[str], cache: str, out: Path, ood: str | None) -> dict:
    env = {**os.environ, "ITM_CACHE_DIR": cache, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "ITM_Classifier.py"), "--preset", "pretrained", "--data-dir",
                        data_dir, "--output-dir", str(out), "--overwrite", *options], env=env, capture_output=True,
                       text=True)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"the pretrained run failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    result = {"wall_seconds": round(wall, 1), "train_seconds": round(metrics["train_seconds"], 1),
              "extraction_line": next((line for line in r.stdout.splitlines() if "Backbone features" in line), None),
              "test": _figures(metrics)}
    if ood:
        r = subprocess.run([sys.executable, "-m", "itm", "evaluate", "--run", str(out), "--data-dir", ood,
                            "--name", "ood"], env=env, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"itm evaluate on {ood} failed:\n{r.stderr[-3000:]}")
        result["ood"] = _figures(json.loads((out / "metrics-ood.json").read_text()))
    return result


def _figures(m: dict) -> dict:
    out = {"accuracy": m["accuracy"], "balanced_accuracy_at_dev_threshold": m["at_dev_threshold"]["balanced_accuracy"],
           "roc_auc": m["roc_auc"], "roc_auc_ci95": m["ci95"]["roc_auc"]}
    if "retrieval" in m:
        r = m["retrieval"]
        out["retrieval_R@1/5/10"] = {d: [r[d]["R@1"], r[d]["R@5"], r[d]["R@10"]] for d in ("image_to_text", "text_to_image")}
    return {k: ([round(x, 4) for x in v] if isinstance(v, list) else round(v, 4) if isinstance(v, float) else v)
            for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--images", action="append", default=[], help="folders of photos to extract (repeat)")
    ap.add_argument("--ood", help="an 'itm ood-split' folder to score the run on")
    ap.add_argument("--options", default="", help="more ITM_Classifier.py options, e.g. '--seed 0'")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--keep", help="copy the warm run's folder here (otherwise it is deleted with the cache)")
    args = ap.parse_args()
    report = {"cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" \t:"),
              "avx512_bf16": "avx512_bf16" in open("/proc/cpuinfo").read()}
    if args.images:
        print("extracting features ...", file=sys.stderr, flush=True)
        report["extraction"] = extraction(args.images, args.image_size)
    with tempfile.TemporaryDirectory(prefix="itm-bench-pretrained-") as tmp:
        for name in ("cold", "warm"):
            print(f"the pretrained command, {name} cache ...", file=sys.stderr, flush=True)
            report[name] = whole_command(args.data_dir, shlex.split(args.options), tmp, Path(tmp) / "run", args.ood)
        if args.keep:
            shutil.copytree(Path(tmp) / "run", args.keep, dirs_exist_ok=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
