"""``itm embed``: one sentence embedding per distinct caption of a data folder's split files.

The encoder (caption list -> float32 matrix) is kept apart from the file handling, so that another
backend can plug in without touching how files are read, reused and written.
"""
from __future__ import annotations

import pickle
import time
import zipfile
from pathlib import Path

import numpy as np

from ..log import progress
from ..errors import DataError
from ..files import atomic_write
from ..models.encoders import DEFAULT_BATCH_SIZE, Encoder, default_backend, make_encoder
from .folder import EMBEDDINGS_NPZ, SPLIT_FILES, Problems, load_embeddings_file, parse_split_file


def split_captions(data_dir) -> list[str]:
    """Every distinct caption of the split files present in ``data_dir``, sorted."""
    data_dir = Path(data_dir)
    problems = Problems()
    captions = set()
    found = [data_dir / name for name in SPLIT_FILES.values() if (data_dir / name).is_file()]
    if not found:
        raise DataError(f"no split files ({', '.join(SPLIT_FILES.values())}) in {data_dir}")
    for path in found:
        captions.update(t.caption for t in parse_split_file(path, problems))
    if problems:
        raise DataError(problems.report(data_dir))
    if not captions:
        raise DataError(f"the split files in {data_dir} hold no captions")
    return sorted(captions)


def encode_with_progress(captions: list[str], encode: Encoder, chunk: int = 1024, out=progress) -> np.ndarray:
    """Encode in chunks, longest first (less padding per batch), printing progress after each chunk."""
    order = sorted(range(len(captions)), key=lambda i: (-len(captions[i]), i))
    result = None
    start = time.monotonic()
    for lo in range(0, len(order), chunk):
        idx = order[lo:lo + chunk]
        vectors = np.asarray(encode([captions[i] for i in idx]), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(idx):
            raise DataError(f"the encoder returned shape {vectors.shape} for {len(idx)} captions")
        if result is None:
            result = np.empty((len(captions), vectors.shape[1]), dtype=np.float32)
        result[idx] = vectors
        done = lo + len(idx)
        rate = done / max(time.monotonic() - start, 1e-9)
        print(f"  embedded {done}/{len(captions)} captions ({rate:.0f}/s)", file=out, flush=True)
    return result if result is not None else np.empty((0, 0), dtype=np.float32)


def write_embeddings(path, embeddings: dict[str, np.ndarray]) -> None:
    """``.pkl``: the original's pickled ``{caption: float32[d]}``; ``.npz``: captions + float32 matrix.

    Captions are sorted and the npz's zip entries carry a fixed date, so equal inputs give equal bytes.
    """
    path = Path(path)
    captions = sorted(embeddings)
    if path.suffix == ".pkl":
        data = {c: np.asarray(embeddings[c], dtype=np.float32) for c in captions}
        atomic_write(path, lambda f: pickle.dump(data, f, protocol=4))
    elif path.suffix == ".npz":
        dim = len(next(iter(embeddings.values()))) if embeddings else 0
        matrix = np.stack([embeddings[c] for c in captions]).astype(np.float32) if captions else \
            np.zeros((0, dim), np.float32)
        arrays = {"captions": np.array(captions, dtype=str), "embeddings": matrix}

        def write(f):
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
                for name, array in arrays.items():
                    with z.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as member:
                        np.lib.format.write_array(member, array, allow_pickle=False)
        atomic_write(path, write)
    else:
        raise DataError(f"--out {path}: the name must end in .npz (safe numpy archive) or .pkl (the original's pickle)")


def embed_data_dir(data_dir, out=None, encode: Encoder | None = None, model: str | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, log=progress, backend: str | None = None) -> Path:
    """Embed the split captions of ``data_dir`` into ``out``, reusing the vectors ``out`` already holds.

    ``encode`` defaults to ``backend``'s all-MiniLM-L6-v2 (loaded only when there is something new to encode).
    The output holds exactly the split files' captions. Returns the path written.
    """
    data_dir = Path(data_dir)
    out = Path(out) if out else data_dir / EMBEDDINGS_NPZ
    if out.suffix not in (".npz", ".pkl"):
        raise DataError(f"--out {out}: the name must end in .npz (safe numpy archive) or .pkl (the original's pickle)")
    captions = split_captions(data_dir)
    existing = load_embeddings_file(out) if out.is_file() else {}
    dropped = len(set(existing) - set(captions))
    if dropped and out.resolve() != (data_dir / EMBEDDINGS_NPZ).resolve():
        # another folder's file (e.g. the course's): rewriting it for these splits would lose its other vectors
        raise DataError(f"--out {out} holds {dropped} embeddings of captions that are not in {data_dir}'s splits; "
                        "rewriting it would drop them: choose another --out")
    reused = {c: existing[c] for c in captions if c in existing}
    new = [c for c in captions if c not in existing]
    print(f"{len(captions)} distinct captions in {data_dir}: {len(reused)} already in {out.name}, "
          f"{len(new)} to compute", file=log, flush=True)
    vectors = dict(reused)
    if new:
        if encode is None:
            backend = backend or default_backend()
            print(f"loading the sentence encoder ({model or 'all-MiniLM-L6-v2'}, {backend}) ...", file=log, flush=True)
            encode = make_encoder(backend, model, batch_size)
        start = time.monotonic()
        matrix = encode_with_progress(new, encode, chunk=max(batch_size * 16, 256), out=log)
        print(f"computed {len(new)} embeddings in {time.monotonic() - start:.1f} s", file=log, flush=True)
        vectors.update(zip(new, matrix))
    dims = {np.shape(v) for v in vectors.values()}
    if len(dims) > 1:
        raise DataError(f"{out} mixes embeddings of shapes {sorted(dims)}: the existing vectors came from another "
                        "model; delete the file or choose another --out")
    if new or set(existing) != set(captions) or not out.is_file():
        write_embeddings(out, vectors)
        print(f"wrote {len(vectors)} embeddings to {out}", file=log, flush=True)
    else:
        print(f"{out} is up to date", file=log, flush=True)
    return out
