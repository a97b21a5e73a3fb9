"""itm.index: the exact and HNSW backends agree, the index grows incrementally, survives a save and load,
and a wrong width or a damaged file is a one-line DataError."""
import numpy as np
import pytest

from itm.errors import DataError
from itm.index import VectorIndex, path_beside


def clustered(n, dim=64, seed=0, centres=200, noise=0.75):
    """Unit vectors around shared random centres, as photos of similar scenes lie in an embedding."""
    c = np.random.default_rng(12345).standard_normal((centres, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def names(lo, hi):
    return [f"img{i:06d}.jpg" for i in range(lo, hi)]


def exact_ids(vectors, ids, queries, k):
    s = queries @ vectors.T
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in s]


def finds_itself(index, vectors, ids) -> float:
    """Share of stored vectors whose own id comes first: 1 for exact search, nearly 1 for the graph."""
    return float(np.mean(index.search(vectors, k=1)[0][:, 0] == np.array(ids, dtype=object)))


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


def test_exact_backend_is_exact_and_scores_are_cosines():
    data, queries = clustered(500, seed=0), clustered(20, seed=1)
    index = VectorIndex(64)
    assert index.add(names(0, 500), 3.0 * data) == 500  # any length: normalised on the way in
    ids, scores = index.search(queries, k=7)
    assert index.backend == "exact" and ids.shape == scores.shape == (20, 7)
    assert [list(r) for r in ids] == exact_ids(data, names(0, 500), queries, 7)
    assert np.allclose(scores, np.sort(queries @ data.T, axis=1)[:, ::-1][:, :7], atol=1e-5)
    ids, scores = index.search(queries[0], k=10_000)  # k above the size: everything, ranked
    assert ids.shape == (1, 500) and np.all(np.diff(scores[0]) <= 1e-6)


def test_hnsw_backend_agrees_with_exact_search_on_5000_vectors():
    data, queries = clustered(5000, seed=0), clustered(200, seed=1)
    index = VectorIndex(64, exact_below=1000)  # the ANN backend forced at this size
    index.add(names(0, 5000), data)
    assert index.backend == "hnsw"
    for k in (10, 100):
        ids, scores = index.search(queries, k=k)
        r = recall([list(row) for row in ids], exact_ids(data, names(0, 5000), queries, k))
        assert r >= 0.98, f"recall@{k} = {r:.4f}"
        assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    # The graph is built on all cores, so it differs from build to build: over 30 builds here the share was
    # 1.0 mostly and 0.978 at worst (a build under CI's load); a broken graph finds far fewer.
    assert finds_itself(index, data[:500], names(0, 500)) >= 0.95


@pytest.mark.parametrize("exact_below", [10_000, 300])
def test_incremental_add_save_load_add(tmp_path, exact_below):
    """Add, save, load, add more: the old ids are kept, the new ones found; crossing the threshold
    (exact_below=300) moves the index to the graph without losing an id."""
    data = clustered(600, seed=2)
    path = tmp_path / "cache" / "features-key.index.npz"
    first = VectorIndex(64, exact_below=exact_below)
    first.add(names(0, 250), data[:250])
    first.save(path)
    assert first.backend == "exact"

    second = VectorIndex.load(path)
    assert len(second) == 250 and second.backend == "exact"
    assert second.add(names(200, 600), data[200:600]) == 350  # 50 already held: replaced, not added
    assert len(second) == 600
    assert second.backend == ("hnsw" if exact_below == 300 else "exact")
    second.save(path)

    third = VectorIndex.load(path)
    assert len(third) == 600 and third.backend == second.backend
    for lo, hi in ((0, 250), (250, 600)):  # old and new: each stored vector finds its own id first
        assert finds_itself(third, data[lo:hi], names(lo, hi)) >= (0.98 if third.backend == "hnsw" else 1.0)


def test_readding_an_id_replaces_its_vector():
    for exact_below in (10_000, 50):
        data = clustered(200, seed=3)
        index = VectorIndex(64, exact_below=exact_below)
        index.add(names(0, 200), data)
        assert index.add(["img000007.jpg"], data[150]) == 0  # photo 7 re-encoded: now like photo 150
        assert len(index) == 200
        ids, scores = index.search(data[150], k=2)
        assert set(ids[0]) == {"img000007.jpg", "img000150.jpg"} and scores[0, 1] > 0.99
        assert np.allclose(index.vectors(["img000007.jpg"]), data[150:151], atol=1e-6 if exact_below > 200 else 1e-3)


def test_sync_adds_replaces_and_removes(tmp_path):
    for exact_below in (10_000, 100):
        data = clustered(400, seed=4)
        index = VectorIndex(64, exact_below=exact_below)
        index.add(names(0, 300), data[:300])
        changed = data[:300].copy()
        changed[60] = data[399]
        counts = index.sync(names(50, 350), data[50:350])  # photos 0-49 deleted, 300-349 new

        assert counts == dict(added=50, replaced=0, removed=50, unchanged=250)
        counts = index.sync(names(0, 300), changed)  # 0-49 back, 300-349 gone again, photo 60 changed
        assert counts == dict(added=50, replaced=1, removed=50, unchanged=249)
        assert len(index) == 300 and "img000320.jpg" not in index
        index.save(tmp_path / "i.npz")
        loaded = VectorIndex.load(tmp_path / "i.npz")
        assert finds_itself(loaded, changed, names(0, 300)) >= (0.98 if loaded.backend == "hnsw" else 1.0)
        assert loaded.search(changed[60], k=1)[0][0, 0] == "img000060.jpg"  # found by its new vector
        assert set(loaded.search(data[300:350], k=5)[0].ravel()) <= set(names(0, 300))


def test_wrong_width_and_bad_input_are_one_line_errors():
    index = VectorIndex(64)
    index.add(names(0, 10), clustered(10))
    for call, words in ((lambda: index.add(["x"], np.ones((1, 32))), "do not fit this index of 64-d"),
                        (lambda: index.search(np.ones(128), 5), "do not fit this index of 64-d"),
                        (lambda: index.add(["a", "b"], clustered(3)), "2 ids but 3 vectors"),
                        (lambda: index.add(["z"], np.zeros(64)), "non-zero"),
                        (lambda: index.add(["z"], np.full(64, np.nan)), "finite"),
                        (lambda: index.add(["a", "a"], clustered(2)), "repeat"),
                        (lambda: index.add([7], clustered(1)), "strings")):
        with pytest.raises(DataError, match=words) as e:
            call()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("backend", ["exact", "hnsw"])
def test_damaged_or_foreign_index_file_is_a_one_line_error(tmp_path, backend):
    path = tmp_path / "i.index.npz"
    index = VectorIndex(64, exact_below=10_000 if backend == "exact" else 100)
    index.add(names(0, 200), clustered(200))
    index.save(path)
    whole = path.read_bytes()
    for name, content in (("truncated", whole[: len(whole) // 2]), ("text", b"not an index\n"),
                          ("empty", b"")):
        path.write_bytes(content)
        with pytest.raises(DataError, match="damaged or not an index; delete it") as e:
            VectorIndex.load(path)
        assert "\n" not in str(e.value), name
    np.savez(path, features=np.zeros(3))  # a feature-cache file, not an index
    with pytest.raises(DataError, match="not format 1"):
        VectorIndex.load(path)
    with pytest.raises(DataError, match="is missing"):
        VectorIndex.load(tmp_path / "nothing.npz")


def test_save_is_atomic_and_beside_the_feature_file(tmp_path):
    assert path_beside(tmp_path / "abc123.npz") == tmp_path / "abc123.index.npz"
    index = VectorIndex(8)
    index.add(["a"], np.ones(8))
    index.save(tmp_path / "abc123.index.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["abc123.index.npz"]  # no temporary file left


def test_open_rebuilds_a_damaged_or_foreign_index_with_a_warning(tmp_path):
    import io

    path = tmp_path / "k.index.npz"
    assert len(VectorIndex.open(path, 64)) == 0  # none yet: an empty index
    index = VectorIndex(64)
    index.add(names(0, 5), clustered(5))
    index.save(path)
    assert len(VectorIndex.open(path, 64)) == 5
    log = io.StringIO()
    assert VectorIndex.open(path, 32, log=log).dim == 32 and "holds 64-d vectors, not 32-d" in log.getvalue()
    path.write_bytes(b"junk")
    log = io.StringIO()
    assert len(VectorIndex.open(path, 64, log=log)) == 0 and "damaged" in log.getvalue()
