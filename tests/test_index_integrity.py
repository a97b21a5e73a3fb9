"""A retrieval index or feature cache damaged on disk is detected before use, never handed to native code.

The fuzz tests load hundreds of damaged copies of a real small index in this process: a damaged HNSW graph
that reached usearch could end in a segmentation fault, which would kill pytest itself; passing is the proof
that none does. Each copy either loads and searches as the original does, or is refused in one line."""
import io

import numpy as np
import pytest

from itm.errors import DataError
from itm.index import VectorIndex


def vectors(n, dim=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def saved(tmp_path, backend):
    """A real index file: 120 vectors, exact or through an HNSW graph."""
    path = tmp_path / f"{backend}.index.npz"
    index = VectorIndex(16, exact_below=10_000 if backend == "exact" else 50)
    index.add([f"photo{i}.jpg" for i in range(120)], vectors(120))
    index.save(path)
    assert VectorIndex.load(path).backend == backend
    return path, index


def mutations(whole: bytes, rng, n: int):
    """Random byte changes (1 to 20 bytes), truncations and extensions of ``whole``."""
    for k in range(n):
        kind = k % 4
        if kind in (0, 1):
            data = bytearray(whole)
            for pos in rng.integers(0, len(data), int(rng.integers(1, 21))):
                data[pos] = (data[pos] + int(rng.integers(1, 256))) % 256
            yield f"{k}: bytes changed", bytes(data)
        elif kind == 2:
            yield f"{k}: truncated", whole[: int(rng.integers(0, len(whole)))]
        else:
            yield f"{k}: extended", whole + rng.bytes(int(rng.integers(1, 4096)))


@pytest.mark.parametrize("backend", ["hnsw", "exact"])
def test_hundreds_of_damaged_index_files_are_each_detected_or_load_intact(tmp_path, backend):
    path, original = saved(tmp_path, backend)
    whole = path.read_bytes()
    queries = vectors(5, seed=1)
    want_ids, _ = original.search(queries, 5)
    rng = np.random.default_rng(30)
    detected = intact = 0
    for what, data in mutations(whole, rng, 300):
        path.write_bytes(data)
        try:
            index = VectorIndex.load(path)
        except DataError as e:
            assert "damaged or not an index" in str(e) and "\n" not in str(e), what
            detected += 1
            continue
        # a change the checksum cannot see (zip bookkeeping, bytes after the archive): the same index
        ids, _ = index.search(queries, 5)
        assert ids.tolist() == want_ids.tolist(), what
        assert len(index) == 120, what
        intact += 1
    assert detected > 150, (detected, intact)  # most changes touch the arrays: refused, not trusted


def test_graph_bytes_changed_inside_the_archive_are_refused_before_usearch(tmp_path):
    """The issue's crash: bytes of the graph changed with the archive still readable (its CRC rewritten).
    Only the checksum can tell, and it does, before usearch sees them."""
    path, _ = saved(tmp_path, "hnsw")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    rng = np.random.default_rng(0)
    for _ in range(60):
        ann = arrays["ann"].copy()
        for pos in rng.integers(0, len(ann), 18):
            ann[pos] ^= np.uint8(rng.integers(1, 256))
        np.savez(path, **{**arrays, "ann": ann})  # a well-formed npz, graph damaged, old checksum
        with pytest.raises(DataError, match="do not match their checksum"):
            VectorIndex.load(path)


def test_open_rebuilds_a_damaged_index_with_one_warning(tmp_path):
    path, _ = saved(tmp_path, "hnsw")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    log = io.StringIO()
    index = VectorIndex.open(path, 16, log=log)
    assert len(index) == 0  # empty: sync fills it again
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: search index") and "building it again" in lines[0]


def test_an_index_without_a_checksum_is_rebuilt(tmp_path):
    """A file of an older itm (or anyone else) is not trusted: no checksum, no use."""
    path, _ = saved(tmp_path, "exact")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "checksum"}
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="no checksum"):
        VectorIndex.load(path)


def test_nan_vectors_are_refused_on_load_and_never_counted_unchanged(tmp_path):
    from itm.index import _checksum

    path, _ = saved(tmp_path, "exact")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "checksum"}
    arrays["vectors"] = arrays["vectors"].copy()
    arrays["vectors"][3] = np.nan
    np.savez(path, **arrays, checksum=np.array(_checksum(arrays)))  # NaN with a checksum that matches
    with pytest.raises(DataError, match="NaN or infinite vectors"):
        VectorIndex.load(path)
    # a NaN already held (however it got there) is replaced by sync, not counted unchanged
    index = VectorIndex(16)
    ids = [f"p{i}" for i in range(10)]
    index.add(ids, vectors(10))
    index._vectors[3] = np.nan
    change = index.sync(ids, vectors(10))
    assert change["replaced"] == 1 and change["unchanged"] == 9
    assert np.isfinite(index.vectors(ids)).all()
    with pytest.raises(DataError, match="finite"):  # and NaN is never taken in
        index.sync(ids, np.full((10, 16), np.nan))


def test_a_damaged_feature_cache_is_rebuilt_with_one_warning(tmp_path):
    """The feature cache beside the index: hundreds of damaged copies, each either its exact entries or
    refused (and rebuilt) with one warning line."""
    from itm.data.features import FeatureFile

    path = tmp_path / "k.npz"
    store = FeatureFile(path, "key")
    feats = vectors(40, dim=8)
    for i, f in enumerate(feats):
        store.put(f"p{i}.jpg", (i, 100 + i), f)
    store.save([(f"p{i}.jpg", (i, 100 + i)) for i in range(40)])
    whole = path.read_bytes()
    rng = np.random.default_rng(7)
    for what, data in mutations(whole, rng, 200):
        path.write_bytes(data)
        log = io.StringIO()
        again = FeatureFile(path, "key", log=log)
        if again.entries:
            assert len(again.entries) == 40, what
            np.testing.assert_array_equal(np.stack([again.get(f"p{i}.jpg", (i, 100 + i)) for i in range(40)]), feats)
        else:
            assert len(log.getvalue().splitlines()) <= 1, what
