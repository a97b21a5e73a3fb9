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

import os
import pickle
import sys
import zipfile
from collections import defaultdict
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ..errors import DataError
from .image_files import image_problem

IMAGES_SUBDIR = "flickr8k-resised"
SPLIT_FILES = {
    "train": "flickr8k.TrainImages.txt",
    "dev": "flickr8k.DevImages.txt",
    "test": "flickr8k.TestImages.txt",
}
EMBEDDINGS_PKL = "flickr8k.cmp9137.sentence_transformers.pkl"
EMBEDDINGS_NPZ = "flickr8k.cmp9137.sentence_transformers.npz"  # safe form: no code can ride in it
from ..defaults import EMBEDDING_DIM  # noqa: E402
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
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path.name}:{lineno}"
            try:  # utf-8-sig on line 1: a byte-order mark an editor put there is not part of the first image name
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                shown = raw.rstrip(b"\r\n")[:80].decode("utf-8", "replace")
                problems.add("line that is not UTF-8 (an encoding problem: save the file as UTF-8)",
                             f"{where}: byte {raw[e.start:e.start + 1]!r} at column {e.start + 1}: "
                             f"{shown!r}")
                continue
            if not line.strip():
                continue
            fields = line.split("\t")
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
            if leaves_folder(image):
                problems.add(f"image path leaving the {IMAGES_SUBDIR} folder", f"{where}: {image!r}")
                continue
            image, caption = strings.setdefault(image, image), strings.setdefault(caption, caption)
            triples.append(Triple(image, caption, label == "match", lineno))
    return triples


def leaves_folder(name: str) -> bool:
    """An absolute path, or one that climbs out with '..': an image name names a file inside the images folder."""
    return (PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or name.startswith("~")
            or ".." in PurePosixPath(name.replace("\\", "/")).parts)


def check_pairs(loaded: dict, problems: Problems, warn=None) -> None:
    """A pair labelled both match and no-match is an error naming both lines; an exact repeat of a line
    (the same pair and label, in the same or another split file) is a warning with counts, since the course
    data holds two: each repeat weighs its pair twice, and a repeat across splits lets test see training data.

    Each pair keeps only its first ``Triple``; the split file of an earlier line is looked up for the few
    examples shown, not stored per line (at a million triples that was 140 MB of place strings)."""
    def where(t: Triple) -> str:
        name = next(s.name for s in loaded.values() if any(x is t for x in s.triples))
        return f"{SPLIT_FILES[name]}:{t.line}"

    conflict = "pair labelled both match and no-match"
    first: dict[tuple[str, str], Triple] = {}
    repeats, shown = 0, []
    for split in loaded.values():
        for t in split.triples:
            seen = first.setdefault((t.image, t.caption), t)
            if seen is t:
                continue
            here = f"{SPLIT_FILES[split.name]}:{t.line}"
            if seen.match != t.match:
                problems.add(conflict, f"{where(seen)} ({LABELS[not seen.match]}) and {here} ({LABELS[not t.match]}): "
                                       f"{t.image} {t.caption[:60]!r}"
                             if len(problems.examples[conflict]) < MAX_EXAMPLES_PER_PROBLEM else "")
            else:
                repeats += 1
                if len(shown) < MAX_EXAMPLES_PER_PROBLEM:
                    shown.append(f"{here} repeats {where(seen)}")
    if repeats:
        more = f"; ... and {repeats - len(shown)} more" if repeats > len(shown) else ""
        print(f"warning: {repeats} line(s) repeat an earlier line exactly (used as they are): {'; '.join(shown)}{more}",
              file=warn or sys.stderr, flush=True)


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


def load_embeddings_npz(path: Path, lazy: bool = False):
    """Load ``{caption: vector}`` from an npz holding ``captions`` (str) and ``embeddings`` (float matrix).

    Read with ``allow_pickle=False``: unlike the pickle, this format cannot carry code at all. ``lazy``
    (an uncompressed archive, as ``itm embed`` writes) keeps the matrix in the file: see ``NpzEmbeddings``.
    """
    if lazy:
        table = NpzEmbeddings.open(path)
        if table is not None:
            return table
    try:
        # Opened here, not by np.load: it leaves its own file open when the archive is not a zip (truncated).
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            names = set(z.files)
            captions = z["captions"] if "captions" in names else None
            matrix = z["embeddings"] if "embeddings" in names else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot load embeddings file {path}: {e}") from None
    _check_npz(path, names, captions, matrix)
    matrix = matrix.astype(np.float32, copy=False)
    return {str(c): matrix[i] for i, c in enumerate(captions)}


def _check_npz(path, names, captions, matrix) -> None:
    """``captions`` and ``embeddings`` (arrays, or anything with ``ndim``, ``dtype`` and ``shape``) as they must be."""
    if captions is None or matrix is None:
        raise DataError(f"embeddings file {path} must hold the arrays 'captions' and 'embeddings', "
                        f"found: {', '.join(sorted(names)) or 'none'}")
    if len(captions.shape) != 1 or captions.dtype.kind != "U":
        raise DataError(f"embeddings file {path}: 'captions' must be a 1-d string array, "
                        f"got {captions.dtype} of shape {captions.shape}")
    if len(matrix.shape) != 2 or matrix.shape[0] != captions.shape[0] or matrix.dtype.kind not in "fiu":
        raise DataError(f"embeddings file {path}: 'embeddings' must be a numeric matrix with one row per caption, "
                        f"got {matrix.dtype} of shape {matrix.shape} for {captions.shape[0]} captions")


class _Member:
    """Where an uncompressed .npy member of a zip keeps its data: offset, dtype and shape."""

    def __init__(self, offset, dtype, shape):
        self.offset, self.dtype, self.shape = offset, dtype, shape

    @property
    def ndim(self):
        return len(self.shape)

    @staticmethod
    def find(f, z: zipfile.ZipFile, name: str):
        """The member, or None when it is compressed, Fortran-ordered or holds objects (then read it whole)."""
        info = z.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        f.seek(info.header_offset)
        head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            return None
        f.seek(info.header_offset + 30 + int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little"))
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        return None if fortran or dtype.hasobject else _Member(f.tell(), dtype, shape)


class NpzEmbeddings(MutableMapping):
    """``{caption: float32 vector}`` over an uncompressed npz, reading each vector from the file when asked.

    In memory only a caption -> row dict: at a million triples (400,000 captions) the matrix alone is
    586 MiB, which ``itm shard`` and the data check held for the whole run. Rows are read with ``pread``
    rather than through a memory map, whose touched pages would count in the process's resident memory.
    Vectors set later (``update``) are kept in memory beside the file's."""

    CHUNK = 1 << 16  # captions decoded at a time

    def __init__(self, path: Path, rows: dict[str, int], matrix: _Member):
        self.path, self._rows, self._matrix, self._added = Path(path), rows, matrix, {}
        self._file = open(path, "rb")
        self._row_bytes = int(np.prod(matrix.shape[1:], dtype=np.int64)) * matrix.dtype.itemsize

    @classmethod
    def open(cls, path: Path):
        """The table, or None when the archive is compressed or odd (then it is read whole, as before)."""
        try:
            with open(path, "rb") as f, zipfile.ZipFile(f) as z:
                names = {n.removesuffix(".npy") for n in z.namelist()}
                if not {"captions", "embeddings"} <= names:
                    return None
                captions, matrix = _Member.find(f, z, "captions.npy"), _Member.find(f, z, "embeddings.npy")
                if captions is None or matrix is None:
                    return None
                _check_npz(path, names, captions, matrix)
                end = matrix.offset + int(np.prod(matrix.shape, dtype=np.int64)) * matrix.dtype.itemsize
                if f.seek(0, 2) < end or captions.offset + captions.shape[0] * captions.dtype.itemsize > matrix.offset:
                    return None  # truncated or laid out otherwise: the whole read reports it
                f.seek(captions.offset)
                rows = {}
                for start in range(0, captions.shape[0], cls.CHUNK):
                    count = min(cls.CHUNK, captions.shape[0] - start)
                    chunk = np.frombuffer(f.read(count * captions.dtype.itemsize), captions.dtype, count)
                    rows.update(zip(chunk.tolist(), range(start, start + count)))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None
        return cls(path, rows, matrix)

    def __del__(self):  # the file goes with the table, closed (not left to the garbage collector's warning)
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()

    def __getitem__(self, caption: str) -> np.ndarray:
        if caption in self._added:
            return self._added[caption]
        i = self._rows[caption]
        raw = os.pread(self._file.fileno(), self._row_bytes, self._matrix.offset + i * self._row_bytes)
        return np.frombuffer(raw, self._matrix.dtype).reshape(self._matrix.shape[1:]).astype(np.float32)

    def __setitem__(self, caption: str, vector) -> None:
        self._added[caption] = vector

    def __delitem__(self, caption: str) -> None:
        if self._added.pop(caption, None) is None:
            del self._rows[caption]

    def __contains__(self, caption) -> bool:
        return caption in self._added or caption in self._rows

    def __iter__(self):
        yield from self._rows
        yield from (c for c in self._added if c not in self._rows)

    def __len__(self) -> int:
        return len(self._rows) + sum(c not in self._rows for c in self._added)


def load_embeddings_file(path, lazy: bool = False) -> dict[str, np.ndarray]:
    """Load an embeddings file by its suffix: ``.npz`` (safe archive) or anything else as the pickle.
    ``lazy``: an npz's vectors stay in the file (``NpzEmbeddings``)."""
    path = Path(path)
    return load_embeddings_npz(path, lazy) if path.suffix == ".npz" else load_embeddings_pickle(path)


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
        loaded[name] = Split(name, parse_split_file(path, problems), images_dir)
    check_pairs(loaded, problems)
    for name, split in loaded.items():
        if limit is not None:
            split.triples = split.triples[:limit]
        if not split.triples:
            problems.add("split file with no usable triples", str(data_dir / SPLIT_FILES[name]))

    embeddings = {}
    emb_path = embeddings_path(data_dir) if need_embeddings else None
    if emb_path is not None:
        embeddings = load_embeddings_file(emb_path, lazy=True)
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
