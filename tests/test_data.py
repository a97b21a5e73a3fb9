"""Reading data folders, every kind of bad input reported clearly and up front, and the batches that
the training pipelines make of them."""
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from itm.data.batches import file_triples, group_by_image
from itm.data.folder import (EMBEDDINGS_PKL, IMAGES_SUBDIR, SPLIT_FILES, Problems, load_data_dir,
                             load_embeddings_pickle, parse_split_file)
from itm.errors import DataError


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
        "unusable image: 1", "broken.jpg", f"{SPLIT_FILES['train']}:{n_lines}:",
        "caption missing from the embeddings: 1", "a caption nobody embedded", f"{SPLIT_FILES['train']}:{n_lines - 1}:",
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


# ---------------------------------------------------------------- faults that must not pass silently

def _set_embedding(tiny_data, value):
    path = tiny_data / EMBEDDINGS_PKL
    emb = pickle.loads(path.read_bytes())
    caption = (tiny_data / SPLIT_FILES["test"]).read_text().splitlines()[0].split("\t")[1]
    emb[caption] = np.asarray(emb[caption]).copy()
    emb[caption][7] = value
    path.write_bytes(pickle.dumps(emb))
    return caption


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_an_embedding_with_nan_or_infinity_is_refused(tiny_data, value):
    _set_embedding(tiny_data, value)
    with pytest.raises(DataError, match=r"embedding with NaN or infinity \(in flickr8k.cmp9137.sentence_transformers.pkl\): 1"):
        load_data_dir(tiny_data)


def test_a_byte_order_mark_is_not_part_of_the_first_image_name(tiny_data):
    path = tiny_data / SPLIT_FILES["dev"]
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    first = path.read_text(encoding="utf-8-sig").split("\t")[0]
    assert load_data_dir(tiny_data).splits["dev"].triples[0].image == first


def _use_image(tiny_data, name):
    train = tiny_data / SPLIT_FILES["train"]
    _append(train, f"{name}\ta red circle on a grey background\tno-match\n")
    return len(train.read_text().splitlines())


def test_a_tiff_named_jpg_is_refused_by_the_check_the_pipeline_shares(tiny_data):
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(tiny_data / IMAGES_SUBDIR / "tiff.jpg", format="TIFF")
    line = _use_image(tiny_data, "tiff.jpg")
    with pytest.raises(DataError) as err:
        load_data_dir(tiny_data)
    assert f"{SPLIT_FILES['train']}:{line}:" in str(err.value) and "a TIFF file" in str(err.value)
    assert "convert it to JPEG or PNG" in str(err.value)


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tiny_data):
    """A 20000 x 20000 PNG is a small file; decoding it would take 1.2 GB."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    width = height = 20000
    rows = zlib.compress(b"".join(b"\x00" + bytes(width * 3) for _ in range(64)))  # valid start, then truncated
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    (tiny_data / IMAGES_SUBDIR / "bomb.jpg").write_bytes(png)
    _use_image(tiny_data, "bomb.jpg")
    with pytest.raises(DataError, match="bomb.jpg: is too large to decode"):
        load_data_dir(tiny_data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_the_split_file_reader_never_fails_on_random_bytes(tmp_path, raw):
    path = tmp_path / "split.txt"
    path.write_bytes(raw)
    problems = Problems()
    triples = parse_split_file(path, problems)
    for t in triples:
        assert t.image and t.caption.strip() and "\t" not in t.image and t.line >= 1
    if problems:
        assert "problem(s) found" in problems.report(tmp_path)


# ---------------------------------------------------------------- batches

def test_file_batches_shapes_dtypes_and_labels(tiny_data):
    data = load_data_dir(tiny_data)
    split = data.splits["test"]
    batches = list(file_triples(split, data.embeddings, batch_size=8, shuffle=False, image_size=224))
    assert [len(b[1]) for b in batches] == [8, 8, 8]
    features, labels = batches[0]
    assert features["image_input"].shape == (8, 224, 224, 3) and features["image_input"].dtype.name == "float32"
    assert features["text_embedding"].shape == (8, 384)
    img = features["image_input"].numpy()
    assert 0.0 <= img.min() and img.max() <= 255.0 and img.max() > 128  # pixels 0..255: the model scales them
    for i, t in enumerate(split.triples[:8]):
        assert features["caption"][i].numpy().decode() == t.caption
        assert features["file_name"][i].numpy().decode().endswith(t.image)
        assert labels[i].numpy().tolist() == ([1, 0] if t.match else [0, 1])
        np.testing.assert_array_equal(features["text_embedding"][i].numpy(), data.embeddings[t.caption])


def test_shuffle_keeps_every_triple_once(tiny_data):
    data = load_data_dir(tiny_data)
    split = data.splits["train"]
    ds = file_triples(split, data.embeddings, batch_size=16, shuffle=True, seed=1, image_size=32)
    seen = [(f.decode(), c.decode()) for features, _ in ds
            for f, c in zip(features["file_name"].numpy(), features["caption"].numpy())]
    expected = [(str(split.images_dir / t.image), t.caption) for t in split.triples]
    assert sorted(seen) == sorted(expected) and seen != expected


def test_group_by_image_keeps_file_order():
    from itm.data.folder import Triple

    triples = [Triple("b", "1", True), Triple("a", "2", False), Triple("b", "3", False), Triple("a", "4", True)]
    assert {k: [t.caption for t in v] for k, v in group_by_image(triples).items()} == {"b": ["1", "3"], "a": ["2", "4"]}
    assert list(group_by_image(triples)) == ["b", "a"]


def test_grouped_epochs_hold_every_triple_once_and_resume_where_they_were(tiny_data):
    from itm.data.batches import grouped_epochs
    from itm.data.images import load_image_cache

    data = load_data_dir(tiny_data)
    train = data.splits["train"]
    cache = load_image_cache([t.image for t in train.triples], train.images_dir, 32)
    by_vector = {v.tobytes(): c for c, v in data.embeddings.items()}

    def epochs(first, last):
        out = {}
        stream = list(grouped_epochs(train, data.embeddings, cache, 3, seed=5, first_epoch=first, epochs=last))
        per_epoch = -(-len(group_by_image(train.triples)) // 3)
        for k in range(last - first):
            out[first + k + 1] = stream[k * per_epoch:(k + 1) * per_epoch]
        return out

    whole, resumed = epochs(0, 3), epochs(2, 3)
    for (x, y), (x2, y2) in zip(whole[3], resumed[3]):  # epoch 3 is the same, resumed or not
        np.testing.assert_array_equal(x["images"], x2["images"])
        np.testing.assert_array_equal(y, y2)
    seen = []
    for x, y in whole[1]:
        assert x["images"].dtype == np.uint8 and len(x["owner"]) == len(y) == len(x["text_embedding"])
        for owner, vector, label in zip(x["owner"].numpy(), x["text_embedding"].numpy(), y.numpy()):
            image = cache.names[[i for i, p in enumerate(cache.pixels) if (p == x["images"][owner].numpy()).all()][0]]
            seen.append((image, by_vector[vector.tobytes()], bool(label[0])))
    assert sorted(seen) == sorted((t.image, t.caption, t.match) for t in train.triples)


def test_redrawn_negatives_change_each_epoch_and_never_use_own_captions(tiny_data):
    from itm.data.batches import cached_triples
    from itm.data.images import load_image_cache

    data = load_data_dir(tiny_data)
    train = data.splits["train"]
    cache = load_image_cache([t.image for t in train.triples], train.images_dir, 32)
    ds = cached_triples(train, data.embeddings, cache, batch_size=1000, seed=0, first_epoch=0, epochs=2,
                        negatives="redraw")
    by_vector = {v.tobytes(): c for c, v in data.embeddings.items()}
    own = {}
    for t in train.triples:
        own.setdefault(t.image, set()).update([t.caption] if t.match else [])
    pixels_of = {cache.pixels[cache.index[t.image]].tobytes(): t.image for t in train.triples}
    epochs = []
    for features, labels in ds:  # one batch per epoch: the whole split, in that epoch's order
        captions = [by_vector[v.tobytes()] for v in features["text_embedding"].numpy()]
        images = [pixels_of[x.astype(np.uint8).tobytes()] for x in features["image_input"].numpy()]  # pixels 0..255
        matches = [y[0] == 1 for y in labels.numpy()]
        assert sorted(zip(images, matches)) == sorted((t.image, t.match) for t in train.triples)
        for image, caption, match in zip(images, captions, matches):
            assert (caption in own[image]) == match
        epochs.append(sorted(zip(images, captions)))
    assert len(epochs) == 2 and epochs[0] != epochs[1]


def test_an_image_over_the_pixel_bound_is_refused_from_its_header(tiny_data):
    from PIL import Image

    from itm.data import image_files

    Image.new("RGB", (300, 200)).save(tiny_data / IMAGES_SUBDIR / "big.png")
    _use_image(tiny_data, "big.png")
    old, image_files.MAX_PIXELS = image_files.MAX_PIXELS, 50_000
    try:
        with pytest.raises(DataError, match="big.png: is 300x200 pixels, more than the 50,000 allowed"):
            load_data_dir(tiny_data)
    finally:
        image_files.MAX_PIXELS = old
