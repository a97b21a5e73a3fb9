"""Synthetic data folders of any size, for measuring how cost grows with the data (scripts/bench_scale.py).

The layout is the real one (data/README.md): split files, ``flickr8k-resised/``, an embeddings npz.
What grows with N is what grows with real data: one distinct image name per 5 training triples
(2 match, 3 no-match, as the demo's), two distinct captions per image (each the match of one image
and the no-match of others, as ``itm prepare`` draws them), so about 0.4 N distinct captions with
their own 384-d vectors. Only the photos are bounded: a pool of at most ``pool`` generated JPEGs
(the demo's coloured shapes, ``itm.data.demo``), which the image names hard-link to, so a million
triples cost 200,000 directory entries but only the pool's bytes on disk.

A caption's vector is the real all-MiniLM-L6-v2 vector of its shape/colour/background sentence
(the demo's asset) plus a little seeded noise, renormalised: distinct per caption, and still
telling match from no-match. The same arguments give byte-identical folders.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

from .demo import COLOURS, SHAPES, BACKGROUNDS, TEMPLATES, caption_for, draw_image, load_caption_embeddings, \
    one_attribute_off
from .folder import EMBEDDINGS_NPZ, IMAGES_SUBDIR, SPLIT_FILES

TRIPLES_PER_IMAGE = {"train": (2, 3), "dev": (1, 3), "test": (1, 3)}  # (match, no-match); dev/test 75% no-match
NOISE = 0.05  # per-caption noise added to the sentence's vector, before renormalising
MARKER = "ITM-SYNTHETIC.txt"


def images_needed(n_triples: int, split: str = "train") -> int:
    return -(-n_triples // sum(TRIPLES_PER_IMAGE[split]))


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():  # a folder built before with the same arguments
        return
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        dst.write_bytes(src.read_bytes())


def build(out_dir, n_train: int, n_dev: int = 500, n_test: int = 500, pool: int = 20000, image_size: int = 64,
          seed: int = 0) -> Path:
    """Write a data folder with exactly ``n_train`` / ``n_dev`` / ``n_test`` triples into ``out_dir``."""
    out = Path(out_dir)
    images = out / IMAGES_SUBDIR
    images.mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    counts = {s: images_needed(n, s) for s, n in sizes.items()}
    n_pool = min(pool, sum(counts.values()))
    rng = random.Random(seed)
    combos = [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]
    pool_attrs = [rng.choice(combos) for _ in range(n_pool)]
    for i, attrs in enumerate(pool_attrs):
        path = images / f"pool_{i:05d}.jpg"
        if not path.is_file():
            draw_image(attrs, rng, image_size).save(path, quality=90)
        else:
            draw_image(attrs, rng, image_size)  # the same draws, so the rest stays deterministic

    base = load_caption_embeddings()
    captions: dict[str, str] = {}  # caption -> its sentence (whose real vector it varies)
    image_id = 0
    for split, n in sizes.items():
        n_match, n_nomatch = TRIPLES_PER_IMAGE[split]
        first = image_id
        attrs = [pool_attrs[(first + k) % n_pool] for k in range(counts[split])]
        own = []  # each image's match captions
        by_attrs: dict[tuple, list[int]] = {}
        for k, a in enumerate(attrs):
            t0 = rng.randrange(len(TEMPLATES))
            mine = []
            for m in range(n_match):
                sentence = caption_for(a, (t0 + m) % len(TEMPLATES))
                caption = f"{sentence}, photo {first + k} view {m + 1}"
                captions[caption] = sentence
                mine.append(caption)
            own.append(mine)
            by_attrs.setdefault(a, []).append(k)
        lines = []
        for k, a in enumerate(attrs):
            name = f"{split}_{first + k:07d}.jpg"
            _link_or_copy(images / f"pool_{(first + k) % n_pool:05d}.jpg", images / name)
            for caption in own[k]:
                lines.append(f"{name}\t{caption}\tmatch")
            for wrong in rng.sample(one_attribute_off(a), n_nomatch):
                others = by_attrs.get(wrong)
                if others:  # another image's match caption, as itm prepare draws no-match captions
                    caption = rng.choice(own[rng.choice(others)])
                else:  # no image of the split looks like that: the bare sentence
                    caption = caption_for(wrong, rng.randrange(len(TEMPLATES)))
                    captions[caption] = caption
                lines.append(f"{name}\t{caption}\tno-match")
        image_id += counts[split]
        (out / SPLIT_FILES[split]).write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")

    names = list(captions)
    matrix = np.empty((len(names), 384), np.float32)
    noise_rng = np.random.default_rng(seed)
    for i in range(0, len(names), 65536):  # in blocks: float64 noise for a million captions is 3 GB at once
        block = names[i:i + 65536]
        vectors = np.stack([base[captions[c]] for c in block]) + \
            NOISE * noise_rng.standard_normal((len(block), 384), dtype=np.float32)
        matrix[i:i + len(block)] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    with open(out / EMBEDDINGS_NPZ, "wb") as f:
        np.savez(f, captions=np.array(names, dtype=str), embeddings=matrix)
    (out / MARKER).write_text(f"Synthetic itm data folder (itm/data/synthetic.py): {n_train} / {n_dev} / {n_test} "
                              f"triples, {n_pool} pool photos of {image_size} px, seed {seed}.\n")
    return out
