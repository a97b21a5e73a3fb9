"""The tf.data pipeline: what the model and the people reading predictions get."""
import numpy as np

from itm.data import load_data_dir, make_dataset


def test_batches_shapes_dtypes_and_labels(tiny_data):
    data = load_data_dir(tiny_data)
    split = data.splits["test"]
    ds = make_dataset(split, data.embeddings, batch_size=8, shuffle=False, image_size=224)
    batches = list(ds)
    assert [len(b[1]) for b in batches] == [8, 8, 8]
    features, labels = batches[0]
    assert features["image_input"].shape == (8, 224, 224, 3) and features["image_input"].dtype.name == "float32"
    assert features["text_embedding"].shape == (8, 384)
    img = features["image_input"].numpy()
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() > 0.5
    for i, t in enumerate(split.triples[:8]):
        assert features["caption"][i].numpy().decode() == t.caption
        assert features["file_name"][i].numpy().decode().endswith(t.image)
        assert labels[i].numpy().tolist() == ([1, 0] if t.match else [0, 1])
        np.testing.assert_array_equal(features["text_embedding"][i].numpy(), data.embeddings[t.caption])


def test_shuffle_keeps_every_triple_once(tiny_data):
    data = load_data_dir(tiny_data)
    split = data.splits["train"]
    ds = make_dataset(split, data.embeddings, batch_size=16, shuffle=True, seed=1, image_size=32)
    seen = [(f.decode(), c.decode()) for features, _ in ds
            for f, c in zip(features["file_name"].numpy(), features["caption"].numpy())]
    expected = [(str(split.images_dir / t.image), t.caption) for t in split.triples]
    assert sorted(seen) == sorted(expected) and seen != expected
