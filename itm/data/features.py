"""Image features cached on disk, so that a frozen encoder runs once per photo.

``FeatureFile`` keeps the features of a folder's image files in one npz per (encoder, folder), each
entry keyed by the file's path, modification time and size: a changed file is encoded again, a
damaged cache file is rebuilt, never trusted. Two users share it: training on a frozen backbone
(``load_feature_cache``, --cache-features) and the search index of ``itm.serving.matcher``.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from ..files import cache_dir


def stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


class FeatureFile:
    """name -> feature vector for the files of one folder, as computed by the encoder named ``key``."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = Path(path), key
        self.entries: dict[tuple[str, int, int], np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    if str(z["key"]) == key:
                        features = z["features"]  # read once: each z[...] reads the whole array again
                        self.entries = {(str(n), int(m), int(s)): features[i]
                                        for i, (n, m, s) in enumerate(zip(z["names"], z["mtimes"], z["sizes"]))}
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                self.entries = {}

    def get(self, name: str, file_stamp: tuple[int, int]):
        return self.entries.get((name, *file_stamp))

    def put(self, name: str, file_stamp: tuple[int, int], vector) -> None:
        self.entries[(name, *file_stamp)] = np.asarray(vector)

    def save(self, keep) -> None:
        """Write the entries of ``keep`` ((name, stamp) pairs) atomically; a read-only place costs speed only."""
        keep = [(n, s) for n, s in keep if (n, *s) in self.entries]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".npz", dir=self.path.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, key=np.array(self.key), names=np.array([n for n, _ in keep], dtype=str),
                         mtimes=np.array([s[0] for _, s in keep], np.int64),
                         sizes=np.array([s[1] for _, s in keep], np.int64),
                         features=np.stack([self.entries[(n, *s)] for n, s in keep]) if keep else np.zeros((0,)))
            os.replace(tmp, self.path)
        except OSError as e:
            print(f"warning: cannot write the feature cache {self.path}: {e}", file=sys.stderr)


# ---------------------------------------------------------------- a frozen backbone's features for training

class FeatureCache:
    """Every distinct image's pooled backbone features, in memory, as ``itm.data.batches`` takes images."""
    dtype = "float32"

    def __init__(self, names: list[str], features: np.ndarray):
        self.names, self.features = names, features
        self.index = {n: i for i, n in enumerate(names)}

    def take(self, names) -> np.ndarray:
        return self.features[[self.index[n] for n in names]]

    @property
    def item_shape(self) -> tuple:
        return tuple(self.features.shape[1:])


def weights_key(model) -> str:
    """A digest of a model's weights: features computed by other weights are never reused."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(np.asarray(w)).tobytes())
    return h.hexdigest()[:16]


def load_feature_cache(model, splits, config, batch: int = 64, log=sys.stdout) -> FeatureCache:
    """The frozen backbone's pooled features of every image of ``splits``: read from
    ``$ITM_CACHE_DIR/features/``, the missing ones computed in batches with the training pipeline's
    decoding (``preprocess_image``) and added to it."""
    from ..models.classifier import backbone_split
    from .images import decoded_paths

    backbone = backbone_split(model)[0]
    images_dir = Path(splits[0].images_dir).resolve()
    names = list(dict.fromkeys(t.image for s in splits for t in s.triples))
    key = f"{config.image_tower}-{config.image_size}px-{weights_key(backbone)}"
    folder_key = hashlib.sha256(str(images_dir).encode()).hexdigest()[:12]
    store = FeatureFile(cache_dir() / "features" / f"{key}-{folder_key}.npz", key)
    stamps = {n: stamp(images_dir / n) for n in names}
    todo = [n for n in names if store.get(n, stamps[n]) is None]
    start = time.perf_counter()
    if todo:
        print(f"Computing the frozen {config.image_tower}'s features of {len(todo)} images "
              f"({len(names) - len(todo)} cached in {store.path}) ...", file=log, flush=True)
        encode = _traced(backbone)
        done = 0
        for pixels in decoded_paths([images_dir / n for n in todo], config.image_size).batch(batch):
            for n, f in zip(todo[done:done + len(pixels)], np.asarray(encode(pixels))):
                store.put(n, stamps[n], f)
            done += len(pixels)
            if done % (batch * 10) == 0 or done == len(todo):
                rate = done / (time.perf_counter() - start)
                print(f"  {done}/{len(todo)} images ({rate:.0f} images/s)", file=log, flush=True)
        store.save([(n, stamps[n]) for n in names])
    features = np.stack([store.get(n, stamps[n]) for n in names]).astype(np.float32)
    print(f"Backbone features of {len(names)} images ({features.shape[1]} each): {len(todo)} computed, "
          f"{len(names) - len(todo)} from the cache, in {time.perf_counter() - start:.1f} s", file=log, flush=True)
    return FeatureCache(names, features)


def _traced(model):
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)
