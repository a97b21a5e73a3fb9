"""A searchable collection of image vectors: the shortlist stage of retrieval.

``VectorIndex`` maps ids (e.g. an image's path within its folder) to L2-normalised vectors and returns
each query's k nearest by inner product (cosine). Below ``EXACT_BELOW`` vectors it searches exactly, by
one matrix product; from there on through an HNSW graph (usearch, a small wheel), whose shortlist
recall@10 against exact search is >= 0.98 at the settings here up to 100,000 vectors and on real
features, 0.999 at 1,000,000 synthetic clustered ones (docs/retrieval-index.md has the measurements that
chose the library, the settings and the threshold). It grows incrementally: ``add``
inserts new ids and replaces the vectors of ids it holds (a re-encoded photo), ``remove`` drops ids,
``sync`` makes it hold exactly a given set; ``save``/``load``/``open`` keep it beside the feature cache
(``path_beside``), in one file written atomically.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .errors import DataError, MissingExtra
from .files import atomic_write

EXACT_BELOW = 50_000  # vectors; exact search of 50,000 x 256 took 6.3 ms of CPU a query (docs/retrieval-index.md)
CONNECTIVITY = 32  # HNSW links per node (M); 16 lost 5% of the true top 10 at 1,000,000 (recall 0.95 vs 0.976)
EXPANSION_ADD = 128  # HNSW candidate list while inserting (efConstruction): at 1,000,000 vectors 64 -> 128 lifts
# recall@10 from 0.976 to 0.999 for a 30% longer build (712 s of CPU; docs/retrieval-index.md)
EXPANSION_SEARCH = 800  # HNSW candidate list while searching (efSearch; at least 2k is used): recall@10 at
# 1,000,000 synthetic vectors 0.91 -> 0.95 over 200, +2 ms a query; wider buys nothing (docs/retrieval-index.md)
GRAPH_DTYPE = "f16"  # the graph's copy of the vectors: half the memory and build time of f32, same recall
FORMAT = 1  # of the saved file; another number is refused with a message (a file without a checksum too)
MAX_DIM = 65_536  # the widest vectors a saved index may claim
ANN_HINT = "pip install usearch (itm's core dependencies include it)"


def path_beside(feature_file) -> Path:
    """Where the index of a folder's features lives: next to its feature-cache file, ``KEY.index.npz``."""
    feature_file = Path(feature_file)
    return feature_file.with_name(feature_file.stem + ".index.npz")


def _usearch():
    """usearch's Index, imported when a graph is first needed: a collection below EXACT_BELOW never loads it."""
    try:
        from usearch.index import Index
    except ImportError:
        raise MissingExtra(f"searching more than {EXACT_BELOW:,} images needs usearch: {ANN_HINT}") from None
    return Index


class VectorIndex:
    """id -> unit vector; ``search`` gives each query's k most similar ids, best first.

    Positions (0, 1, ...) are given to ids in the order they arrive and are the HNSW graph's keys; a
    removed id leaves a hole (None) that ``save`` does not keep.
    """

    def __init__(self, dim: int, exact_below: int = EXACT_BELOW, expansion_search: int = EXPANSION_SEARCH):
        if int(dim) < 1:
            raise DataError(f"an index needs vectors of at least one number, not width {dim}")
        self.dim, self.exact_below, self.expansion_search = int(dim), int(exact_below), int(expansion_search)
        self.ids: list = []  # position -> id (None where removed)
        self.positions: dict = {}  # id -> position
        self._vectors = np.zeros((0, self.dim), np.float32)  # the exact backend's rows, by position
        self._ann = None  # the HNSW graph, once the index has reached exact_below vectors

    # ------------------------------------------------------------ what it holds

    def __len__(self) -> int:
        return len(self.positions)

    def __contains__(self, id) -> bool:
        return id in self.positions

    @property
    def backend(self) -> str:
        return "exact" if self._ann is None else "hnsw"

    def vectors(self, ids) -> np.ndarray:
        """The stored (normalised) vectors of ``ids``, float32 [n, dim] (rounded to float16 once the graph
        holds them: re-rank with the encoder's own features where exactness matters); an unknown id is a KeyError."""
        rows = np.array([self.positions[i] for i in ids], np.int64)
        if self._ann is None:
            return self._vectors[rows]
        return np.asarray(self._ann.get(rows.astype(np.uint64)), np.float32).reshape(len(rows), self.dim)

    # ------------------------------------------------------------ changing it

    def add(self, ids, vectors) -> int:
        """Insert ``ids`` with their ``vectors`` (normalised here); an id already held gets the new vector
        (a photo encoded again replaces its old vector). Returns how many ids were new."""
        ids, vectors = self._checked(ids, vectors)
        old = [i for i, id in enumerate(ids) if id in self.positions]
        if old:
            self._replace([ids[i] for i in old], vectors[old])
        new = [i for i, id in enumerate(ids) if id not in self.positions]
        if new:
            start = len(self.ids)
            for offset, i in enumerate(new):
                self.ids.append(ids[i])
                self.positions[ids[i]] = start + offset
            keys = np.arange(start, start + len(new), dtype=np.int64)
            if self._ann is None:
                self._vectors = np.concatenate([self._vectors, vectors[new]])
                if len(self) >= self.exact_below:
                    self._to_ann()
            else:
                self._ann.add(keys.astype(np.uint64), vectors[new], threads=0)
        return len(new)

    def remove(self, ids) -> int:
        """Drop ``ids`` (those not held are ignored); returns how many were removed."""
        gone = [self.positions.pop(id) for id in dict.fromkeys(ids) if id in self.positions]
        for p in gone:
            self.ids[p] = None
        if gone and self._ann is not None:
            self._ann.remove(np.array(gone, np.uint64))
        elif gone:
            self._compact()
        return len(gone)

    def sync(self, ids, vectors, tolerance: float = 2e-3) -> dict:
        """Make the index hold exactly ``ids``: new ids added, ids whose vector changed (by more than
        ``tolerance`` in any coordinate, after normalising: the graph keeps float16) replaced, ids not given
        removed. The way to follow a folder whose photos come and go: unchanged photos cost a comparison."""
        ids, vectors = self._checked(ids, vectors)
        given = set(ids)
        removed = self.remove([id for id in list(self.positions) if id not in given])
        held = [i for i, id in enumerate(ids) if id in self.positions]
        changed = []
        for lo in range(0, len(held), 65_536):
            chunk = held[lo:lo + 65_536]
            stored = self.vectors([ids[i] for i in chunk])
            differs = ~(np.abs(stored - vectors[chunk]).max(axis=1) <= tolerance)  # a NaN stored differs
            changed += [i for i, d in zip(chunk, differs) if d]
        if changed:
            self._replace([ids[i] for i in changed], vectors[changed])
        fresh = [i for i, id in enumerate(ids) if id not in self.positions]
        added = self.add([ids[i] for i in fresh], vectors[fresh]) if fresh else 0
        return dict(added=added, replaced=len(changed), removed=removed, unchanged=len(held) - len(changed))

    def _replace(self, ids, vectors) -> None:
        rows = np.array([self.positions[i] for i in ids], np.int64)
        if self._ann is None:
            self._vectors[rows] = vectors
        else:
            keys = rows.astype(np.uint64)
            self._ann.remove(keys)
            self._ann.add(keys, vectors, threads=0)

    def _compact(self) -> None:
        """The exact backend without the holes of removed ids (positions renumbered)."""
        keep = [p for p, id in enumerate(self.ids) if id is not None]
        self._vectors = self._vectors[keep]
        self.ids = [self.ids[p] for p in keep]
        self.positions = {id: p for p, id in enumerate(self.ids)}

    def _to_ann(self) -> None:
        """Move the exact rows into a new HNSW graph: from now on searches are approximate."""
        self._ann = _new_ann(self.dim)
        live = np.array([p for p, id in enumerate(self.ids) if id is not None], np.int64)
        self._ann.add(live.astype(np.uint64), self._vectors[live], threads=0)
        self._vectors = np.zeros((0, self.dim), np.float32)

    def _checked(self, ids, vectors) -> tuple[list, np.ndarray]:
        ids = [ids] if isinstance(ids, (str, bytes)) else list(ids)
        vectors = self._unit(vectors, "vectors")
        if len(vectors) != len(ids):
            raise DataError(f"{len(ids)} ids but {len(vectors)} vectors: give one vector per id")
        if len(set(ids)) != len(ids):
            raise DataError("the ids given to the index repeat: give each id once")
        if not all(isinstance(id, str) and id for id in ids):
            raise DataError("the index's ids are non-empty strings (e.g. an image's path in its folder)")
        return ids, vectors

    def _unit(self, vectors, what: str) -> np.ndarray:
        """``vectors`` as float32 [n, dim] rows of length 1; the wrong width or a zero/non-finite row is a DataError."""
        x = np.asarray(vectors, np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"{what} of shape {tuple(np.shape(vectors))} do not fit this index of {self.dim}-d "
                            "vectors (made by another model? delete the index file and it is rebuilt)")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise DataError(f"{what} must be finite and non-zero to be compared by direction")
        return np.ascontiguousarray(x / norms)

    # ------------------------------------------------------------ searching

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k ids most similar to each query, best first: ``(ids, scores)``, object array [q, k'] and
        float32 [q, k'] of cosine similarities, k' = min(k, len(self)). Where the graph finds fewer than
        k' (rare: a sparse neighbourhood of removed ids) the row ends in None ids with score -inf."""
        queries = self._unit(queries, "query vectors")
        k = min(int(k), len(self))
        ids = np.full((len(queries), k), None, dtype=object)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        if k <= 0:
            return ids, scores
        if self._ann is None:
            rows, found = _exact_top(self._vectors, queries, k)
        else:
            # wider for a long shortlist; capped at the size (above it usearch sometimes missed points)
            self._ann.expansion_search = max(min(self.expansion_search, len(self)), 2 * k)
            matches = self._ann.search(queries, k, threads=0)
            # one query gives Matches (only what it found), several give BatchMatches (k per row, and counts)
            counts = np.atleast_1d(getattr(matches, "counts", len(matches.keys)))
            keys = np.asarray(matches.keys, np.int64).reshape(len(queries), -1)
            distances = np.asarray(matches.distances, np.float32).reshape(len(queries), -1)
            rows, found = np.full((len(queries), k), -1, np.int64), np.full((len(queries), k), -np.inf, np.float32)
            for q, c in enumerate(counts):
                c = min(int(c), k)
                rows[q, :c], found[q, :c] = keys[q, :c], 1.0 - distances[q, :c]  # ip distance = 1 - dot
        for q in range(len(queries)):
            for j, (r, s) in enumerate(zip(rows[q], found[q])):
                if r >= 0:
                    ids[q, j], scores[q, j] = self.ids[r], s
        return ids, scores

    # ------------------------------------------------------------ on disk

    def save(self, path) -> None:
        """One npz, written atomically (a crash leaves the previous file): the ids, the exact rows or the
        HNSW graph, and a sha256 over all of them (``load`` verifies it). Holes of removed ids are dropped
        from the graph first."""
        if self._ann is not None and len(self) < len(self.ids):
            self._rebuild_ann()
        meta = dict(format=np.array(FORMAT), dim=np.array(self.dim), exact_below=np.array(self.exact_below),
                    expansion_search=np.array(self.expansion_search))
        ids = np.array(self.ids if self._ann is not None else [i for i in self.ids if i is not None], dtype=str)
        if self._ann is None:
            body = dict(vectors=self._vectors)
        else:
            body = dict(ann=np.frombuffer(self._ann.save(), np.uint8))
        arrays = dict(ids=ids, **meta, **body)
        atomic_write(path, lambda f: np.savez(f, **arrays, checksum=np.array(_checksum(arrays))), "the search index")

    @classmethod
    def open(cls, path, dim: int, log=None, **settings) -> VectorIndex:
        """The index saved at ``path`` if it holds ``dim``-d vectors, else an empty one (``sync`` fills it):
        a cache, so a damaged file or one of another width is replaced, with a line to ``log``."""
        if Path(path).is_file():
            try:
                index = cls.load(path)
                if index.dim == int(dim):
                    return index
                why = f"search index {path} holds {index.dim}-d vectors, not {dim}-d"
            except DataError as e:
                why = str(e)
            if log:
                print(f"warning: {why}; building it again", file=log, flush=True)
        return cls(dim, **settings)

    @classmethod
    def load(cls, path) -> VectorIndex:
        """The index saved at ``path``; a missing, damaged or foreign file is a one-line DataError.

        Nothing of the file reaches usearch (native code, which a damaged graph can crash) before the
        checksum ``save`` wrote over every array matches and the settings, ids and vectors are of sane
        shapes, values and sizes: a cache damaged on disk is detected here, never trusted."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"search index {path} is missing")
        damaged = f"search index {path} is damaged or not an index; delete it and it is rebuilt"
        try:
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:  # np.load leaks its own file on a non-zip
                if "format" not in z.files or z["format"].shape != () or int(z["format"]) != FORMAT:
                    raise DataError(f"{damaged} (not format {FORMAT} of itm's index)")
                if "checksum" not in z.files:
                    raise DataError(f"{damaged} (no checksum: written by an older itm)")
                body = "ann" if "ann" in z.files else "vectors"
                names = {"format", "dim", "exact_below", "expansion_search", "ids", body}
                if set(z.files) != names | {"checksum"}:
                    raise DataError(f"{damaged} (it holds {sorted(z.files)})")
                arrays = {name: z[name] for name in names}
                recorded = z["checksum"]
            if recorded.shape != () or recorded.dtype.kind != "U" or str(recorded) != _checksum(arrays):
                raise DataError(f"{damaged} (its contents do not match their checksum)")
            index = cls(*_settings(arrays, damaged))
            ids = arrays["ids"]
            if ids.ndim != 1 or ids.dtype.kind != "U" or not all(ids):
                raise DataError(f"{damaged} (its ids are not a list of names)")
            ids = [str(i) for i in ids]
            if body == "vectors":
                vectors = arrays["vectors"]
                if vectors.shape != (len(ids), index.dim) or vectors.dtype != np.float32:
                    raise DataError(f"{damaged} (its vectors do not fit its ids)")
                if not np.isfinite(vectors).all():
                    raise DataError(f"{damaged} (it holds NaN or infinite vectors)")
                index._vectors = np.ascontiguousarray(vectors)
            else:
                graph = arrays["ann"]
                if graph.ndim != 1 or graph.dtype != np.uint8 or not len(ids) or len(graph) < 64:
                    raise DataError(f"{damaged} (its graph does not fit its ids)")
                ann = _usearch().restore(bytearray(graph.tobytes()))  # only bytes this itm wrote (checksum above)
                if ann is None or ann.ndim != index.dim or len(ann) != len(ids):
                    raise DataError(f"{damaged} (its graph does not fit its ids)")
                index._ann = ann
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 numpy, zipfile and usearch raise many kinds for a damaged file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise DataError(f"{damaged} ({type(e).__name__}: {first})") from None
        index.ids = ids
        index.positions = {id: p for p, id in enumerate(ids)}
        if len(index.positions) != len(ids):
            raise DataError(f"{damaged} (an id appears twice)")
        return index

    def _rebuild_ann(self) -> None:
        """A fresh graph of the live ids only, positions renumbered (after removals)."""
        live = [p for p, id in enumerate(self.ids) if id is not None]
        vectors = self.vectors([self.ids[p] for p in live])
        self.ids = [self.ids[p] for p in live]
        self.positions = {id: p for p, id in enumerate(self.ids)}
        self._ann = _new_ann(self.dim)
        self._ann.add(np.arange(len(live), dtype=np.uint64), vectors, threads=0)


def _checksum(arrays: dict) -> str:
    """sha256 over each saved array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _settings(arrays: dict, damaged: str) -> tuple[int, int, int]:
    """dim, exact_below and expansion_search of a saved index, each a single integer in a sane range."""
    out = []
    for name, high in (("dim", MAX_DIM), ("exact_below", 1 << 40), ("expansion_search", 1 << 20)):
        a = arrays[name]
        if a.shape != () or a.dtype.kind not in "iu" or not 1 <= int(a) <= high:
            raise DataError(f"{damaged} (its {name} is not an integer in 1..{high})")
        out.append(int(a))
    return tuple(out)


def _new_ann(dim: int):
    return _usearch()(ndim=dim, metric="ip", dtype=GRAPH_DTYPE, connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD,
                      expansion_search=EXPANSION_SEARCH)


def _exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and scores of the k largest inner products per query, best first: one matrix product."""
    s = queries @ vectors.T
    if k < s.shape[1]:
        top = np.argpartition(s, s.shape[1] - k, axis=1)[:, -k:]
    else:
        top = np.broadcast_to(np.arange(s.shape[1]), s.shape).copy()
    found = np.take_along_axis(s, top, 1)
    order = np.argsort(-found, axis=1, kind="stable")
    return np.take_along_axis(top, order, 1), np.take_along_axis(found, order, 1)
