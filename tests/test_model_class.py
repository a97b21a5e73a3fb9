"""The classifier as one Keras class, ``ITMClassifier``: it owns its image encoder, text encoder and head,
round-trips through ``.keras``, scores as its parts do, keeps the faithful size, and old runs load as it."""
import json
import os
import shutil

import keras
import numpy as np
import pytest

from conftest import run_cli
from itm.models.classifier import OUTPUT_NAME, ITMClassifier, build_model

SIZE = 32
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
OLD_RUNS = {"itm-0.2": os.path.join(FIXTURES, "run-itm-0.2-faithful"),  # one flat graph on pixels in [0, 1]
            "f04bf50": os.path.join(FIXTURES, "run-main-f04bf50-faithful")}  # keras.Model of the 3 parts


def _inputs(n=3, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return {"image_input": rng.random((n, size, size, 3), dtype=np.float32) * 255,
            "text_embedding": rng.normal(0, 0.05, (n, 384)).astype(np.float32)}


def test_the_faithful_model_keeps_its_size_and_parts():
    model = build_model()
    assert isinstance(model, ITMClassifier) and model.name == "itm_classifier"
    assert model.count_params() == 6_529_570  # the original's
    assert [layer.name for layer in model.layers] == ["image_input", "text_embedding", "image_encoder",
                                                      "text_encoder", "head"]
    assert model.layers[2:] == [model.image_encoder, model.text_encoder, model.head]
    assert (model.image_encoder.count_params(), model.text_encoder.count_params(), model.head.count_params()) == (
        6_463_008, 66_048, 514)
    # the parts held as attributes are not counted (or trained) twice
    assert len(model.weights) == sum(len(p.weights) for p in model.layers[2:]) == len({id(w) for w in model.weights})
    assert model.head.get_layer(OUTPUT_NAME).activation.__name__ == "softmax"


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_encode_and_score_give_the_models_own_output(fusion):
    model = build_model(image_size=SIZE, fusion=fusion)
    x = _inputs()
    zi, zt = model.encode_image(x["image_input"]), model.encode_text(x["text_embedding"])
    assert zi.shape == ((3, 16, 128) if fusion == "attention" else (3, 128)) and zt.shape == (3, 128)
    np.testing.assert_allclose(model.score(zi, zt), model(x, training=False), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="no frozen part"):
        _ = model.image_frozen


def test_the_class_round_trips_through_a_keras_file(tmp_path):
    import itm.models.optim  # noqa: F401  (registers itm's serializable classes)

    model = build_model(image_size=SIZE, image_tower="cnn-bn", fusion="interaction", augment=True)
    model.compile(optimizer=itm.models.optim.create_optimizer(1e-3, 10, 1), loss=keras.losses.KLDivergence())
    model.optimizer.build(model.trainable_variables)  # as after training: its variables are saved too
    x = _inputs()
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded) is ITMClassifier and type(loaded.optimizer).__name__ == "AdamWeightDecay"
    assert all(isinstance(p, keras.Model) and not isinstance(p, ITMClassifier)
               for p in (loaded.image_encoder, loaded.text_encoder, loaded.head))
    assert loaded.count_params() == model.count_params() and len(loaded.weights) == len(model.weights)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_array_equal(loaded.encode_image(x["image_input"]), model.encode_image(x["image_input"]))


def test_a_frozen_backbone_round_trips_with_its_frozen_part(tmp_path):
    model = build_model(image_size=SIZE, image_tower="mobilenetv2", freeze_backbone=True, fusion="interaction")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.image_frozen.output.shape == (None, 1280) and not loaded.image_frozen.trainable_weights
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    x = _inputs()
    features = loaded.image_frozen(x["image_input"], training=False)
    p = loaded.score(loaded.image_trained(features, training=False), loaded.encode_text(x["text_embedding"]))
    np.testing.assert_allclose(p, model(x, training=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("old", list(OLD_RUNS))
def test_an_old_run_loads_as_the_class_and_scores_as_it_did(old, tmp_path):
    """Runs of itm 0.2 (one flat graph) and of f04bf50 (a plain functional keras.Model of the three named parts) load
    converted, with the scores their version computed (each fixture's README.md says how it was written)."""
    from itm.models.run_reader import SavedRun

    run = shutil.copytree(OLD_RUNS[old], tmp_path / "run")
    expected = np.load(run / "expected.npz")
    model = SavedRun(run).load_model()
    assert type(model) is ITMClassifier and model.layers[2:] == [model.image_encoder, model.text_encoder, model.head]
    x = {"image_input": expected["pixels"].astype(np.float32), "text_embedding": expected["text_embedding"]}
    np.testing.assert_allclose(model(x, training=False), expected["p"], atol=1e-6)
    zi, zt = model.encode_image(x["image_input"]), model.encode_text(x["text_embedding"])
    np.testing.assert_allclose(model.score(zi, zt), expected["p"], atol=1e-6)
    if old == "f04bf50":  # compiled as it was saved, with its trained optimizer
        assert type(model.optimizer).__name__ == "AdamWeightDecay" and int(model.optimizer.iterations) > 0


@pytest.mark.fresh_process
def test_import_itm_lets_keras_load_old_and_new_model_files(tmp_path):
    """``keras.saving.load_model`` after ``import itm`` alone (a fresh process: nothing else of itm imported)
    loads a model.keras of today (as the class) and the old ones as the plain functional models they were saved
    as, with the scores their version computed (itm 0.2's flat graph on pixels in [0, 1]). Turning an old one
    into the class is itm's loader's (``SavedRun.load_model``, ``itm.load``; the test above): Keras looks an old
    file's class up by the built-in name ``Functional``, which itm does not take over for every model in the
    process, and a 0.2 file needs its run's config.json, which is not in the archive."""
    new = tmp_path / "new.keras"
    build_model(image_size=8, projection_dim=8).save(new)
    code = ("import json, sys, itm, keras, numpy as np\n"
            "out = []\n"
            "for p, scale in zip(sys.argv[1::2], sys.argv[2::2]):\n"
            "    m = keras.saving.load_model(p + '/model.keras' if scale else p)\n"
            "    diff = None\n"
            "    if scale:\n"
            "        e = np.load(p + '/expected.npz')\n"
            "        x = {'image_input': e['pixels'].astype('float32') * float(scale), 'text_embedding': e['text_embedding']}\n"
            "        diff = float(np.abs(np.asarray(m(x, training=False)) - e['p']).max())\n"
            "    out.append([type(m).__name__, diff])\n"
            "print(json.dumps(out))")
    r = run_cli(["-c", code, OLD_RUNS["f04bf50"], "1", OLD_RUNS["itm-0.2"], str(1 / 255), str(new), ""])
    assert r.returncode == 0, r.stderr[-3000:]
    (f04bf50, f04bf50_diff), (v02, v02_diff), (today, _) = json.loads(r.stdout.strip().splitlines()[-1])
    assert (f04bf50, v02, today) == ("Functional", "Functional", "ITMClassifier")
    assert f04bf50_diff < 1e-6 and v02_diff < 1e-6


def test_each_command_line_name_chooses_its_typed_part():
    """``model_parts`` is where the names the command line takes become typed towers and a head: the class each
    name chooses, a backbone's own settings carried over, and what a part asks of the others (raw captions,
    region tokens)."""
    from itm.models import BACKBONE_PAIRS, FUSION_HEADS, IMAGE_TOWERS, TEXT_TOWERS
    from itm.models.classifier import MiniLMText, ScratchText, TextTower, model_parts
    from itm.models.config import ModelConfig
    from itm.models.fusion_heads import AttentionHead, ConcatHead, InteractionHead, MLPHead, RelationHead
    from itm.models.image_towers import BackbonePair, BatchNormCNN, FaithfulCNN, PretrainedBackbone

    def parts(**options):
        return model_parts(ModelConfig.from_flat(options))

    image = {name: parts(image_tower=name)[0] for name in IMAGE_TOWERS}
    assert image["faithful-cnn"] == FaithfulCNN() and image["cnn-bn"] == BatchNormCNN()
    for name in IMAGE_TOWERS[2:]:
        if name not in BACKBONE_PAIRS:
            assert image[name] == PretrainedBackbone(name, "none", freeze=False, pooling="avg", unfreeze_from=None)
    pair = "efficientnet-lite2+mobilenetv2"
    assert image[pair] == BackbonePair(PretrainedBackbone("efficientnet-lite2"), PretrainedBackbone("mobilenetv2"))
    assert parts(image_tower=pair, image_weights="imagenet-lite", freeze_backbone=True)[0] == BackbonePair(
        PretrainedBackbone("efficientnet-lite2", "imagenet-lite", freeze=True),
        PretrainedBackbone("mobilenetv2", "torchvision", freeze=True))  # each network's own offline weights
    assert parts(image_tower="mobilenetv2", image_weights="torchvision", freeze_backbone=True,
                 unfreeze_from="block_14_expand", backbone_pooling="avgmax")[0] == PretrainedBackbone(
        "mobilenetv2", "torchvision", freeze=True, pooling="avgmax", unfreeze_from="block_14_expand")

    text = {name: parts(text_tower=name)[1] for name in TEXT_TOWERS}
    assert [type(t) for t in text.values()] == [TextTower, MiniLMText, ScratchText]
    assert [t.reads_raw_text for t in text.values()] == [False, True, True]
    assert parts(text_tower="minilm", text_trainable=True)[1] == MiniLMText(trainable=True) != text["minilm"]

    heads = {name: parts(fusion=name)[2] for name in FUSION_HEADS}
    assert [type(h) for h in heads.values()] == [ConcatHead, MLPHead, InteractionHead, RelationHead, AttentionHead]
    assert [h.takes_tokens for h in heads.values()] == [False, False, False, False, True]
    with pytest.raises(ValueError, match="unknown image tower 'vgg'; choose from faithful-cnn, cnn-bn, mobilenetv2"):
        parts(image_tower="vgg")


def _saved_layout(run_folder: str, tmp_path) -> tuple[set, list, int]:
    """What an old run's model.keras holds, read from the file itself (not through itm's loader): the names of
    its computing layers (not its inputs, nor itm 0.2's Identity layers in front of the head), its weights' shapes
    and its parameter count."""
    import zipfile

    import h5py

    with zipfile.ZipFile(os.path.join(run_folder, "model.keras")) as z:
        config = json.loads(z.read("config.json"))
        z.extract("model.weights.h5", tmp_path)
    names = set()

    def walk(node):
        if isinstance(node, dict):
            computes = node.get("class_name") not in ("InputLayer", "Identity")
            if str(node.get("module", "")).startswith("keras.layers") and computes:
                names.add(node["config"]["name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    shapes = []
    with h5py.File(tmp_path / "model.weights.h5") as f:
        f.visititems(lambda name, obj: shapes.append(tuple(obj.shape))
                     if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer") else None)
    return names, sorted(shapes), sum(int(np.prod(s)) for s in shapes)


@pytest.mark.parametrize("old", list(OLD_RUNS))
def test_an_old_runs_options_choose_the_parts_that_build_its_saved_layers(old, tmp_path):
    """An old run's options resolve to the faithful parts, and those build the very layers (by name), weight
    shapes and parameter count its model.keras holds, so its weights load by name and position. itm 0.2's flat
    graph took pixels in [0, 1]: only the rescaling in front is new."""
    from itm.models.classifier import TextTower, model_parts
    from itm.models.config import ModelConfig
    from itm.models.fusion_heads import ConcatHead
    from itm.models.image_towers import FaithfulCNN
    from itm.models.run_reader import SavedRun

    config = ModelConfig.from_flat(SavedRun(OLD_RUNS[old]).config)  # image size 8, projections of 8
    assert model_parts(config) == (FaithfulCNN(), TextTower(), ConcatHead())
    names, shapes, params = _saved_layout(OLD_RUNS[old], tmp_path)
    model = build_model(config)
    built = {layer.name for layer in model.flat_layers() if not isinstance(layer, keras.layers.InputLayer)}
    assert built - names == ({"image_rescale"} if old == "itm-0.2" else set()) and names <= built
    assert "image_flatten" in names and "ITM_Classifier-flickr" in names
    assert sorted(tuple(w.shape) for w in model.weights) == shapes and model.count_params() == params == 27_394
