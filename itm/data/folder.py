"""Reading an ITM data folder: split files, sentence embeddings and image names, all checked.

A data folder has the layout of the original CMP9137 baseline::

    DIR/flickr8k-resised/*.jpg
    DIR/flickr8k.{Train,Dev,Test}Images.txt      image<TAB>caption<TAB>match|no-match
    DIR/flickr8k.cmp9137.sentence_transformers.pkl   {caption: float[384]}
    DIR/flickr8k.cmp9137.sentence_transformers.npz   (or) captions + float32 matrix; preferred

Everything is checked up front (``load_data_dir``) and every problem is reported at
once, with its file and line, so that a bad line 19,000 never costs a user a long training run.
Images are checked by the same rule the pipelines and inference decode with (``itm.data.images``).
"""
from __future__ import annotations

import pickle
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import image_problem

IMAGES_SUBDIR = "flickr8k-resised"
SPLIT_FILES = {
    "train": "flickr8k.TrainImages.txt",
    "dev": "flickr8k.DevImages.txt",
    "test": "flickr8k.TestImages.txt",
}
EMBEDDINGS_PKL = "flickr8k.cmp9137.sentence_transformers.pkl"
EMBEDDINGS_NPZ = "flickr8k.cmp9137.sentence_transformers.npz"  # safe form: no code can ride in it
from ..models.encoders import EMBEDDING_DIM  # noqa: E402
LABELS = ("match", "no-match")
MAX_EXAMPLES_PER_PROBLEM = 5


@dataclass(frozen=True, slots=True)  # slots: 64 bytes a triple, not 352 (a __dict__ each)
class Triple:
    image: str  # file name inside IMAGES_SUBDIR
    caption: str
    match: bool
    line: int = field(default=0, compare=False)  # where it stands in its split file, for messages


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
    """Parse ``image<TAB>caption<TAB>label`` lines; bad lines go to ``problems``.

    An image name (on about five lines) or a caption (on one to three) that repeats is kept as one
    string object, not one per line: a split of a million triples holds 200,000 names, not a million."""
    triples = []
    strings: dict[str, str] = {}
    # utf-8-sig: a byte-order mark that an editor put at the start is not part of the first image name
    with open(path, encoding="utf-8-sig", errors="replace") as f:
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
            image, caption = strings.setdefault(image, image), strings.setdefault(caption, caption)
            triples.append(Triple(image, caption, label == "match", lineno))
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


def load_embeddings_npz(path: Path) -> dict[str, np.ndarray]:
    """Load ``{caption: vector}`` from an npz holding ``captions`` (str) and ``embeddings`` (float matrix).

    Read with ``allow_pickle=False``: unlike the pickle, this format cannot carry code at all.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            captions = z["captions"] if "captions" in names else None
            matrix = z["embeddings"] if "embeddings" in names else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot load embeddings file {path}: {e}") from None
    if captions is None or matrix is None:
        raise DataError(f"embeddings file {path} must hold the arrays 'captions' and 'embeddings', "
                        f"found: {', '.join(sorted(names)) or 'none'}")
    if captions.ndim != 1 or captions.dtype.kind != "U":
        raise DataError(f"embeddings file {path}: 'captions' must be a 1-d string array, "
                        f"got {captions.dtype} of shape {captions.shape}")
    if matrix.ndim != 2 or matrix.shape[0] != len(captions) or matrix.dtype.kind not in "fiu":
        raise DataError(f"embeddings file {path}: 'embeddings' must be a numeric matrix with one row per caption, "
                        f"got {matrix.dtype} of shape {matrix.shape} for {len(captions)} captions")
    matrix = matrix.astype(np.float32, copy=False)
    return {str(c): matrix[i] for i, c in enumerate(captions)}


def load_embeddings_file(path) -> dict[str, np.ndarray]:
    """Load an embeddings file by its suffix: ``.npz`` (safe archive) or anything else as the pickle."""
    path = Path(path)
    return load_embeddings_npz(path) if path.suffix == ".npz" else load_embeddings_pickle(path)


def embeddings_path(data_dir) -> Path | None:
    """The embeddings file a data folder holds: the npz when present (safe), else the pickle, else None."""
    for name in (EMBEDDINGS_NPZ, EMBEDDINGS_PKL):
        if (Path(data_dir) / name).is_file():
            return Path(data_dir) / name
    return None


def load_embeddings(data_dir: Path) -> dict[str, np.ndarray]:
    path = embeddings_path(data_dir)
    if path is None:
        raise DataError(f"missing embeddings file {Path(data_dir) / EMBEDDINGS_NPZ} or {EMBEDDINGS_PKL} "
                        f"(caption -> {EMBEDDING_DIM}-d vector); 'itm embed --data-dir {data_dir}' computes it, "
                        "see data/README.md")
    return load_embeddings_file(path)


# ---------------------------------------------------------------- whole folder

@dataclass
class DataDir:
    path: Path
    splits: dict[str, Split]
    embeddings: dict[str, np.ndarray]


def load_data_dir(data_dir, limit: int | None = None, splits=("train", "dev", "test"),
                  embedding_dim: int = EMBEDDING_DIM, need_embeddings: bool = True) -> DataDir:
    """Read and check a data folder; raise one ``DataError`` listing every problem found.

    ``limit`` keeps only the first N triples of each split (for quick checks). Models whose text
    tower reads raw captions pass ``need_embeddings=False``: then no embeddings file is required.
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
    emb_path = embeddings_path(data_dir) if need_embeddings else None
    if emb_path is not None:
        embeddings = load_embeddings_file(emb_path)
    elif need_embeddings:
        problems.add("missing embeddings file", f"{data_dir / EMBEDDINGS_NPZ} or {EMBEDDINGS_PKL} "
                                                f"('itm embed --data-dir {data_dir}' computes it)")

    if images_dir.is_dir():
        seen = set()
        for split in loaded.values():
            for t in split.triples:
                if t.image in seen:
                    continue
                seen.add(t.image)
                why = image_problem(images_dir / t.image)
                if why:
                    kind = "missing image" if why == "missing" else "unusable image"
                    problems.add(kind, f"{SPLIT_FILES[split.name]}:{t.line}: {images_dir / t.image}"
                                 + ("" if why == "missing" else f": {why}"))

    if emb_path is not None:
        checked = set()
        for split in loaded.values():
            for t in split.triples:
                if t.caption in checked:
                    continue
                checked.add(t.caption)
                vector = embeddings.get(t.caption)
                where = f"{SPLIT_FILES[split.name]}:{t.line}"
                if vector is None:
                    problems.add("caption missing from the embeddings", f"{where}: {t.caption!r}")
                elif vector.shape != (embedding_dim,):
                    problems.add(f"embedding not of size {embedding_dim}", f"{where}: {t.caption!r}: shape {vector.shape}")
                elif not np.isfinite(vector).all():
                    problems.add(f"embedding with NaN or infinity (in {emb_path.name})", f"{where}: {t.caption!r}")

    if problems:
        raise DataError(problems.report(data_dir))
    return DataDir(data_dir, loaded, embeddings)
