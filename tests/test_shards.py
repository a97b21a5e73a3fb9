"""TFRecord shards: every triple written once, read back exactly as the faithful pipeline reads it, trained on."""
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import itm_cli
from itm.data.batches import file_triples as make_dataset
from itm.data.folder import IMAGES_SUBDIR, SPLIT_FILES, load_data_dir
from itm.errors import ConfigError, DataError
from itm.options import resolve_config
from itm.data.shards import INDEX_FILE, make_shard_dataset, read_index, write_shards


def _records(path: Path):
    return [tf.train.Example.FromString(r.numpy()).features.feature for r in tf.data.TFRecordDataset(str(path))]


def _tree(root: Path):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_every_triple_written_once_and_rerun_gives_the_same_bytes(tiny_data, tmp_path):
    out = write_shards(tiny_data, num_shards=3)
    assert out == tiny_data / "shards"
    assert sorted(p.name for p in out.iterdir()) == [
        ".itm-folder.json", "dev-00000-of-00001.tfrecord", INDEX_FILE, "test-00000-of-00001.tfrecord",
        "train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord", "train-00002-of-00003.tfrecord"]
    data = load_data_dir(tiny_data)
    index = read_index(out, splits=("train", "dev", "test"), data_dir=tiny_data)
    for name, split in data.splits.items():
        records = [f for p in sorted(out.glob(f"{name}-*.tfrecord")) for f in _records(p)]
        images = {t.image for t in split.triples}
        assert len(records) == len(images) == index["splits"][name]["images"]  # one record per image
        triples = Counter()
        for f in records:
            image = f["image_name"].bytes_list.value[0].decode()
            assert f["image"].bytes_list.value[0] == (tiny_data / IMAGES_SUBDIR / image).read_bytes()  # as stored
            captions = [c.decode() for c in f["caption"].bytes_list.value]
            vectors = np.array(f["text_embedding"].float_list.value, np.float32).reshape(len(captions), 384)
            for caption, vector, match in zip(captions, vectors, f["match"].int64_list.value):
                np.testing.assert_array_equal(vector, data.embeddings[caption])
                triples[(image, caption, bool(match))] += 1
        assert triples == Counter((t.image, t.caption, t.match) for t in split.triples)
        assert sum(triples.values()) == index["splits"][name]["triples"]

    first = _tree(out)
    write_shards(tiny_data, num_shards=3, out=tmp_path / "again")
    assert _tree(tmp_path / "again") == first
    write_shards(tiny_data, num_shards=2)  # another count replaces the earlier shards of each split
    assert sorted(p.name for p in out.glob("train-*")) == ["train-00000-of-00002.tfrecord",
                                                            "train-00001-of-00002.tfrecord"]


def _by_triple(ds, key=lambda name: Path(name).name):
    out = {}
    for features, labels in ds:
        for i in range(len(labels)):
            k = (key(features["file_name"][i].numpy().decode()), features["caption"][i].numpy().decode())
            assert k not in out
            out[k] = (features["image_input"][i].numpy(), features["text_embedding"][i].numpy(), labels[i].numpy())
    return out


def test_the_shard_pipeline_yields_what_the_faithful_one_does(tiny_data):
    write_shards(tiny_data, num_shards=3)
    data = load_data_dir(tiny_data)
    for split, size in (("dev", 224), ("train", 32)):
        faithful = make_dataset(data.splits[split], data.embeddings, batch_size=8, shuffle=False, image_size=size)
        sharded = make_shard_dataset(tiny_data / "shards", split, batch_size=8, shuffle=False, image_size=size)
        assert faithful.element_spec == sharded.element_spec  # same keys, shapes and dtypes
        want, got = _by_triple(faithful), _by_triple(sharded)
        assert got.keys() == want.keys()
        for k, (pixels, vector, label) in want.items():
            np.testing.assert_array_equal(got[k][0], pixels)  # the same preprocess_image, bit for bit
            np.testing.assert_array_equal(got[k][1], vector)
            np.testing.assert_array_equal(got[k][2], label)

    train = data.splits["train"]
    shuffled = make_shard_dataset(tiny_data / "shards", "train", batch_size=16, shuffle=True, seed=1, image_size=32)
    batches = list(shuffled)
    assert [len(b[1]) for b in batches] == [16] * 4
    seen = [(f.decode(), c.decode()) for features, _ in batches
            for f, c in zip(features["file_name"].numpy(), features["caption"].numpy())]
    in_file_order = [(t.image, t.caption) for t in train.triples]
    assert sorted(seen) == sorted(in_file_order) and seen != in_file_order


def test_missing_changed_or_incomplete_shards_are_refused(tiny_data):
    with pytest.raises(DataError, match=r"no shards folder .* itm shard --data-dir"):
        read_index(tiny_data / "shards", data_dir=tiny_data)
    write_shards(tiny_data, num_shards=2)
    (tiny_data / "shards" / "train-00001-of-00002.tfrecord").unlink()
    with pytest.raises(DataError, match="1 train shard.s. missing, e.g. train-00001-of-00002.tfrecord"):
        read_index(tiny_data / "shards", data_dir=tiny_data)
    write_shards(tiny_data, num_shards=2)
    path = tiny_data / SPLIT_FILES["dev"]
    path.write_text(path.read_text().replace("\tmatch", "\tno-match", 1))
    with pytest.raises(DataError, match="DevImages.txt has changed since the shards were written"):
        read_index(tiny_data / "shards", data_dir=tiny_data)


@pytest.mark.parametrize("options, message", [
    (dict(limit=8), "--limit takes the first N triples"),
    (dict(objective="contrastive"), "--pipeline shards is for the kl objective"),
])
def test_impossible_shard_options(options, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(pipeline="shards", **options)
    with pytest.raises(ConfigError, match="--shards-dir is for --pipeline shards"):
        resolve_config(shards_dir="/somewhere")


@pytest.mark.slow
def test_train_on_shards_from_the_command_line(tiny_data, tmp_path):
    r = itm_cli("shard", "--data-dir", str(tiny_data), "--shards", "2", "--out", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    assert "train: 2/2 shards" in r.stderr and f"to {tmp_path / 's'}" in r.stdout
    out = tmp_path / "run"
    r = itm_cli("train", "--data-dir", str(tiny_data), "--pipeline", "shards", "--shards-dir",
                str(tmp_path / "s"), "--epochs", "1", "--image-size", "32", "--seed", "1", "--output-dir", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"train streams from {tmp_path / 's'} (2 TFRecord shards)" in r.stdout
    assert "val_loss" in (out / "history.csv").read_text() and (out / "metrics.json").is_file()
    import keras

    import itm.models.optim  # noqa: F401  (registers the optimizer)

    model = keras.saving.load_model(out / "model.keras")
    assert int(model.optimizer.iterations) == 64 // 16


def test_training_on_a_folder_without_shards_is_a_clear_error(tiny_data, tmp_path):
    r = itm_cli("train", "--data-dir", tiny_data, "--pipeline", "shards", "--epochs", "1",
               "--output-dir", tmp_path / "run")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"--pipeline shards: no shards folder at {tiny_data / 'shards' / INDEX_FILE}" in r.stderr
    assert f"itm shard --data-dir {tiny_data}" in r.stderr
    assert not (tmp_path / "run").exists()


def test_fast_keeps_the_shards_and_their_batch_size():
    config = resolve_config(pipeline="shards", fast=True)
    assert (config.pipeline, config.batch_size, config.learning_rate) == ("shards", 16, 3e-5)


@pytest.mark.parametrize("count", [0, 1, 31, 32, 1920, 40000])  # payload lengths of 1, 2 and 3 varint bytes
def test_float_list_from_bytes_is_the_one_built_float_by_float(count):
    import numpy as np
    import tensorflow as tf

    from itm.data.shards import _float_list

    vectors = np.random.default_rng(count).standard_normal(count).astype(np.float32)
    fast, slow = _float_list(vectors), tf.train.FloatList(value=vectors)
    assert fast.SerializeToString(deterministic=True) == slow.SerializeToString(deterministic=True)
    assert np.array_equal(np.array(fast.value, np.float32), vectors)


def test_shards_from_the_npz_read_row_by_row_are_those_from_the_pickle(tiny_data, tmp_path):
    """The npz's vectors stay in the file (read a row at a time when asked); the shards are the same bytes."""
    from itm.data.embed import write_embeddings
    from itm.data.folder import EMBEDDINGS_NPZ, EMBEDDINGS_PKL, NpzEmbeddings, load_embeddings_file

    write_shards(tiny_data, num_shards=2, out=tmp_path / "from-pkl")
    write_embeddings(tiny_data / EMBEDDINGS_NPZ, load_embeddings_file(tiny_data / EMBEDDINGS_PKL))
    assert isinstance(load_data_dir(tiny_data).embeddings, NpzEmbeddings)
    write_shards(tiny_data, num_shards=2, out=tmp_path / "from-npz")
    pkl, npz = _tree(tmp_path / "from-pkl"), _tree(tmp_path / "from-npz")
    assert [n for n in pkl if n.endswith(".tfrecord")] == [n for n in npz if n.endswith(".tfrecord")]
    assert all(pkl[n] == npz[n] for n in pkl if n.endswith(".tfrecord"))
