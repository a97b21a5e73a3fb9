"""`itm serve` and the Matcher under a careless operator and hostile clients (issue 30), and notes that belong
to the request that caused them (issue 36). In-process: the real app through FastAPI's TestClient, over a
real tiny run trained here and real files on disk."""
import math
import os
import shutil
import tracemalloc

import numpy as np
import pytest

from conftest import NO_SERVE_EXTRA, itm_cli

pytest.importorskip("fastapi", reason=NO_SERVE_EXTRA)
IMAGES = "flickr8k-resised"


@pytest.fixture(scope="module")
def run(faithful_run):
    """The session's tiny faithful run (read only: the NaN run is a copy)."""
    return faithful_run


@pytest.fixture(scope="module")
def folder_captions(tiny_data_master):
    rows = [line.split("\t") for line in (tiny_data_master / "flickr8k.DevImages.txt").read_text().splitlines()]
    return [caption for _, caption, _ in rows]


@pytest.fixture
def served(run, tiny_data_master, tmp_path, monkeypatch):
    """A copy of the photos, free to break, served by an app over a Matcher that has no sentence encoder."""
    from fastapi.testclient import TestClient

    from itm import Matcher
    from itm.serving.server import create_app

    monkeypatch.setenv("ITM_CACHE_DIR", str(tmp_path / "cache"))
    images = shutil.copytree(tiny_data_master / IMAGES, tmp_path / "photos")
    matcher = Matcher.load(run, encoder=False)
    return TestClient(create_app(matcher, images)), images, matcher


def _search(client, query="a dog", top=100):
    r = client.post("/api/search", json={"query": query, "top": top})
    return r


def test_a_photo_swapped_for_a_symlink_removed_or_replaced_is_a_404(served, folder_captions, tmp_path):
    client, images, _ = served
    r = _search(client, folder_captions[0])
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) >= 5
    first, second, third, fourth = hits[:4]
    got = client.get(first["url"])
    assert got.status_code == 200 and got.content == (images / first["image"]).read_bytes()
    assert got.headers["content-type"] == "image/jpeg"

    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (images / first["image"]).unlink()
    (images / first["image"]).symlink_to(secret)  # the issue's /etc/passwd, outside the folder
    (images / second["image"]).unlink()  # vanished
    (images / third["image"]).write_bytes((images / fourth["image"]).read_bytes() + b"x")  # another file now
    inside = images / "elsewhere.txt"
    inside.write_text("root: not a photo either\n")
    for hit in (first, second, third):
        r = client.get(hit["url"])
        assert r.status_code == 404, (hit, r.status_code)
        assert b"root:" not in r.content and "no longer the one indexed" in r.json()["detail"]
    os.utime(images / fourth["image"])  # touched: no longer the file indexed (modification time)
    assert client.get(fourth["url"]).status_code == 404
    # another file renamed over a photo, of the same size and with its modification time: another inode
    fifth = hits[4]
    target = images / fifth["image"]
    before = target.stat()
    other = tmp_path / "other.jpg"
    other.write_bytes(bytes(reversed(target.read_bytes())))
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, target)
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns
    assert client.get(fifth["url"]).status_code == 404
    # a symlink to another file inside the folder is not the file indexed either
    (images / first["image"]).unlink()
    (images / first["image"]).symlink_to(inside)
    assert client.get(first["url"]).status_code == 404
    assert client.get("/healthz").status_code == 200


def test_a_new_caption_without_the_encoder_is_a_400_that_names_no_server_path(served, run, tiny_data_master):
    client, images, _ = served
    caption = "a purple giraffe reads a newspaper"
    for r in (client.post("/api/match", files={"image": ("x.jpg", next(images.iterdir()).read_bytes())},
                          data={"caption": [caption]}),
              _search(client, caption)):
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert "cannot embed 1 caption(s)" in detail and "the run's data folder" in detail
        for path in (tiny_data_master, run, images, tiny_data_master.resolve()):
            assert str(path) not in detail
        assert "/tmp" not in detail and "/root" not in detail


def test_new_captions_per_request_are_bounded_413(served, folder_captions):
    from itm.serving.server import MAX_NEW_CAPTIONS

    client, images, _ = served
    photo = next(images.iterdir()).read_bytes()
    new = [f"caption number {i} about a {'very ' * 100}long walk" for i in range(MAX_NEW_CAPTIONS + 1)]
    r = client.post("/api/match", files={"image": ("x.jpg", photo)}, data={"caption": new})
    assert r.status_code == 413 and f"at most {MAX_NEW_CAPTIONS} per request" in r.json()["detail"]
    # the data folder's captions cost no encoding: MAX_CAPTIONS of them are fine
    r = client.post("/api/match", files={"image": ("x.jpg", photo)}, data={"caption": folder_captions[:20]})
    assert r.status_code == 200 and len(r.json()["results"]) == len(folder_captions[:20])
    assert client.get("/healthz").json()["max_new_captions"] == MAX_NEW_CAPTIONS
    # a caption over the length limit is a 400 before anything is embedded
    r = client.post("/api/match", files={"image": ("x.jpg", photo)}, data={"caption": ["a" * 1001]})
    assert r.status_code == 400 and "longer than the 1,000 allowed" in r.json()["detail"]


@pytest.mark.parametrize("body", [
    b'{"query": "\\ud800"}',  # a lone surrogate: not text any encoder can take
    b'{"query": "a dog", "top": NaN}',
    b'{"query": "a dog", "top": Infinity}',
    b'{"query": NaN}',
    b'{"query": "\\u200b\\u200b\\u200b"}',  # zero-width spaces only
    b'{"query": "\\u0000"}',
    b'{"query": "\\ufeff \\u2060\\u0000\\t"}',
])
def test_unencodable_text_non_finite_numbers_and_invisible_queries_are_400(served, body):
    client, _, _ = served
    r = client.post("/api/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, (body, r.status_code, r.text)
    assert r.json()["detail"]


def test_invisible_or_unencodable_captions_are_refused_like_empty_ones(served, folder_captions):
    from itm.errors import CaptionError
    from itm.captions import check_captions

    client, images, matcher = served
    photo = next(images.iterdir()).read_bytes()
    for caption in ("\u200b\u200c\u200d", "\x00", "\ufeff", " \x00 "):
        r = client.post("/api/match", files={"image": ("x.jpg", photo)}, data={"caption": [caption]})
        assert r.status_code == 400 and "no caption" in r.json()["detail"], repr(caption)
        with pytest.raises(CaptionError, match="non-empty"):
            check_captions([caption])
    with pytest.raises(CaptionError, match="not valid Unicode"):
        matcher.score(images / next(iter(os.listdir(images))), ["a dog \ud800"])
    assert check_captions(["a\u200bdog"]) == ["a\u200bdog"]  # visible text with a zero-width space is a caption


def test_a_non_image_named_jpg_is_skipped_without_being_read_whole(run, tiny_data_master, tmp_path, monkeypatch):
    """A 300 MB sparse file named big.jpg among the photos: skipped, and the peak of Python's memory while
    indexing stays far below its size (it was read whole first: 2.9 GB peak for a 2 GiB file)."""
    from itm import Matcher
    from itm.data.image_files import image_problem

    monkeypatch.setenv("ITM_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in sorted(os.listdir(tiny_data_master / IMAGES))[:3]:
        shutil.copy(tiny_data_master / IMAGES / name, folder / name)
    big = folder / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(300 * 2**20)
    matcher = Matcher.load(run, encoder=False)
    tracemalloc.start()
    try:
        index = matcher.index_folder(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index.paths) == 3 and any("big.jpg is not an image" in s for s in index.skipped), index.skipped
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB while indexing"
    assert "is not an image in a format that can be read" in image_problem(big)


@pytest.fixture(scope="module")
def nan_run(run, tmp_path_factory):
    """A copy of the run whose head's weights hold NaN, saved as training saves a model."""
    import keras

    out = tmp_path_factory.mktemp("nan") / "run"
    shutil.copytree(run, out)
    model = keras.saving.load_model(out / "model.keras")
    w = model.weights[-1]
    w.assign(np.full(w.shape, np.nan, w.dtype))
    model.save(out / "model.keras")
    return out


def test_a_model_with_nan_weights_is_refused_in_one_line(nan_run, tiny_data_master):
    photo = tiny_data_master / IMAGES / sorted(os.listdir(tiny_data_master / IMAGES))[0]
    for extra in ((), ("--json",)):
        r = itm_cli("predict", "--run", nan_run, "--image", photo, "--caption", "a dog", *extra)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert r.stdout == "" and "nan" not in r.stdout.lower()
        lines = r.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and "NaN or infinite weights" in lines[-1] and "Traceback" not in r.stderr


def test_nan_from_the_model_at_prediction_is_an_error_never_a_null(run, tiny_data_master, folder_captions):
    """Weights that turn NaN after loading (or an input that overflows): /api/match answers a 500 that says
    why, never ``p_match: null``; the Matcher raises instead of returning NaN."""
    from fastapi.testclient import TestClient

    from itm import Matcher
    from itm.errors import ModelOutputError
    from itm.serving.server import create_app

    matcher = Matcher.load(run, encoder=False)
    w = matcher.model.weights[-1]
    w.assign(np.full(w.shape, np.nan, w.dtype))
    photo = tiny_data_master / IMAGES / sorted(os.listdir(tiny_data_master / IMAGES))[0]
    with pytest.raises(ModelOutputError, match="non-finite p\\(match\\)"):
        matcher.score(photo, folder_captions[:2])
    client = TestClient(create_app(matcher), raise_server_exceptions=False)
    r = client.post("/api/match", files={"image": ("x.jpg", photo.read_bytes())}, data={"caption": folder_captions[:2]})
    assert r.status_code == 500 and "non-finite p(match)" in r.json()["detail"]
    assert "null" not in r.text and str(run) not in r.text


def test_predict_json_is_valid_json_with_finite_numbers(run, tiny_data_master, folder_captions):
    import json

    photo = tiny_data_master / IMAGES / sorted(os.listdir(tiny_data_master / IMAGES))[0]
    r = itm_cli("predict", "--run", run, "--image", photo, "--caption", folder_captions[0], "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    assert all(math.isfinite(x["p_match"]) for x in out["results"])


def test_each_answer_carries_its_own_notes(run, tiny_data_master, folder_captions, tmp_path, monkeypatch):
    """Issue 36: /healthz serves the run's notes only (demo data); each /api/match and /api/search answer
    carries the notes of its own captions, whatever other clients sent before."""
    from fastapi.testclient import TestClient

    from itm import Matcher
    from itm.serving.server import create_app

    monkeypatch.setenv("ITM_CACHE_DIR", str(tmp_path / "cache"))
    matcher = Matcher.load(run)
    if matcher.captions.encoder is None:
        from itm.models.encoders import find_encoder

        if find_encoder()[0] is None:
            pytest.skip("no sentence encoder here (pip install '.[text]')")
    client = TestClient(create_app(matcher, tiny_data_master / IMAGES))
    photo = (tiny_data_master / IMAGES / sorted(os.listdir(tiny_data_master / IMAGES))[0]).read_bytes()

    def match(captions):
        r = client.post("/api/match", files={"image": ("x.jpg", photo)}, data={"caption": captions})
        assert r.status_code == 200, r.text
        return r.json()["notes"]

    health = client.get("/healthz").json()["notes"]
    assert len(health) == 1 and "synthetic demo data" in health[0]
    assert match(folder_captions[:3]) == []
    notes = match(["a purple giraffe reads a newspaper", "two giraffes", folder_captions[0]])
    assert len(notes) == 1 and notes[0].startswith("2 caption(s) were not in the run's data folder")
    assert match(folder_captions[:3]) == []  # the next visitor sees none of the earlier one's
    assert match(["A purple giraffe  reads a newspaper"])[0].startswith("1 caption(s)")  # remembered, still new
    r = client.post("/api/search", json={"query": "a purple giraffe reads a newspaper", "top": 3})
    assert r.status_code == 200 and r.json()["notes"][0].startswith("1 caption(s)")
    r = client.post("/api/search", json={"query": folder_captions[1], "top": 3})
    assert r.status_code == 200 and r.json()["notes"] == []
    assert client.get("/healthz").json()["notes"] == health  # no running count
