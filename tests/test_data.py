"""Reading data folders, and every kind of bad input reported clearly and up front."""
import os
import pickle

import numpy as np
import pytest

from itm.data import (EMBEDDINGS_PKL, IMAGES_SUBDIR, SPLIT_FILES, DataError, load_data_dir,
                      load_embeddings_pickle)


def _append(path, text):
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def test_reads_the_fixture(tiny_data):
    data = load_data_dir(tiny_data)
    train = data.splits["train"]
    assert len(train.triples) == 16 * 4 and train.n_match == 32
    assert len(data.splits["test"].triples) == 6 * 4 and data.splits["test"].n_match == 6
    assert all(v.shape == (384,) and v.dtype == np.float32 for v in data.embeddings.values())
    lines = (tiny_data / SPLIT_FILES["train"]).read_text().splitlines()
    first = lines[0].split("\t")
    assert (train.triples[0].image, train.triples[0].caption, train.triples[0].match) == (
        first[0], first[1], first[2] == "match")


def test_limit_keeps_the_first_triples(tiny_data):
    data = load_data_dir(tiny_data, limit=5)
    assert [len(s.triples) for s in data.splits.values()] == [5, 5, 5]


def test_last_line_without_newline_and_blank_lines(tiny_data):
    path = tiny_data / SPLIT_FILES["dev"]
    text = path.read_text()
    path.write_text("\n" + text.rstrip("\n"))
    assert len(load_data_dir(tiny_data).splits["dev"].triples) == 24


def test_missing_folder():
    with pytest.raises(DataError, match="does not exist"):
        load_data_dir("/nonexistent/itm-data")


def test_every_problem_is_reported_at_once(tiny_data):
    os.remove(tiny_data / SPLIT_FILES["dev"])
    train = tiny_data / SPLIT_FILES["train"]
    image = train.read_text().split("\t")[0]
    _append(train, f"{image}\tonly two fields\n")
    _append(train, f"{image}\ta red circle on a grey background\tmaybe\n")
    _append(train, "no_such_image.jpg\ta red circle on a grey background\tmatch\n")
    _append(train, f"{image}\ta caption nobody embedded\tmatch\n")
    (tiny_data / IMAGES_SUBDIR / "broken.jpg").write_bytes(b"this is not a jpeg")
    _append(train, "broken.jpg\ta red circle on a grey background\tno-match\n")
    with pytest.raises(DataError) as err:
        load_data_dir(tiny_data)
    message = str(err.value)
    n_lines = len(train.read_text().splitlines())
    for expected in (
        "missing split file: 1", SPLIT_FILES["dev"],
        "line without three tab-separated fields: 1", f"{SPLIT_FILES['train']}:{n_lines - 4}",
        "label other than match/no-match: 1", "'maybe'",
        "missing image: 1", "no_such_image.jpg",
        "undecodable image: 1", "broken.jpg",
        "caption missing from the embeddings: 1", "a caption nobody embedded",
    ):
        assert expected in message, f"{expected!r} not in:\n{message}"
    assert message.startswith("6 problem(s) found")


def test_many_problems_of_one_kind_are_counted_and_sampled(tiny_data):
    train = tiny_data / SPLIT_FILES["train"]
    _append(train, "".join(f"bad line {i}\n" for i in range(40)))
    with pytest.raises(DataError) as err:
        load_data_dir(tiny_data)
    assert "line without three tab-separated fields: 40" in str(err.value)
    assert "... and 35 more" in str(err.value)


def test_embedding_of_wrong_size(tiny_data):
    path = tiny_data / EMBEDDINGS_PKL
    emb = pickle.loads(path.read_bytes())
    caption = next(iter(emb))
    emb[caption] = np.zeros(100, np.float32)
    path.write_bytes(pickle.dumps(emb))
    with pytest.raises(DataError, match=r"embedding not of size 384: 1"):
        load_data_dir(tiny_data)


def test_missing_embeddings_file_and_images_folder(tiny_data):
    os.remove(tiny_data / EMBEDDINGS_PKL)
    os.rename(tiny_data / IMAGES_SUBDIR, tiny_data / "elsewhere")
    with pytest.raises(DataError) as err:
        load_data_dir(tiny_data)
    assert "missing embeddings file: 1" in str(err.value)
    assert "missing images folder: 1" in str(err.value)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/itm-pwned",))


@pytest.mark.parametrize("payload, message", [
    ({"a caption": _Exploit()}, "refusing to load"),
    ([np.zeros(384)], "holds a list"),
    ({3: np.zeros(384)}, "expected a caption string"),
    ({"a caption": "not numbers"}, "not numeric"),
])
def test_untrusted_pickles_are_refused(tmp_path, payload, message):
    path = tmp_path / "emb.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError, match=message):
        load_embeddings_pickle(path)
    assert not os.path.exists("/tmp/itm-pwned")


def test_pickle_of_plain_lists_is_accepted(tmp_path):
    path = tmp_path / "emb.pkl"
    path.write_bytes(pickle.dumps({"a caption": [0.5] * 384}))
    out = load_embeddings_pickle(path)
    assert out["a caption"].dtype == np.float32 and out["a caption"].shape == (384,)
