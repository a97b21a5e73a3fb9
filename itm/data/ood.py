"""``itm ood-split``: matching measured on photos unlike the training split's, in the course's format.

The CMP9137 subset holds every Flickr8k photo with a dog in it, and its dev and test splits come from
that same subset, so they measure matching on familiar content only. From a folder of other photos
(e.g. ``flickr8k-more``: 3,000 Flickr8k photos with no dog) and the Flickr8k caption file, this builds:

* ``OUT``: an evaluation folder of ``--photos`` photos, each with one of its own captions as match and
  ``--negatives`` captions of other photos of the folder as no-match (``flickr8k.TestImages.txt``),
  and the captions' embeddings (``itm embed``). Score a run on it with ``itm evaluate --run RUN
  --data-dir OUT``, at the run's dev-calibrated threshold.
* with ``--protocol``: the field's retrieval protocol instead (Flickr8k's 1,000 test photos x 5 captions):
  ``--photos`` photos (default 1,000), every caption of each as a match line and no no-match lines.
  ``itm evaluate`` then reports image->text and text->image recall (binary metrics need two classes).
* with ``--train-out DIR --course COURSE``: a training folder for a recipe on more varied photos: the
  course folder's splits, plus every other photo of ``--images`` (never one of ``OUT``'s) in the train
  split with all its captions as match and as many no-match ones. Dev and test stay the course's. The
  caption file is linked in beside them, so ``--extra-captions auto`` finds every caption of the course photos.

Every draw comes from one ``random.Random(seed)`` over sorted names, so the same inputs give the same
folders.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from .. import output_folder
from ..defaults import OOD_NEGATIVES as DEFAULT_NEGATIVES, OOD_PHOTOS as DEFAULT_PHOTOS, PROTOCOL_PHOTOS
from ..log import logger
from ..errors import DataError
from .embed import embed_data_dir, write_embeddings
from .folder import (EMBEDDINGS_NPZ, IMAGES_SUBDIR, SPLIT_FILES, Problems, embeddings_path, load_data_dir,
                     load_embeddings_file, parse_split_file)
from .extra_captions import TOKEN_FILE
from .prepare import draw_negatives, read_captions, resolve_images, write_split_file

# What it writes: an evaluation folder (--out) and a training folder (--train-out), each only into a new or
# empty folder or its own earlier output of the same kind (itm.output_folder).
EVALUATION = output_folder.Kind("ood-split", "itm ood-split", "an evaluation folder")
TRAINING = output_folder.Kind("ood-split-train", "itm ood-split --train-out", "a training folder")


def _log(message: str) -> None:
    logger.info(message)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows (no second copy of the photo), else a copy."""
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _lines(images, captions, matches, negatives):
    return ([f"{i}\t{c}\tmatch" for i in images for c in matches[i]]
            + [f"{i}\t{c}\tno-match" for i in images for c in negatives[i]])


def images_of(folder) -> set[str]:
    """The photos that a data folder's split files name (whichever of the three it has)."""
    found = [Path(folder) / name for name in SPLIT_FILES.values() if (Path(folder) / name).is_file()]
    if not found:
        raise DataError(f"--exclude {folder}: no split files ({', '.join(SPLIT_FILES.values())}) there")
    problems = Problems()
    return {t.image for path in found for t in parse_split_file(path, problems)}


def ood_split(captions_file, images_dir, out, photos: int | None = None, negatives: int = DEFAULT_NEGATIVES,
              seed: int = 0, exclude=(), train_out=None, course=None, embed: bool = True,
              protocol: bool = False) -> Path:
    """Build ``out`` (and ``train_out``); see the module docstring. Returns ``out``.

    The photos are drawn first, the same way with or without ``protocol``, so a protocol folder of N
    photos holds every photo of a pair folder of fewer photos made with the same seed and exclusions."""
    captions_file, images_dir, out = Path(captions_file), Path(images_dir), Path(out)
    if photos is None:
        photos = PROTOCOL_PHOTOS if protocol else DEFAULT_PHOTOS
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist")
    if (train_out is None) != (course is None):
        raise DataError("--train-out and --course go together: the training folder is the course folder's splits "
                        "plus the photos left over")
    output_folder.check_apart({"--out": out, "--train-out": train_out},
                              [("--images", images_dir), ("--captions", captions_file), ("--course", course),
                               *(("--exclude", folder) for folder in exclude)])
    output_folder.check(out, EVALUATION, "--out")
    if train_out is not None:
        output_folder.check(train_out, TRAINING, "--train-out")
    problems = Problems()
    captions = resolve_images(read_captions("flickr8k", captions_file, problems), images_dir, problems)
    excluded = set()
    for folder in [*exclude, *([course] if course else [])]:
        excluded |= images_of(folder)
    candidates = sorted(n for n in captions if n not in excluded)
    if len(candidates) < photos + 2:
        raise DataError(f"{images_dir} has {len(candidates)} usable photos with captions (outside --exclude), "
                        f"fewer than --photos {photos} + 2")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(candidates, photos))
    if protocol:  # every caption of each photo, once; no no-match lines
        match = {i: list(dict.fromkeys(captions[i])) for i in chosen}
        no_match = {i: [] for i in chosen}
    else:
        match = {i: [rng.choice(captions[i])] for i in chosen}
        no_match = draw_negatives(chosen, captions, negatives, rng, problems)
    output_folder.claim(out, EVALUATION, "--out")
    output_folder.record(out, EVALUATION, IMAGES_SUBDIR, SPLIT_FILES["test"], EMBEDDINGS_NPZ)
    (out / IMAGES_SUBDIR).mkdir(parents=True, exist_ok=True)
    for name in chosen:
        _link_or_copy(images_dir / name, out / IMAGES_SUBDIR / name)
    lines = _lines(chosen, captions, match, no_match)
    write_split_file(out, "test", lines)
    matches = sum(len(m) for m in match.values())
    _log(f"wrote {out}: {photos} photos, {len(lines)} triples ({matches} match"
         f"{', the retrieval protocol' if protocol else ''}) in {SPLIT_FILES['test']}")
    if embed:
        embed_data_dir(out)

    if train_out is not None:
        course, train_out = Path(course), Path(train_out)
        rest = sorted(set(candidates) - set(chosen))
        data = load_data_dir(course, need_embeddings=False)
        output_folder.claim(train_out, TRAINING, "--train-out")
        output_folder.record(train_out, TRAINING, IMAGES_SUBDIR, *SPLIT_FILES.values(), TOKEN_FILE, EMBEDDINGS_NPZ)
        (train_out / IMAGES_SUBDIR).mkdir(parents=True, exist_ok=True)
        for split in data.splits.values():
            for name in {t.image for t in split.triples}:
                _link_or_copy(split.images_dir / name, train_out / IMAGES_SUBDIR / name)
        for name in rest:
            _link_or_copy(images_dir / name, train_out / IMAGES_SUBDIR / name)
        # the caption file beside the splits: --extra-captions auto then gives the course photos all their captions
        _link_or_copy(captions_file, train_out / TOKEN_FILE)
        rest_negatives = draw_negatives(rest, captions, 5, rng, problems)
        extra = _lines(rest, captions, {i: captions[i] for i in rest},
                       {i: rest_negatives[i][:len(captions[i])] for i in rest})
        for split in data.splits.values():
            own = [f"{t.image}\t{t.caption}\t{'match' if t.match else 'no-match'}" for t in split.triples]
            write_split_file(train_out, split.name, own + (extra if split.name == "train" else []))
        _log(f"wrote {train_out}: the course's splits, and {len(rest)} more photos ({len(extra)} triples) in its "
             "train split")
        if embed:
            known = embeddings_path(course)
            if known is not None and not (train_out / EMBEDDINGS_NPZ).exists():  # embed only the new captions
                write_embeddings(train_out / EMBEDDINGS_NPZ, load_embeddings_file(known))
            embed_data_dir(train_out)
    for kind, count in problems.counts.items():
        _log(f"note: {kind}: {count}")
    return out
