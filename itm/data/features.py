"""Image features cached on disk, so that a frozen encoder runs once per photo.

``FeatureFile`` keeps the features of a folder's image files in one npz per (encoder, folder), each
entry keyed by the file's path, modification time and size: a changed file is encoded again, a
damaged cache file is rebuilt, never trusted. Its users: training on a frozen backbone
(``load_feature_cache``, --cache-features), the evaluation of such a run (``cached_features``, the same file)
and the search index of ``itm.serving.matcher``.
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..errors import DataError
from ..files import atomic_write, cache_dir
from ..log import logger, progress
from .images import decoded_paths


def stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def checksum(features: np.ndarray) -> str:
    """sha256 of a feature matrix's dtype, shape and bytes: what a cache file must still hold to be used."""
    h = hashlib.sha256(f"{features.dtype.str}|{features.shape}|".encode())
    h.update(np.ascontiguousarray(features).tobytes())
    return h.hexdigest()


class FeatureFile:
    """name -> feature vector for the files of one folder, as computed by the encoder named ``key``.

    The file carries the shape and a checksum of its features: a file whose contents do not match them
    (damaged, zeroed, replaced) or whose vectors are not of ``item_shape`` is rebuilt, with a warning;
    ``rebuilt`` says why. The warning goes to ``log``, else to ``sys.stderr`` as it is when the file is opened
    (not as it was at import: a caller that redirects stderr gets the warning)."""

    def __init__(self, path: Path, key: str, item_shape: tuple | None = None, log=None):
        self.path, self.key = Path(path), key
        self.entries: dict[tuple[str, int, int], np.ndarray] = {}
        self.rebuilt = ""
        if self.path.is_file():
            try:
                # Opened here, not by np.load: it leaves its own file open when the archive is not a zip.
                with open(self.path, "rb") as f, np.load(f, allow_pickle=False) as z:
                    if str(z["key"]) == key:
                        features = z["features"]  # read once: each z[...] reads the whole array again
                        self.rebuilt = self._mismatch(z, features, item_shape)
                        if not self.rebuilt:
                            self.entries = {(str(n), int(m), int(s)): features[i]
                                            for i, (n, m, s) in enumerate(zip(z["names"], z["mtimes"], z["sizes"]))}
            except Exception as e:  # noqa: BLE001 numpy and zipfile raise many kinds for a damaged file: a cache is rebuilt
                self.rebuilt = f"unreadable: {type(e).__name__}"
            if self.rebuilt:
                print(f"warning: the feature cache {self.path} cannot be used ({self.rebuilt}): rebuilding it",
                      file=log or sys.stderr, flush=True)

    @staticmethod
    def _mismatch(z, features: np.ndarray, item_shape) -> str:
        if "checksum" not in z.files or "shape" not in z.files:
            return "no checksum: written by an older itm"
        recorded = tuple(int(d) for d in z["shape"])
        if recorded != features.shape:
            return f"features of shape {features.shape}, recorded as {recorded}"
        if str(z["checksum"]) != checksum(features):
            return "its features do not match their checksum: changed or damaged after they were written"
        if len(z["names"]) != len(features):
            return f"{len(z['names'])} names for {len(features)} feature rows"
        if item_shape is not None and len(features) and tuple(features.shape[1:]) != tuple(item_shape):
            return f"vectors of shape {tuple(features.shape[1:])}, the encoder gives {tuple(item_shape)}"
        return ""

    def get(self, name: str, file_stamp: tuple[int, int]):
        return self.entries.get((name, *file_stamp))

    def put(self, name: str, file_stamp: tuple[int, int], vector) -> None:
        self.entries[(name, *file_stamp)] = np.asarray(vector)

    def save(self, keep) -> None:
        """Write the entries of ``keep`` ((name, stamp) pairs) atomically, with their shape and checksum; a
        place that cannot be written costs speed only (one warning line, no partial file)."""
        keep = [(n, s) for n, s in keep if (n, *s) in self.entries]
        features = np.stack([self.entries[(n, *s)] for n, s in keep]) if keep else np.zeros((0,))
        try:
            atomic_write(self.path, lambda f: np.savez(
                f, key=np.array(self.key), names=np.array([n for n, _ in keep], dtype=str),
                mtimes=np.array([s[0] for _, s in keep], np.int64), sizes=np.array([s[1] for _, s in keep], np.int64),
                features=features, shape=np.array(features.shape, np.int64), checksum=np.array(checksum(features))),
                "the feature cache")
        except DataError as e:
            logger.warning(f"warning: {e} (carrying on without it)")


# ---------------------------------------------------------------- a frozen backbone's features for training

class FeatureCache:
    """Every distinct image's pooled backbone features, in memory, as ``itm.data.batches`` takes images;
    with ``mirrored`` features too, training takes either, at random (a flip augmentation)."""
    dtype = "float32"

    def __init__(self, names: list[str], features: np.ndarray, mirrored: np.ndarray | None = None):
        self.names, self.features, self.mirrored = names, features, mirrored
        self.index = {n: i for i, n in enumerate(names)}

    def take(self, names, rng=None) -> np.ndarray:
        rows = [self.index[n] for n in names]
        if rng is None or self.mirrored is None:
            return self.features[rows]
        flip = rng.random(len(rows)) < 0.5
        return np.where(flip[:, None], self.mirrored[rows], self.features[rows])

    @property
    def item_shape(self) -> tuple:
        return tuple(self.features.shape[1:])


def weights_key(model) -> str:
    """A digest of a model's weights: features computed by other weights are never reused."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(np.asarray(w)).tobytes())
    return h.hexdigest()[:16]


def feature_key(backbone, image_tower: str, image_size: int, unfreeze_from=None, pooling: str = "avg") -> str:
    """The cache key of a frozen part's features: the tower, its input size, where it is cut and its weights'
    digest. Training and evaluation both name a cache file by it, so either reuses what the other computed."""
    cut = f"before-{unfreeze_from}" if unfreeze_from else pooling
    return f"{image_tower}-{image_size}px-{cut}-{weights_key(backbone)}"


def cached_features(backbone, key: str, names, images_dir, image_size: int, mirrors: bool = False,
                    what: str = "backbone", batch: int = 64, log=progress) -> FeatureCache:
    """``backbone``'s features of the images ``names`` of ``images_dir`` (and of their mirror images, with
    ``mirrors``), as a ``FeatureCache``: read from ``$ITM_CACHE_DIR/features/`` (one file per ``key`` and
    folder), the missing ones computed in batches with the training pipeline's decoding
    (``preprocess_image``) and added to it. The file keeps the entries of other calls (training's train and
    dev photos, evaluation's test photos) while their files are unchanged."""
    images_dir = Path(images_dir).resolve()
    names = list(dict.fromkeys(names))
    folder_key = hashlib.sha256(str(images_dir).encode()).hexdigest()[:12]
    shape = tuple(backbone.output.shape[1:])
    store = FeatureFile(cache_dir() / "features" / f"{key}-{folder_key}.npz", key,
                        shape if None not in shape else None, log=log)
    stamps = {n: stamp(images_dir / n) for n in names}
    views = {"": lambda x: x, MIRRORED: lambda x: tf.reverse(x, axis=[2])} if mirrors else {"": lambda x: x}
    start = time.perf_counter()
    computed = 0
    encode = None
    for suffix, view in views.items():
        todo = [n for n in names if store.get(n + suffix, stamps[n]) is None]
        if not todo:
            continue
        kind = "mirror images" if suffix else "images"
        print(f"Computing the frozen {what}'s features of {len(todo)} {kind} "
              f"({len(names) - len(todo)} cached in {store.path}) ...", file=log, flush=True)
        encode = encode or frozen_encoder(backbone)
        done, begun = 0, time.perf_counter()
        for pixels in decoded_paths([images_dir / n for n in todo], image_size).batch(batch):
            for n, f in zip(todo[done:done + len(pixels)], np.asarray(encode(view(pixels)))):
                store.put(n + suffix, stamps[n], f)
            done += len(pixels)
            if done % (batch * 10) == 0 or done == len(todo):
                rate = done / (time.perf_counter() - begun)
                print(f"  {done}/{len(todo)} {kind} ({rate:.0f} images/s)", file=log, flush=True)
        computed += len(todo)
    if computed:
        store.save(current_entries(store, images_dir))
    # copy=False: the stacked features are float32 already, and a copy is 1 GiB more at the peak for 200,000
    # photos (a million triples: 4.8 GiB peak after the feature step, measured, with the copy)
    features = {suffix: (np.stack([store.get(n + suffix, stamps[n]) for n in names]) if names
                         else np.zeros((0, *shape), np.float32)).astype(np.float32, copy=False)
                for suffix in views}
    check_finite(features, names, store.path)
    mirrored = ", and mirrored" if len(views) > 1 else ""
    print(f"Backbone features of {len(names)} images ({'x'.join(map(str, features[''].shape[1:]))} each{mirrored}): "
          f"{computed} computed, {len(names) * len(views) - computed} from the cache, in "
          f"{time.perf_counter() - start:.1f} s", file=log, flush=True)
    return FeatureCache(names, features[""], features.get(MIRRORED))


def current_entries(store: FeatureFile, images_dir: Path) -> list:
    """The (name, stamp) of every entry of ``store`` whose image file is still there, unchanged: what a save
    keeps (an entry of a changed or deleted photo is dropped, the others stay for the next caller)."""
    stamps, keep = {}, []
    for name, mtime, size in store.entries:
        image = name[:-len(MIRRORED)] if name.endswith(MIRRORED) else name
        if image not in stamps:
            try:
                stamps[image] = stamp(images_dir / image)
            except OSError:
                stamps[image] = None
        if stamps[image] == (mtime, size):
            keep.append((name, (mtime, size)))
    return keep


def load_feature_cache(model, splits, config, batch: int = 64, log=progress) -> FeatureCache:
    """Training's --cache-features: the frozen backbone's features of every image of ``splits`` (and of its
    mirror image, with ``config.augment``), by ``cached_features``."""
    backbone = model.image_frozen
    key = feature_key(backbone, config.image_tower, config.image_size, config.unfreeze_from, config.backbone_pooling)
    names = [t.image for s in splits for t in s.triples]
    return cached_features(backbone, key, names, splits[0].images_dir, config.image_size, mirrors=config.augment,
                           what=config.image_tower, batch=batch, log=log)


def check_finite(features: dict, names: list[str], path: Path) -> None:
    """NaN or infinite features would train a model that diverges, with the blame on the embeddings: refuse
    them here, naming the cache they are kept in."""
    bad = sorted({names[i] for f in features.values() for i in np.flatnonzero(~np.isfinite(f).reshape(len(f), -1).all(1))})
    if bad:
        raise DataError(f"the image features of {len(bad)} image(s) hold NaN or infinity (e.g. {bad[0]}), in the feature "
                        f"cache {path}: the backbone's weights give non-finite output; delete that file once they are fixed")


MIRRORED = "#mirrored"  # the cache entry of a photo's mirror image (left and right swapped)


def frozen_encoder(model):
    """``model`` in inference mode as a ``tf.function`` traced for the batch shapes it meets: extraction meets
    two (a full batch, then the last one), so it keeps the full batch's shape-specialised graph."""
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)
