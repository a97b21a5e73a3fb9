"""More matching captions for the *training* images, from a raw caption file (Flickr8k.token.txt).

The CMP9137 split keeps about three of each Flickr8k image's five captions. The other two are free
training signal: the contrastive objective draws each step's caption for an image from all of its
captions. Only images of the train split take captions from the file, so dev and test stay unseen.

Their sentence embeddings are computed once with itm's all-MiniLM-L6-v2 (``itm.data.embed``) and kept in
``$ITM_CACHE_DIR/extra-captions-<hash>.npz`` (``~/.cache/itm`` by default).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from ..log import progress
from ..errors import DataError, MissingExtra
from ..files import cache_dir
from ..models.encoders import make_encoder
from .embed import encode_with_progress, write_embeddings
from .folder import Problems, Split, load_embeddings_file
from .prepare import parse_token_file

AUTO = "auto"  # the data folder's own Flickr8k.token.txt, when it has one
TOKEN_FILE = "Flickr8k.token.txt"


def resolve(setting: str | None, data_dir: Path) -> Path | None:
    """The caption file that ``--extra-captions`` names: none, auto (DATA_DIR/Flickr8k.token.txt if there), or a path."""
    if not setting or setting == "none":
        return None
    if setting == AUTO:
        path = Path(data_dir) / TOKEN_FILE
        return path if path.is_file() else None
    path = Path(setting).expanduser()
    if not path.is_file():
        raise DataError(f"--extra-captions {setting}: no such file")
    return path


def _key(caption: str) -> str:
    """Captions compared without case, spaces or punctuation (the split files dropped some of it)."""
    return re.sub(r"[^a-z0-9]", "", caption.lower())


def extra_positives(path: Path, train: Split) -> dict[str, list[str]]:
    """Each training image's captions in ``path`` that the split does not already hold."""
    by_image = parse_token_file(Path(path), Problems())  # quirks are read anyway; the split was checked
    train_images = {t.image for t in train.triples}
    known = {_key(t.caption) for t in train.triples}
    out = {}
    for image, captions in by_image.items():
        if image in train_images:
            new = [c for c in captions if _key(c) not in known]
            if new:
                out[image] = new
    if not out:
        raise DataError(f"--extra-captions {path}: no new captions for the {len(train_images)} training images "
                        "(is it the caption file of this dataset, lines image.jpg#N<TAB>caption?)")
    return out


def embed_cached(captions: list[str], log=progress) -> dict[str, np.ndarray]:
    """Sentence embeddings of ``captions``, computed once and then read from the cache file."""
    digest = hashlib.sha256("\n".join(sorted(captions)).encode()).hexdigest()[:16]
    path = cache_dir() / f"extra-captions-{digest}.npz"
    if path.is_file():
        return load_embeddings_file(path)
    print(f"Embedding {len(captions)} extra captions with all-MiniLM-L6-v2 (once; cached in {path}) ...",
          file=log, flush=True)
    try:
        encode = make_encoder()
    except MissingExtra as e:
        raise MissingExtra(f"embedding the extra captions: {e}; or pass --extra-captions none") from None
    vectors = dict(zip(captions, encode_with_progress(captions, encode, out=log)))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_embeddings(path, vectors)
    return vectors


def load_extra_captions(setting: str | None, data_dir: Path, train: Split, log=progress):
    """``--extra-captions``: (image -> its new captions, caption -> embedding), or None when there are none."""
    path = resolve(setting, data_dir)
    if path is None:
        return None
    positives = extra_positives(path, train)
    vectors = embed_cached(sorted({c for cs in positives.values() for c in cs}), log=log)
    print(f"Extra captions: {sum(map(len, positives.values()))} more matching captions for {len(positives)} "
          f"training images, from {path}", file=log, flush=True)
    return positives, vectors
