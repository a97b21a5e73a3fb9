"""Reading an ITM data folder: split files, sentence embeddings, images, and the tf.data pipeline.

A data folder has the layout of the original CMP9137 baseline::

    DIR/flickr8k-resised/*.jpg
    DIR/flickr8k.{Train,Dev,Test}Images.txt      image<TAB>caption<TAB>match|no-match
    DIR/flickr8k.cmp9137.sentence_transformers.pkl   {caption: float[384]}

Everything is checked up front (``load_data_dir``) and every problem is reported at
once, so that a bad line 19,000 never costs a user a long training run.
"""
from __future__ import annotations

import pickle
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGES_SUBDIR = "flickr8k-resised"
SPLIT_FILES = {
    "train": "flickr8k.TrainImages.txt",
    "dev": "flickr8k.DevImages.txt",
    "test": "flickr8k.TestImages.txt",
}
EMBEDDINGS_PKL = "flickr8k.cmp9137.sentence_transformers.pkl"
EMBEDDING_DIM = 384
LABELS = ("match", "no-match")
MAX_EXAMPLES_PER_PROBLEM = 5


class DataError(Exception):
    """A problem with the user's data: reported as a readable message, never a traceback."""


@dataclass(frozen=True)
class Triple:
    image: str  # file name inside IMAGES_SUBDIR
    caption: str
    match: bool


@dataclass
class Split:
    name: str
    triples: list[Triple]
    images_dir: Path

    @property
    def n_match(self) -> int:
        return sum(t.match for t in self.triples)


class Problems:
    """Collects problems by kind, keeping counts and the first few examples of each."""

    def __init__(self):
        self.counts: dict[str, int] = defaultdict(int)
        self.examples: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < MAX_EXAMPLES_PER_PROBLEM:
            self.examples[kind].append(example)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def report(self, data_dir) -> str:
        total = sum(self.counts.values())
        lines = [f"{total} problem(s) found in data folder {data_dir}:"]
        for kind, count in self.counts.items():
            lines.append(f"  {kind}: {count}")
            lines += [f"    {e}" for e in self.examples[kind]]
            if count > len(self.examples[kind]):
                lines.append(f"    ... and {count - len(self.examples[kind])} more")
        return "\n".join(lines)


# ---------------------------------------------------------------- split files

def parse_split_file(path: Path, problems: Problems) -> list[Triple]:
    """Parse ``image<TAB>caption<TAB>label`` lines; bad lines go to ``problems``."""
    triples = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            where = f"{path.name}:{lineno}"
            if len(fields) != 3:
                problems.add("line without three tab-separated fields",
                             f"{where}: {len(fields)} field(s): {line[:80]!r}")
                continue
            image, caption, label = fields[0].strip(), fields[1], fields[2].strip()
            if label not in LABELS:
                problems.add("label other than match/no-match", f"{where}: {label!r}")
                continue
            if not image or not caption.strip():
                problems.add("empty image name or caption", f"{where}: {line[:80]!r}")
                continue
            triples.append(Triple(image, caption, label == "match"))
    return triples


# ---------------------------------------------------------------- embeddings

class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only numpy arrays and plain containers: a pickle is code, and this one is untrusted."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "float"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays and plain "
                                     "containers are allowed in an embeddings pickle")


def load_embeddings_pickle(path: Path) -> dict[str, np.ndarray]:
    """Load ``{caption: vector}`` from a pickle with a restricted unpickler, and check its type."""
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, ImportError) as e:
        raise DataError(f"cannot load embeddings file {path}: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"embeddings file {path} holds a {type(data).__name__}, expected a dict of caption -> vector")
    out = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise DataError(f"embeddings file {path}: key {key!r} is a {type(key).__name__}, expected a caption string")
        try:
            vector = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(f"embeddings file {path}: the value for caption {key!r} is not numeric") from None
        out[key] = vector
    return out


def load_embeddings(data_dir: Path) -> dict[str, np.ndarray]:
    path = Path(data_dir) / EMBEDDINGS_PKL
    if not path.is_file():
        raise DataError(f"missing embeddings file {path} (a pickled dict caption -> {EMBEDDING_DIM}-d vector); "
                        "see data/README.md")
    return load_embeddings_pickle(path)


# ---------------------------------------------------------------- images

def check_image(path: Path) -> str | None:
    """Return why ``path`` is not a usable image, or None. Decodes at reduced size, so it is cheap."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))
            im.load()
    except FileNotFoundError:
        return "missing"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"not a decodable image ({e})"
    return None


# ---------------------------------------------------------------- whole folder

@dataclass
class DataDir:
    path: Path
    splits: dict[str, Split]
    embeddings: dict[str, np.ndarray]


def load_data_dir(data_dir, limit: int | None = None, splits=("train", "dev", "test"),
                  embedding_dim: int = EMBEDDING_DIM) -> DataDir:
    """Read and check a data folder; raise one ``DataError`` listing every problem found.

    ``limit`` keeps only the first N triples of each split (for quick checks).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist")
    problems = Problems()
    images_dir = data_dir / IMAGES_SUBDIR
    if not images_dir.is_dir():
        problems.add("missing images folder", str(images_dir))

    loaded = {}
    for name in splits:
        path = data_dir / SPLIT_FILES[name]
        if not path.is_file():
            problems.add("missing split file", str(path))
            continue
        triples = parse_split_file(path, problems)
        if limit is not None:
            triples = triples[:limit]
        if not triples:
            problems.add("split file with no usable triples", str(path))
        loaded[name] = Split(name, triples, images_dir)

    embeddings = {}
    emb_path = data_dir / EMBEDDINGS_PKL
    if not emb_path.is_file():
        problems.add("missing embeddings file", str(emb_path))
    else:
        embeddings = load_embeddings_pickle(emb_path)

    if images_dir.is_dir():
        seen = {}
        for split in loaded.values():
            for t in split.triples:
                if t.image not in seen:
                    seen[t.image] = (check_image(images_dir / t.image), split.name)
        for image, (why, split_name) in seen.items():
            if why:
                kind = "missing image" if why == "missing" else "undecodable image"
                problems.add(kind, f"{images_dir / image} (used in {SPLIT_FILES[split_name]})" +
                             ("" if why == "missing" else f": {why}"))

    if emb_path.is_file():
        checked = set()
        for split in loaded.values():
            for t in split.triples:
                if t.caption in checked:
                    continue
                checked.add(t.caption)
                vector = embeddings.get(t.caption)
                if vector is None:
                    problems.add("caption missing from the embeddings", f"{SPLIT_FILES[split.name]}: {t.caption!r}")
                elif vector.shape != (embedding_dim,):
                    problems.add(f"embedding not of size {embedding_dim}", f"{t.caption!r}: shape {vector.shape}")

    if problems:
        raise DataError(problems.report(data_dir))
    return DataDir(data_dir, loaded, embeddings)


# ---------------------------------------------------------------- tf.data

def make_dataset(split: Split, embeddings: dict[str, np.ndarray], batch_size: int = 16, shuffle: bool = True,
                 seed: int | None = None, image_size: int = 224):
    """The original's pipeline: one JPEG decode per triple, shuffled, batched, prefetched.

    Yields ``(features, label)`` with features ``image_input`` (float32 in [0, 1]),
    ``text_embedding`` (384), ``caption`` and ``file_name``; label one-hot, match = [1, 0].
    """
    import tensorflow as tf

    paths = [str(split.images_dir / t.image) for t in split.triples]
    vectors = np.stack([embeddings[t.caption] for t in split.triples]).astype(np.float32)
    captions = [t.caption for t in split.triples]
    labels = np.array([[1, 0] if t.match else [0, 1] for t in split.triples], dtype=np.float32)

    def process_input(path, vector, caption, label):
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        img = tf.image.resize(img, (image_size, image_size))  # float32 in [0, 255]
        img = img / 255.0
        features = {"image_input": img, "text_embedding": vector, "caption": caption, "file_name": path}
        return features, label

    ds = tf.data.Dataset.from_tensor_slices((paths, vectors, captions, labels))
    if shuffle:
        ds = ds.shuffle(batch_size * 8, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(process_input, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def model_inputs(ds, names=("image_input", "text_embedding")):
    """Keep only the features the model takes (caption and file name are for people)."""
    return ds.map(lambda features, label: ({k: features[k] for k in names}, label))
