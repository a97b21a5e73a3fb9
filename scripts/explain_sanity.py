"""Does the map of ``itm explain`` look at the named shape? A sanity figure on the demo data, where the answer
is known: for each correct match of a demo run's test split (label match, decided match), where the map's
mass lies against where the shape is (``itm.data.demo.shape_mask``).

Prints, over those pairs: the share whose map peaks on the shape (the pointing game), the same within one
cell of the map's grid of the shape (the map cannot place its peak more finely), the share with more than
half of the map's mass on it, the mean share of mass on it and, as chance, the mean share of the image
the shape (or the shape grown by a cell) covers: what a map that peaks at random would score. The map is
upsampled to the image as the figure of ``itm explain`` draws it (bilinear).

    python scripts/explain_sanity.py --run RUN [--limit N] [--examples DIR]

``--examples DIR`` also writes two figures: the first pair whose peak is on the shape and the first whose peak
is not, when there are such (for docs/explain.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def upsampled(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(grid.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))


def grown(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` grown by ``pixels`` in every direction (a square neighbourhood)."""
    from PIL import Image, ImageFilter

    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.filter(ImageFilter.MaxFilter(2 * pixels + 1))) > 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run trained on the demo data")
    ap.add_argument("--limit", type=int, default=0, help="at most this many test match pairs (default: all)")
    ap.add_argument("--examples", metavar="DIR", help="also write example figures into DIR (a new or empty folder)")
    args = ap.parse_args(argv)

    from PIL import Image

    from itm.data.demo import attributes_of, is_demo, shape_mask
    from itm.explain import photo_pixels, write_png
    from itm.serving.matcher import Matcher

    m = Matcher.load(args.run, encoder=False)  # the map alone: the demo's captions are in its data folder
    data = Path(m.captions.source or "")
    if not data.is_dir() or not is_demo(data):
        print(f"error: {args.run} was not trained on the demo data (its data folder: {data})", file=sys.stderr)
        return 2
    pairs = [line.split("\t")[:2] for line in (data / "flickr8k.TestImages.txt").read_text().splitlines()
             if line.endswith("\tmatch")]
    pairs = pairs[:args.limit] if args.limit else pairs
    if args.examples:
        Path(args.examples).mkdir(parents=True, exist_ok=True)
        if any(Path(args.examples).iterdir()):
            print(f"error: --examples {args.examples} is not empty", file=sys.stderr)
            return 2
    peaks, near, halves, mass, area, near_area, wrote = [], [], [], [], [], [], {}
    seconds = 0.0
    for name, caption in pairs:
        path = data / "flickr8k-resised" / name
        start = time.perf_counter()
        e = m.explain(path, caption)
        seconds += time.perf_counter() - start
        if not e.match:
            continue  # a missed match: not a correct match
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        mask = shape_mask(pixels, attributes_of(caption))
        heat = upsampled(e.grid, pixels.shape[1], pixels.shape[0])
        total = float(heat.sum())
        on = float(heat[mask].sum()) / total if total > 0 else 0.0
        peak = bool(mask.flat[int(heat.argmax())]) if total > 0 else False
        peaks.append(peak)
        cell = int(round(pixels.shape[0] / e.grid.shape[0]))
        around = grown(mask, cell)
        near.append(bool(around.flat[int(heat.argmax())]) if total > 0 else False)
        near_area.append(float(around.mean()))
        halves.append(on > 0.5)
        mass.append(on)
        area.append(float(mask.mean()))
        if args.examples and peak not in wrote and len(wrote) < 2:
            wrote[peak] = Path(args.examples) / f"demo-{'on' if peak else 'off'}-shape.png"
            write_png(e, photo_pixels(path), wrote[peak])
    n = len(peaks)
    print(f"run: {args.run}; {len(pairs)} test match pairs, {n} decided match (correct matches); map on "
          f"{e.layer}, a {e.grid.shape[0]}x{e.grid.shape[1]} grid; Matcher.explain took {seconds / max(len(pairs), 1):.2f} s a "
          "pair")
    if n:
        print(f"peak of the map on the named shape: {sum(peaks)}/{n} = {sum(peaks) / n:.1%} (chance {np.mean(area):.1%})")
        print(f"peak within one grid cell ({cell} px) of the shape: {sum(near)}/{n} = {sum(near) / n:.1%} (chance "
              f"{np.mean(near_area):.1%})")
        print(f"more than half of the map's mass on the shape: {sum(halves)}/{n} = {sum(halves) / n:.1%}")
        print(f"mean share of the map's mass on the shape: {np.mean(mass):.1%} (the shape covers {np.mean(area):.1%} "
              "of the image on average: chance)")
    for peak, path in wrote.items():
        print(f"example ({'peak on' if peak else 'peak off'} the shape): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
