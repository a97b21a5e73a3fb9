#!/usr/bin/env python
"""Pairs per second of what ``itm predict``, ``itm rank`` and ``itm search`` run (``itm.Matcher``), in this
process, with the CPU and TensorFlow's oneDNN state; prints one JSON object. A measurement, not a test.

* predict: one image with one caption a call (the image decoded and encoded, the caption embedded);
* rank: one image with --captions captions a call;
* search: --query captions against a folder of images whose features are already indexed (what a second
  ``itm search`` on the same folder does), the query embedded each time.

Captions are the run's data folder's own (their embeddings looked up) unless --new-captions, which embeds
new ones with the TensorFlow all-MiniLM-L6-v2.

    .venv/bin/python scripts/bench_inference.py --run RUN --images DIR [--seconds 10]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import itm  # noqa: F401  (oneDNN on and TensorFlow quiet, before TensorFlow loads)
from itm.tfenv import onednn_line


def _rate(fn, pairs_per_call: int, seconds: float) -> dict:
    fn()  # warm-up: tracing, caches
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    elapsed = time.perf_counter() - start
    return {"calls": calls, "ms_per_call": round(1000 * elapsed / calls, 2),
            "pairs_per_second": round(calls * pairs_per_call / elapsed, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--images", required=True, help="a folder of images (search; the first is predict's and rank's)")
    ap.add_argument("--captions", type=int, default=20, help="captions per rank call")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--new-captions", action="store_true")
    args = ap.parse_args()

    from itm.serving.matcher import Matcher
    from itm.training.bench import cpu_info

    matcher = Matcher.load(args.run)
    images = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    image = images[0]
    if args.new_captions:
        captions = [f"a photo number {i} of something new" for i in range(args.captions)]
    else:
        from itm.data.folder import load_embeddings
        from itm.models.run_reader import SavedRun

        captions = sorted(load_embeddings(Path(SavedRun(args.run).data_dir)))[: args.captions]
    index = matcher.index_folder(args.images)
    out = {"cpu": cpu_info(), "onednn": onednn_line(), "load_average_before": os.getloadavg()[0],
           "run": args.run, "images_in_folder": len(index.paths), "new_captions": args.new_captions,
           "predict": _rate(lambda: matcher.score(image, captions[0]), 1, args.seconds),
           "rank": _rate(lambda: matcher.rank(image, captions), len(captions), args.seconds),
           "search": _rate(lambda: matcher.search_index(index, captions[1], top=10), len(index.paths), args.seconds)}
    out["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
