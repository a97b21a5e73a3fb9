"""A small synthetic image-caption dataset in exactly the Flickr8k ITM layout.

Each image is one coloured shape on a plain background ("a red circle on a grey
background"). The demo is honest: every no-match caption differs from the image in
exactly one attribute, each caption is a match for some images and a no-match for
others about equally often, and each training image has as many match as no-match
triples. No prior about the caption alone or the image alone can answer; only a model
that relates the two can.

The captions' all-MiniLM-L6-v2 embeddings were computed once with sentence-transformers
(``python scripts/make_demo_data.py --embed-captions``) and are committed in
``itm/assets/demo_captions.npz``, so generating the demo needs no torch.
"""
from __future__ import annotations

import pickle
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .. import output_folder
from ..errors import DataError
from ..files import cache_dir, cause, default_mode
from ..log import logger
from .folder import EMBEDDINGS_PKL, IMAGES_SUBDIR, SPLIT_FILES

COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 80, 215),
           "yellow": (235, 205, 40), "purple": (140, 60, 180), "orange": (245, 135, 30)}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUNDS = {"white": (240, 240, 240), "grey": (125, 125, 125), "black": (20, 20, 20)}
TEMPLATES = ("a {colour} {shape} on a {background} background", "a {background} background with a {colour} {shape}")
ASSET = Path(__file__).parents[1] / "assets" / "demo_captions.npz"
MARKER = "ITM-DEMO.txt"  # in every demo folder, so that a run trained on it can say so
MARKER_TEXT = "The synthetic demo dataset of itm (itm/data/demo.py): coloured shapes, not photos.\n"
DEMO_VERSION = "v2"
# (images per split, match triples per image, no-match triples per image); dev/test imitate the
# imbalance of the real test split (75% no-match), train is balanced as the real train split.
DEFAULT_SIZES = {"train": (240, 2, 2), "dev": (60, 1, 3), "test": (60, 1, 3)}

Attrs = tuple[str, str, str]  # colour, shape, background


def all_captions() -> list[str]:
    return [t.format(colour=c, shape=s, background=b)
            for c in COLOURS for s in SHAPES for b in BACKGROUNDS for t in TEMPLATES]


def caption_for(attrs: Attrs, template: int) -> str:
    colour, shape, background = attrs
    return TEMPLATES[template].format(colour=colour, shape=shape, background=background)


def one_attribute_off(attrs: Attrs) -> list[Attrs]:
    """Every attribute triple that differs from ``attrs`` in exactly one place."""
    colour, shape, background = attrs
    return ([(c, shape, background) for c in COLOURS if c != colour]
            + [(colour, s, background) for s in SHAPES if s != shape]
            + [(colour, shape, b) for b in BACKGROUNDS if b != background])


def draw_image(attrs: Attrs, rng: random.Random, size: int = 224):
    """One shape of a random size and place, with slightly jittered colours."""
    def jitter(rgb):
        return tuple(max(0, min(255, v + rng.randint(-12, 12))) for v in rgb)

    colour, shape, background = attrs
    im = Image.new("RGB", (size, size), jitter(BACKGROUNDS[background]))
    draw = ImageDraw.Draw(im)
    r = rng.uniform(0.15, 0.3) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = jitter(COLOURS[colour])
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=fill)
    return im


def load_caption_embeddings() -> dict[str, np.ndarray]:
    with np.load(ASSET) as z:
        return {str(c): v.astype(np.float32) for c, v in zip(z["captions"], z["embeddings"])}


def generate(out_dir, sizes: dict | None = None, seed: int = 0, image_size: int = 224) -> Path:
    """Write a demo dataset to ``out_dir`` (created); the same arguments give the same files. Only into a new
    or empty folder, or an earlier demo folder (its ``ITM-DEMO.txt``): never a user's folder."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    out = Path(out_dir)
    output_folder.check(out, DEMO, "--out")
    (out / IMAGES_SUBDIR).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    combos = [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]
    image_id = 0
    for split, (n_images, n_match, n_nomatch) in sizes.items():
        lines = []
        for _ in range(n_images):
            attrs = rng.choice(combos)
            name = f"demo_{split}_{image_id:05d}.jpg"
            image_id += 1
            draw_image(attrs, rng, image_size).save(out / IMAGES_SUBDIR / name, quality=90)
            first = rng.randrange(len(TEMPLATES))  # so that no wording is a tell of either label
            for k in range(n_match):
                lines.append(f"{name}\t{caption_for(attrs, (first + k) % len(TEMPLATES))}\tmatch")
            for wrong in rng.sample(one_attribute_off(attrs), n_nomatch):
                lines.append(f"{name}\t{caption_for(wrong, rng.randrange(len(TEMPLATES)))}\tno-match")
        (out / SPLIT_FILES[split]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(out / EMBEDDINGS_PKL, "wb") as f:
        pickle.dump(load_caption_embeddings(), f)
    (out / MARKER).write_text(MARKER_TEXT)
    return out


def is_demo(data_dir) -> bool:
    return (Path(data_dir) / MARKER).is_file()


DEMO = output_folder.Kind("demo", "the demo data generator", "a demo data folder", legacy=is_demo)


def ensure_demo_data() -> Path:
    """The bundled demo dataset, generated on first use into the cache folder (atomically: built in a
    hidden folder, renamed when whole). A cache folder that cannot be written is one DataError."""
    target = cache_dir() / f"demo-{DEMO_VERSION}"
    if (target / EMBEDDINGS_PKL).is_file():
        if not is_demo(target):  # generated before demo folders carried their marker
            try:
                (target / MARKER).write_text(MARKER_TEXT)
            except OSError:
                pass  # read-only: the marker only labels runs as demo runs
        return target
    tmp = None
    if target.parent.exists() and not target.parent.is_dir():
        raise DataError(f"the cache folder {target.parent} (ITM_CACHE_DIR, else ~/.cache/itm) is a file, not a folder: "
                        "set ITM_CACHE_DIR to a folder that can be written, or pass --data-dir")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        logger.info(f"Generating the demo dataset into {target} (once) ...")
        tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
        tmp.chmod(default_mode(0o777))  # mkdtemp's 0700 would hide the demo from the other users of a shared cache
        generate(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not (target / EMBEDDINGS_PKL).is_file():
                raise
    except OSError as e:
        where = e.filename or target
        raise DataError(f"cannot write the demo dataset into {where}: {cause(e)}; set ITM_CACHE_DIR to a folder "
                        "that can be written, or pass --data-dir") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def attributes_of(caption: str) -> Attrs | None:
    """The (colour, shape, background) a demo caption names (either template), or None for another caption."""
    words = caption.split()
    found = [next((w for w in words if w in names), None) for names in (COLOURS, SHAPES, BACKGROUNDS)]
    return None if None in found else tuple(found)


def shape_mask(pixels: np.ndarray, attrs: Attrs) -> np.ndarray:
    """Where a demo image's shape is: the pixels (HxWx3) nearer the shape's colour than the background's. The
    jitter (12 per channel) and JPEG's blur are small next to the distance between any colour and background."""
    colour, _, background = attrs
    x = pixels.astype(np.float32)
    near = np.linalg.norm(x - np.float32(COLOURS[colour]), axis=-1)
    far = np.linalg.norm(x - np.float32(BACKGROUNDS[background]), axis=-1)
    return near < far
