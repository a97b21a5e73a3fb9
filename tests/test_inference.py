"""Using a trained run: itm.Matcher and `itm predict|rank|search`, on a real tiny run."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import itm_cli, run_cli

IMAGES = "flickr8k-resised"


@pytest.fixture(scope="module")
def encoder():
    """The sentence encoder for new captions in this environment (TensorFlow or sentence-transformers), or None."""
    from itm.models.encoders import find_encoder

    return find_encoder()[0]


@pytest.fixture(scope="module")
def run(faithful_run):
    return faithful_run


@pytest.fixture(scope="module")
def matcher(run):
    from itm import Matcher

    return Matcher.load(run)


@pytest.fixture(scope="module")
def examples(tiny_data_master):
    """(image path, its match caption, a no-match caption) from the tiny data's dev split."""
    rows = [line.split("\t") for line in (tiny_data_master / "flickr8k.DevImages.txt").read_text().splitlines()]
    image = rows[0][0]
    match = next(c for i, c, lab in rows if i == image and lab == "match")
    other = [c for i, c, lab in rows if i == image and lab == "no-match"]
    return tiny_data_master / IMAGES / image, [match, *other]


@pytest.mark.fresh_process
def test_import_itm_stays_light():
    """Fresh process: what ``import itm`` alone imports in a bare interpreter."""
    r = run_cli(["-c", "import sys, itm; assert 'tensorflow' not in sys.modules, 'tf imported';"
                       "assert itm.Matcher.__name__ == 'Matcher'; print('ok')"])
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_score_equals_the_full_model_on_the_training_pipeline(matcher, examples, tiny_data_master):
    """The split model and the shared preprocessing give exactly what training's pipeline and model give."""
    from itm.data.batches import file_triples as make_dataset
    from itm.data.folder import load_data_dir

    image, captions = examples
    data = load_data_dir(tiny_data_master)
    dev = data.splits["dev"]
    ds = make_dataset(dev, data.embeddings, batch_size=len(dev.triples), shuffle=False,
                      image_size=matcher.image_size)
    features, _ = next(iter(ds))
    p_model = np.asarray(matcher.model({"image_input": features["image_input"],
                                        "text_embedding": features["text_embedding"]}, training=False))[:, 0]
    p_matcher = [matcher.score(dev.images_dir / t.image, t.caption)[0, 0] for t in dev.triples]
    np.testing.assert_allclose(p_matcher, p_model, atol=1e-5)
    assert 0 < min(p_matcher) and max(p_matcher) < 1


def test_encode_image_and_text_mean_what_the_models_do(matcher, examples):
    """``Matcher.encode_image`` / ``encode_text`` give the features the head takes, as the model's methods of the
    same names (``normalize=True``: the unit retrieval vectors); itm 0.2's ``encode_images`` / ``encode_captions``
    give the same features with a DeprecationWarning naming the new name."""
    from itm.data.images import preprocess
    from itm.evaluation.retrieval import embedding_vectors

    image, captions = examples
    zi, zt = matcher.encode_image([image, image]), matcher.encode_text(captions)
    np.testing.assert_allclose(zi, matcher.model.encode_image(preprocess([image] * 2, matcher.image_size)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(zt, matcher.model.encode_text(np.stack([matcher.captions.lookup(c) for c in captions])),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(matcher.pairs(zi, zt), matcher.score([image, image], captions))
    assert not np.allclose(np.linalg.norm(zi, axis=1), 1)  # features, not unit vectors
    vi, vt = matcher.encode_image([image, image], normalize=True), matcher.encode_text(captions, normalize=True)
    np.testing.assert_allclose(vi, embedding_vectors(zi), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vt, embedding_vectors(zt), rtol=1e-5, atol=1e-6)
    with pytest.warns(DeprecationWarning, match=r"Matcher.encode_images is deprecated: use Matcher.encode_image"):
        np.testing.assert_array_equal(matcher.encode_images([image, image]), zi)
    with pytest.warns(DeprecationWarning, match=r"Matcher.encode_captions is deprecated: use Matcher.encode_text"):
        np.testing.assert_array_equal(matcher.encode_captions(captions), zt)


def test_score_takes_paths_bytes_pil_and_arrays(matcher, examples, tmp_path):
    image, captions = examples
    png = tmp_path / "x.png"  # lossless, so that PIL's and TensorFlow's decoders give the same pixels
    Image.open(image).convert("RGB").save(png)
    pil = Image.open(png)
    forms = [png, str(png), png.read_bytes(), pil, np.asarray(pil.convert("RGB")), np.asarray(pil.convert("RGBA"))]
    scores = [matcher.score(form, captions) for form in forms]
    assert scores[0].shape == (1, len(captions))
    for s in scores[1:]:
        np.testing.assert_allclose(s, scores[0], atol=1e-5)
    both = matcher.score([image, png], captions)  # many images x many captions
    assert both.shape == (2, len(captions))
    np.testing.assert_allclose(both[1], scores[0][0], atol=1e-5)
    np.testing.assert_allclose(both[0], matcher.score(image.read_bytes(), captions)[0], atol=1e-5)


def test_caption_spelling_and_new_captions(run, matcher, examples, encoder):
    from itm import Matcher
    from itm.data.images import preprocess
    from itm.errors import CaptionError

    image, captions = examples
    shouted = "  " + captions[0].upper().replace(" ", "  ") + " "
    np.testing.assert_allclose(matcher.score(image, shouted), matcher.score(image, captions[0]), atol=1e-5)
    with pytest.raises(CaptionError, match="at least one caption"):
        matcher.score(image, [])
    with pytest.raises(CaptionError, match="at least one caption"):
        matcher.score(image, ["  "])

    known_only = Matcher.load(run, encoder=False)
    with pytest.raises(CaptionError, match=r"cannot embed 1 caption.*'a purple giraffe'.*pip install"):
        known_only.score(image, [captions[0], "a purple giraffe"])
    if encoder is None:
        with pytest.raises(CaptionError, match=r"cannot embed 1 caption.*'a purple giraffe'.*pip install"):
            matcher.score(image, [captions[0], "a purple giraffe"])
    else:  # a new caption goes through the sentence encoder, then the model, like any other
        p = matcher.score(image, [captions[0], "a purple giraffe"])[0]
        vector = encoder(["a purple giraffe"])
        assert vector.shape == (1, 384)
        full = matcher.model({"image_input": preprocess([image], matcher.image_size), "text_embedding": vector},
                             training=False)
        np.testing.assert_allclose(p[1], np.asarray(full)[0, 0], atol=1e-4)
        np.testing.assert_allclose(p[0], matcher.score(image, captions[0])[0, 0], atol=1e-5)


def test_bad_images_are_refused_readably(matcher, examples, tmp_path):
    from itm.errors import ImageError

    _, captions = examples
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="is not an image"):
        matcher.score(text, captions)
    with pytest.raises(ImageError, match="does not exist"):
        matcher.score(tmp_path / "missing.jpg", captions)
    with pytest.raises(ImageError, match="uint8"):
        matcher.score(np.zeros((8, 8, 3), np.float32), captions)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(examples[0].read_bytes()[:300])
    with pytest.raises(ImageError):
        matcher.score(truncated, captions)


def test_rank_and_search_are_sorted_and_consistent(matcher, examples, tiny_data_master, tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_CACHE_DIR", str(tmp_path / "cache"))
    image, captions = examples
    ranked = matcher.rank(image, captions)
    p = matcher.score(image, captions)[0]
    assert [c for c, _ in ranked] == [captions[i] for i in np.argsort(-p, kind="stable")]
    assert [q for _, q in ranked] == sorted(p.tolist(), reverse=True)
    assert len(matcher.rank(image, captions, top=2)) == 2

    folder = tmp_path / "images"
    shutil.copytree(tiny_data_master / IMAGES, folder)
    n = len(list(folder.glob("*.jpg")))
    first = matcher.index_folder(folder)
    assert first.encoded == n and len(first.paths) == n
    hits = matcher.search(folder, captions[0], top=n)
    direct = matcher.score(list(first.paths), captions[0])[:, 0]
    assert [h[1] for h in hits] == pytest.approx(sorted(direct.tolist(), reverse=True), abs=1e-5)

    second = matcher.index_folder(folder)  # from the cache file: nothing re-encoded
    assert second.encoded == 0 and second.paths == first.paths
    np.testing.assert_array_equal(second.features, first.features)
    assert len(list((tmp_path / "cache" / "search").glob("*.npz"))) == 1

    changed = first.paths[0]
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed, quality=90)
    os.utime(changed, ns=(1, 1))
    (folder / "junk.png").write_bytes(b"not a png")
    third = matcher.index_folder(folder)
    assert third.encoded == 1 and len(third.skipped) == 1 and "junk.png" in third.skipped[0]
    assert third.paths == first.paths


def test_a_contrastive_search_keeps_its_vector_index_beside_the_cache(matcher, examples, tiny_data_master,
                                                                     tmp_path, monkeypatch):
    """The shortlist comes from the folder's VectorIndex, kept up to date as photos arrive, and the results
    are those of the exact product over every image (the fixture run stands in for a contrastive one)."""
    from itm.index import VectorIndex, path_beside
    from itm.serving.matcher import FolderIndex

    monkeypatch.setenv("ITM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(matcher, "contrastive", True)
    _, captions = examples
    folder = tmp_path / "images"
    shutil.copytree(tiny_data_master / IMAGES, folder)
    held_out = sorted(folder.glob("*.jpg"))[-1]
    late = tmp_path / held_out.name
    shutil.move(held_out, late)

    def exact(index, top, rerank):  # the same FolderIndex without its VectorIndex: the matrix product
        plain = FolderIndex(index.paths, index.features, [], 0)
        return matcher.search_index(plain, captions[0], top, rerank)

    def check(index):
        for top, rerank in ((None, None), (2, 3), (3, 1)):
            hits = matcher.search_index(index, captions[0], top, rerank)
            want = exact(index, top, rerank)
            assert [i for i, _ in hits] == [i for i, _ in want]
            assert [p for _, p in hits] == pytest.approx([p for _, p in want], abs=1e-6)

    first = matcher.index_folder(folder)
    saved = [p for p in (tmp_path / "cache" / "search").glob("*.npz") if not p.name.endswith(".index.npz")]
    path = path_beside(saved[0])
    assert first.vectors is not None and first.vectors.backend == "exact" and path.is_file()
    names = {p.name for p in first.paths}
    assert set(VectorIndex.load(path).ids) == names and late.name not in names
    check(first)
    written = path.stat().st_mtime_ns
    assert matcher.index_folder(folder).vectors is not None and path.stat().st_mtime_ns == written  # unchanged

    shutil.move(late, held_out)  # a new photo: added to the saved index, the others kept
    second = matcher.index_folder(folder)
    assert second.encoded == 1 and set(VectorIndex.load(path).ids) == names | {late.name}
    check(second)
    assert any(second.paths[i].name == late.name for i, _ in matcher.search_index(second, captions[0], None))
    second.vectors.remove([late.name])  # the shortlist is the index's: what it lacks is not found
    assert all(second.paths[i].name != late.name for i, _ in matcher.search_index(second, captions[0], None))

    import logging

    from itm.log import logger

    path.unlink()
    path.mkdir()  # a place the index cannot be written: a warning, and the search still works
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        third = matcher.index_folder(folder)
    finally:
        logger.removeHandler(handler)
    assert any("cannot write the search index" in r.getMessage() for r in records), [r.getMessage() for r in records]
    assert third.vectors is not None and len(third.vectors) == len(third.paths)
    check(third)


def test_threshold_is_the_calibrated_one_else_half(run, tmp_path):
    from itm import Matcher

    stored = json.loads((run / "calibration.json").read_text())["threshold"]
    m = Matcher.load(run)
    assert m.threshold == pytest.approx(stored) and "dev-calibrated" in m.threshold_source
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.keras", "metrics.json"):
        shutil.copy(run / name, bare / name)
    m = Matcher.load(bare)
    assert m.threshold == 0.5 and "no calibration.json" in m.threshold_source


def test_predict_rank_search_commands(run, examples, matcher, encoder, tmp_path):
    image, captions = examples
    args = ["predict", "--run", run, "--image", image]
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    capfile = tmp_path / "captions.txt"
    capfile.write_text("\n".join(captions) + "\n\n")
    plain = itm_cli(*args, *sum((["--caption", c] for c in captions[:2]), []))
    as_json = itm_cli(*args, "--caption", captions[0], "--json")
    not_an_image = itm_cli("predict", "--run", run, "--image", bad, "--caption", captions[0])
    new_caption = itm_cli(*args, "--caption", "a purple giraffe")
    ranked = itm_cli("rank", "--run", run, "--image", image, "--captions", capfile, "--top", "2")

    r = plain
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("Threshold: dev-calibrated")
    assert "note: this run was trained on the synthetic demo data" in r.stderr  # the tiny data is demo-made
    p = matcher.score(image, captions[:2])[0]
    for line, c, q in zip(lines[1:], captions, p):
        word = "Match" if q > matcher.threshold else "No-Match"
        assert line == f'Caption: "{c}"  Prediction: {word}  p(match)={q:.2f}  Image: {image}'

    r = as_json
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["results"][0]["p_match"] == pytest.approx(float(p[0]), abs=1e-6)
    assert out["threshold"] == pytest.approx(matcher.threshold)

    r = not_an_image
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "not an image" in r.stderr
    r = new_caption
    if encoder is None:
        assert r.returncode == 2 and "error: cannot embed 1 caption" in r.stderr and "Traceback" not in r.stderr
    else:
        assert r.returncode == 0 and 'Caption: "a purple giraffe"' in r.stdout, r.stderr
        assert f"note: 1 caption(s) were not in the run's data folder and were embedded by {encoder.backend}" in r.stderr

    r = ranked
    assert r.returncode == 0, r.stderr
    best = [c for c, _ in matcher.rank(image, captions, top=2)]
    shown = [line.split('"')[1] for line in r.stdout.splitlines()[1:]]
    assert shown == best

    env = {"ITM_CACHE_DIR": str(tmp_path / "cache")}
    search = ["search", "--run", run, "--images", image.parent, "--query", captions[0], "--top", "3"]
    first, second = itm_cli(*search, env=env), itm_cli(*search, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "0 newly encoded" not in first.stdout and "0 newly encoded" in second.stdout
    assert first.stdout.splitlines()[1:] == second.stdout.splitlines()[1:]
    assert len(second.stdout.splitlines()) == 4


# ---------------------------------------------------------------- tampered run folders

def _copy_run(run, tmp_path):
    bad = tmp_path / "run"
    shutil.copytree(run, bad, ignore=shutil.ignore_patterns("search-cache"))
    return bad


@pytest.mark.parametrize("name, content, message", [
    ("model.keras", b"\x13random bytes", "is not a saved Keras model"),
    ("calibration.json", b"{not json", "calibration file .* is not valid JSON"),
    ("calibration.json", b'{"chosen_on": "dev"}', "has no 'threshold'"),
    ("calibration.json", b'{"threshold": NaN}', "NaN is not a number JSON allows"),
    ("calibration.json", b'{"threshold": 7}', "must lie in \\[0.0, 1.0\\]"),
    ("calibration.json", b'[0.5]', "must hold a JSON object"),
    ("config.json", b"\xff\xfe", "cannot read run file"),
])
def test_a_tampered_run_folder_is_a_clear_error(run, tmp_path, name, content, message):
    from itm import Matcher
    from itm.errors import DataError

    bad = _copy_run(run, tmp_path)
    (bad / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        Matcher.load(bad)


def test_a_model_archive_without_its_config_is_a_clear_error(run, tmp_path):
    import zipfile

    from itm import Matcher
    from itm.errors import DataError

    bad = _copy_run(run, tmp_path)
    with zipfile.ZipFile(run / "model.keras") as src, zipfile.ZipFile(bad / "model.keras", "w") as dst:
        for item in src.infolist():
            if item.filename != "config.json":
                dst.writestr(item, src.read(item))
    with pytest.raises(DataError, match="cannot load .*model.keras"):
        Matcher.load(bad)


def test_tampered_run_folders_give_one_line_errors_from_the_commands(run, examples, tmp_path):
    image, captions = examples
    bad = _copy_run(run, tmp_path)
    (bad / "calibration.json").write_text('{"threshold": NaN}')
    r = itm_cli("predict", "--run", bad, "--image", image, "--caption", captions[0])
    assert r.returncode == 2 and "Traceback" not in r.stderr and "NaN is not a number JSON allows" in r.stderr
    (bad / "metrics.json").write_text("{broken")
    r = itm_cli("evaluate", "--run", bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "metrics file" in r.stderr


FLAT_RUN = os.path.join(os.path.dirname(__file__), "fixtures", "run-itm-0.2-faithful")


def test_a_run_of_itm_0_2_loads_converted_with_its_scores_and_without_config_is_refused(tmp_path):
    """A run folder written by itm 0.2 (one flat graph on pixels in [0, 1]; tests/fixtures/.../README.md)
    loads as the three-part classifier on pixels 0..255 and scores what itm 0.2 scored."""
    from itm import Matcher
    from itm.errors import DataError
    from itm.models.run_reader import SavedRun

    run = shutil.copytree(FLAT_RUN, tmp_path / "run")
    expected = np.load(run / "expected.npz")
    model = SavedRun(run).load_model()
    assert [layer.name for layer in model.layers[2:]] == ["image_encoder", "text_encoder", "head"]
    pixels = expected["pixels"].astype(np.float32)
    p = model({"image_input": pixels, "text_embedding": expected["text_embedding"]}, training=False)
    np.testing.assert_allclose(p, expected["p"], atol=1e-6)

    m = Matcher.load(run, encoder=False)  # its data folder is gone: the matcher still loads
    assert m.threshold == pytest.approx(json.loads((run / "calibration.json").read_text())["threshold"])
    scores = m.scorer.all_pairs(m.scorer.encode_images(expected["pixels"]), m.scorer.encode_texts(expected["text_embedding"]))
    np.testing.assert_allclose(np.diag(scores), expected["p"][:, 0], atol=1e-6)

    (run / "config.json").unlink()  # nothing says how it was built: refused, in one line
    with pytest.raises(DataError, match="cannot be converted: its run has no config.json .*train the run again"):
        SavedRun(run).load_model()
    image = tmp_path / "x.png"
    Image.fromarray(expected["pixels"][0]).save(image)
    r = itm_cli("predict", "--run", run, "--image", image, "--caption", "a red circle")
    assert r.returncode == 2 and "train the run again" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
