"""`itm embed` and the embeddings files: reuse, atomic writes, both formats, and the loader's choice.

Runs without TensorFlow (and, for the sentence-transformers checks, in a venv that has it).
"""
import hashlib
import importlib.util
import os
import pickle

import numpy as np
import pytest

from conftest import NO_COURSE_DATA, NO_SENTENCE_TRANSFORMERS, ROOT, SHARED, itm_cli
from itm.data.folder import (EMBEDDINGS_NPZ, EMBEDDINGS_PKL, SPLIT_FILES, load_embeddings_file,
                             load_embeddings_npz, load_embeddings_pickle)
from itm.errors import DataError
from itm.data.embed import embed_data_dir, split_captions, write_embeddings

needs_st = pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None,
                              reason=NO_SENTENCE_TRANSFORMERS)
needs_pil = pytest.mark.skipif(importlib.util.find_spec("PIL") is None,
                               reason="the tiny data fixture draws JPEGs with Pillow")


def hash_vector(caption: str, dim: int = 384) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(caption.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class HashEncoder:
    """A real, deterministic encoder that records what it was asked to encode."""

    def __init__(self, fail_after=None):
        self.seen, self.fail_after = [], fail_after

    def __call__(self, captions):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise KeyboardInterrupt
        self.seen += captions
        return np.stack([hash_vector(c) for c in captions])


def make_folder(path, captions_by_split):
    path.mkdir(parents=True, exist_ok=True)
    for split, captions in captions_by_split.items():
        lines = [f"img{i % 3}.jpg\t{c}\t{'match' if i % 2 else 'no-match'}" for i, c in enumerate(captions)]
        (path / SPLIT_FILES[split]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data", {"train": ["a dog .", "a cat .", "a dog ."], "dev": ["a bird ."],
                                           "test": ["a cat .", "two fish ."]})


def test_split_captions_are_distinct_and_sorted(folder):
    assert split_captions(folder) == ["a bird .", "a cat .", "a dog .", "two fish ."]


def test_npz_written_then_reused(folder):
    enc = HashEncoder()
    out = embed_data_dir(folder, encode=enc)
    assert out == folder / EMBEDDINGS_NPZ and sorted(enc.seen) == split_captions(folder)
    loaded = load_embeddings_npz(out)
    assert set(loaded) == set(enc.seen)
    assert all(v.dtype == np.float32 and np.array_equal(v, hash_vector(c)) for c, v in loaded.items())
    before = out.read_bytes()

    again = HashEncoder()
    embed_data_dir(folder, encode=again)
    assert again.seen == [] and out.read_bytes() == before

    make_folder(folder, {"dev": ["a bird .", "a red kite ."]})  # one new caption
    new = HashEncoder()
    embed_data_dir(folder, encode=new)
    assert new.seen == ["a red kite ."]
    assert set(load_embeddings_npz(out)) == {"a bird .", "a cat .", "a dog .", "two fish .", "a red kite ."}


def test_equal_inputs_give_equal_bytes(folder, tmp_path):
    embed_data_dir(folder, out=tmp_path / "one.npz", encode=HashEncoder())
    embed_data_dir(folder, out=tmp_path / "two.npz", encode=HashEncoder())
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()


def test_pickle_is_the_original_format(folder, tmp_path):
    out = embed_data_dir(folder, out=tmp_path / "e.pkl", encode=HashEncoder())
    with open(out, "rb") as f:
        raw = pickle.load(f)
    assert type(raw) is dict and set(raw) == set(split_captions(folder))
    assert all(type(v) is np.ndarray and v.dtype == np.float32 and v.shape == (384,) for v in raw.values())
    assert load_embeddings_pickle(out).keys() == raw.keys()  # and the restricted unpickler accepts it
    again = HashEncoder()
    embed_data_dir(folder, out=out, encode=again)  # reuse works from a pickle too
    assert again.seen == []


def test_interrupted_run_leaves_the_old_file_whole(folder):
    out = embed_data_dir(folder, encode=HashEncoder())
    before = out.read_bytes()
    make_folder(folder, {"train": [f"caption {i}" for i in range(600)]})
    with pytest.raises(KeyboardInterrupt):
        embed_data_dir(folder, encode=HashEncoder(fail_after=1), batch_size=16)  # dies in the second chunk
    assert out.read_bytes() == before
    assert sorted(os.listdir(folder)) == sorted([EMBEDDINGS_NPZ, *SPLIT_FILES.values()])


def test_bad_npz_files_are_refused(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, captions=np.array(["a", "b"], dtype=object), embeddings=np.zeros((2, 3)))
    with pytest.raises(DataError, match="cannot load"):
        load_embeddings_npz(path)
    np.savez(path, captions=np.array(["a", "b"]), embeddings=np.zeros((3, 4)))
    with pytest.raises(DataError, match="one row per caption"):
        load_embeddings_npz(path)
    np.savez(path, vectors=np.zeros((2, 4)))
    with pytest.raises(DataError, match="'captions' and 'embeddings'"):
        load_embeddings_npz(path)
    path.write_bytes(pickle.dumps({"a": np.zeros(3)}))
    with pytest.raises(DataError, match="cannot load"):
        load_embeddings_npz(path)


@needs_pil
def test_loader_reads_npz_and_prefers_it(tiny_data):
    from itm.data.folder import load_data_dir

    pkl = load_embeddings_pickle(tiny_data / EMBEDDINGS_PKL)
    write_embeddings(tiny_data / EMBEDDINGS_NPZ, {c: -v for c, v in pkl.items()})
    data = load_data_dir(tiny_data)
    some = next(iter(pkl))
    assert np.array_equal(data.embeddings[some], -pkl[some])
    os.remove(tiny_data / EMBEDDINGS_PKL)
    assert np.array_equal(load_data_dir(tiny_data).embeddings[some], -pkl[some])
    write_embeddings(tiny_data / EMBEDDINGS_NPZ, {c: v for c, v in pkl.items() if c != some})
    with pytest.raises(DataError, match="caption missing from the embeddings"):
        load_data_dir(tiny_data)
    os.remove(tiny_data / EMBEDDINGS_NPZ)
    with pytest.raises(DataError, match="itm embed --data-dir"):
        load_data_dir(tiny_data)


def test_cli_rejects_other_suffixes(folder):
    result = itm_cli("embed", "--data-dir", folder, "--out", folder / "e.txt")
    assert result.returncode == 2 and "must end in .npz" in result.stderr and "Traceback" not in result.stderr


def test_cli_without_sentence_transformers_says_what_to_install(folder):
    try:
        import sentence_transformers  # noqa: F401
        pytest.skip("sentence-transformers is installed here")
    except ImportError:
        pass
    result = itm_cli("embed", "--data-dir", folder, "--backend", "sentence-transformers")
    assert result.returncode == 2 and "pip install '.[embed]'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (folder / EMBEDDINGS_NPZ).exists()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@needs_st
def test_cli_reproduces_the_committed_demo_vectors(tmp_path):
    """The demo asset holds real all-MiniLM-L6-v2 vectors from sentence-transformers: the CLI must match them."""
    with np.load(ROOT / "itm" / "assets" / "demo_captions.npz") as z:
        captions, reference = list(z["captions"][:40]), z["embeddings"][:40]
    folder = make_folder(tmp_path / "d", {"train": captions[:30], "dev": captions[30:35], "test": captions[35:]})
    out = tmp_path / "demo.pkl"
    result = itm_cli("embed", "--data-dir", folder, "--out", out, "--batch-size", "8", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "embedded 40/40" in result.stderr
    got = load_embeddings_file(out)
    assert cosines(np.stack([got[c] for c in captions]), reference).min() >= 0.9999


@needs_st
@pytest.mark.skipif(not SHARED.is_dir(), reason=NO_COURSE_DATA)
def test_reproduces_a_sample_of_the_shared_embeddings():
    from itm.data.embed import encode_with_progress
    from itm.models.encoders import sentence_transformers_encoder

    shared = load_embeddings_pickle(SHARED / EMBEDDINGS_PKL)
    captions = sorted(shared)[::60]  # ~300 captions spread over the file
    got = encode_with_progress(captions, sentence_transformers_encoder())
    assert cosines(got, np.stack([shared[c] for c in captions])).min() >= 0.9999


def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path):
    from itm.files import atomic_write

    path = tmp_path / "e.npz"
    path.write_bytes(b"old")

    def write(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, write)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["e.npz"]
