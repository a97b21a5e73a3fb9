"""Stronger models: every fusion head, image tower and objective on the tiny fixture."""
import json

import keras
import numpy as np
import pytest

from conftest import run_cli
from itm.data import load_data_dir, load_image_cache, make_cached_dataset
from itm.model import FUSION_HEADS, build_model, split_model

SIZE = 32


def _inputs(n=3, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return {"image_input": rng.random((n, size, size, 3), dtype=np.float32),
            "text_embedding": rng.normal(0, 0.05, (n, 384)).astype(np.float32)}


def _round_trip(model, tmp_path, x):
    import itm.optim  # noqa: F401  (registers itm's serializable classes)

    before = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    after = keras.saving.load_model(tmp_path / "m.keras").predict(x, verbose=0)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    return before


@pytest.mark.parametrize("fusion", list(FUSION_HEADS))
def test_fusion_heads(fusion, tmp_path):
    model = build_model(image_size=SIZE, fusion=fusion)
    p = _round_trip(model, tmp_path, _inputs())
    assert p.shape == (3, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    image_encoder, text_encoder, head = split_model(model)
    zi = image_encoder.predict(_inputs()["image_input"], verbose=0)
    assert zi.ndim == (3 if fusion == "attention" else 2)
    zt = text_encoder.predict(_inputs()["text_embedding"], verbose=0)
    np.testing.assert_allclose(head.predict([zi, zt], verbose=0), p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tower", ["cnn-bn", "efficientnetb0", "mobilenetv3small", "resnet50"])
def test_image_towers(tower, tmp_path):
    model = build_model(image_size=SIZE, image_tower=tower, fusion="interaction", augment=True)
    assert _round_trip(model, tmp_path, _inputs()).shape == (3, 2)


def test_backbone_weights_from_a_file_and_frozen(tmp_path):
    first = build_model(image_size=SIZE, image_tower="mobilenetv3small")
    backbone = next(layer for layer in first.layers if isinstance(layer, keras.Model))
    backbone.save_weights(tmp_path / "backbone.weights.h5")
    second = build_model(image_size=SIZE, image_tower="mobilenetv3small",
                         image_weights=str(tmp_path / "backbone.weights.h5"), freeze_backbone=True)
    loaded = next(layer for layer in second.layers if isinstance(layer, keras.Model))
    for a, b in zip(backbone.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not loaded.trainable
    assert second.count_params() - sum(int(np.prod(w.shape)) for w in second.trainable_weights) >= loaded.count_params()


def test_redrawn_negatives_change_each_epoch_and_never_use_own_captions(tiny_data):
    data = load_data_dir(tiny_data)
    train = data.splits["train"]
    cache = load_image_cache([train], SIZE)
    ds = make_cached_dataset(train, data.embeddings, cache, batch_size=1000, shuffle=False, seed=0,
                             negatives="redraw")
    by_vector = {v.tobytes(): c for c, v in data.embeddings.items()}
    own = {}
    for t in train.triples:
        own.setdefault(t.image, set()).update([t.caption] if t.match else [])
    epochs = []
    for _ in range(2):
        (features, labels), = list(ds)
        captions = [by_vector[v.tobytes()] for v in features["text_embedding"].numpy()]
        assert labels.numpy().tolist() == [[1, 0] if t.match else [0, 1] for t in train.triples]
        for t, caption in zip(train.triples, captions):
            assert (caption in own[t.image]) == t.match
        epochs.append(captions)
    assert epochs[0] != epochs[1]
    np.testing.assert_allclose(features["image_input"].numpy()[0] * 255, cache.pixels[cache.index[train.triples[0].image]],
                               atol=1e-3)


@pytest.mark.parametrize("extra", [
    ["--objective", "contrastive", "--fusion", "interaction", "--image-tower", "cnn-bn", "--batch-size", "8",
     "--learning-rate", "1e-3", "--hard-negatives", "--soft-targets", "0.1"],
    ["--pipeline", "cached", "--negatives", "redraw", "--fusion", "mlp", "--batch-size", "16",
     "--learning-rate", "1e-3"],
])
def test_objectives_lower_the_loss(extra, tiny_data, tmp_path):
    out = tmp_path / "run"
    r = run_cli(["-m", "itm", "train", "--data-dir", str(tiny_data), "--epochs", "6", "--image-size", str(SIZE),
                 "--seed", "0", "--output-dir", str(out), *extra])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (out / "history.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    loss = [float(row[header.index("loss")]) for row in rows]
    assert len(loss) == 6 and loss[-1] < loss[0], loss
    assert json.loads((out / "metrics.json").read_text())["n"] == 24


def test_info_nce_one_hot_is_clips_loss():
    from itm.grouped import contrastive_targets, info_nce

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (5, 5)).astype(np.float32)
    targets = np.asarray(contrastive_targets(rng.normal(size=(5, 384)).astype(np.float32), 0.0))
    np.testing.assert_array_equal(targets, np.eye(5))

    def log_softmax(x):
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    clip = -0.5 * (np.mean(np.diag(log_softmax(logits))) + np.mean(np.diag(log_softmax(logits.T))))
    np.testing.assert_allclose(float(info_nce(logits, targets)), clip, rtol=1e-5)


def test_soft_targets_do_not_punish_a_caption_that_says_the_same_thing():
    """Images 0 and 1 carry the same caption: one-hot InfoNCE wants image 0 to tell them apart,
    soft targets share the mass between them, so scoring both alike is what they reward."""
    from itm.grouped import contrastive_targets, info_nce

    rng = np.random.default_rng(1)
    text = rng.normal(size=(4, 384)).astype(np.float32)
    text[1] = text[0]
    soft = np.asarray(contrastive_targets(text, 0.1))
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    assert abs(soft[0, 0] - soft[0, 1]) < 1e-6 and soft[0, 0] > 0.45 and soft[2, 2] > 0.99

    peaked = np.full((4, 4), -5.0, np.float32)
    np.fill_diagonal(peaked, 5.0)
    alike = peaked.copy()
    alike[0, 1] = alike[1, 0] = 5.0  # image 0 and caption 1 (the same words) score as a match
    one_hot = np.eye(4, dtype=np.float32)
    assert float(info_nce(alike, soft)) < float(info_nce(peaked, soft))
    assert float(info_nce(alike, one_hot)) > float(info_nce(peaked, one_hot))


def test_xla_compiles_the_fit_step(tiny_data, tmp_path):
    out = tmp_path / "run"
    r = run_cli(["-m", "itm", "train", "--data-dir", str(tiny_data), "--epochs", "1", "--image-size", str(SIZE),
                 "--seed", "0", "--xla", "--output-dir", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "metrics.json").read_text())["config"]["xla"] is True
    r = run_cli(["-m", "itm", "train", "--data-dir", str(tiny_data), "--xla", "--fast"])
    assert r.returncode == 2 and "drop --fast or --xla" in r.stderr and "Traceback" not in r.stderr


def test_command_line_choices_name_the_registries():
    from itm.config import CHOICES
    from itm.model import IMAGE_TOWERS

    assert CHOICES["image_tower"] == tuple(IMAGE_TOWERS) and CHOICES["fusion"] == tuple(FUSION_HEADS)


def test_impossible_options_are_a_clear_error(tiny_data, tmp_path):
    r = run_cli(["-m", "itm", "train", "--data-dir", str(tiny_data), "--negatives", "redraw"])
    assert r.returncode == 2 and "--negatives redraw needs --pipeline cached" in r.stderr
    assert "Traceback" not in r.stderr


def test_minilm_text_tower_trains_on_raw_captions_and_scores_new_ones_without_torch(tiny_data, tmp_path):
    """A model with the all-MiniLM-L6-v2 tower inside, fine-tuned at its own learning rate, trains without
    an embeddings file, and a fresh process that cannot import torch or sentence-transformers scores
    captions it has never seen."""
    pytest.importorskip("tensorflow_text", reason="the minilm tower needs pip install '.[text]'")
    from itm.data import DataError, EMBEDDINGS_PKL
    from itm.text_models import model_folder

    try:
        model_folder()
    except DataError as e:
        pytest.skip(f"no local all-MiniLM-L6-v2 folder: {e}")
    (tiny_data / EMBEDDINGS_PKL).unlink()
    out = tmp_path / "run"
    r = run_cli(["-m", "itm", "train", "--data-dir", str(tiny_data), "--text-tower", "minilm", "--text-trainable",
                 "--text-learning-rate", "1e-6", "--epochs", "1", "--image-size", str(SIZE), "--seed", "0",
                 "--output-dir", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "metrics.json").read_text())["config"]["text_learning_rate"] == 1e-6
    image = next((tiny_data / "flickr8k-resised").glob("*.jpg"))
    script = (
        "import sys\n"
        "class NoTorch:  # importing torch or sentence-transformers fails, as where they are not installed\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'sentence_transformers'):\n"
        "            raise ImportError('not available here')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import itm\n"
        "m = itm.Matcher.load(sys.argv[1], encoder=False)\n"
        "p = m.score(sys.argv[2], ['a red circle on a grey background', 'a purple elephant reading a newspaper'])\n"
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules\n"
        "print(p.shape, float(p.min()), float(p.max()))\n")
    r = run_cli(["-c", script, str(out), str(image)])
    assert r.returncode == 0, r.stderr
    shape, low, high = r.stdout.rsplit(")", 1)[0] + ")", *map(float, r.stdout.rsplit(")", 1)[1].split())
    assert shape.endswith("(1, 2)") and 0.0 <= low <= high <= 1.0
