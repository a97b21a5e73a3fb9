"""`itm serve` over real HTTP on loopback: good requests, each bad one, 50 at once, random bytes."""
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import NO_SERVE_EXTRA, itm_cli

from serving_helpers import MAX_UPLOAD_MB, Server, server

pytest.importorskip("fastapi", reason=NO_SERVE_EXTRA)
IMAGES = "flickr8k-resised"


@pytest.fixture(scope="module")
def run(faithful_run):
    return faithful_run


@pytest.fixture(scope="module")
def live(run, tiny_data_master, tmp_path_factory):
    return server(run, tiny_data_master / IMAGES, tmp_path_factory)


@pytest.fixture(scope="module")
def matcher(run):
    from itm import Matcher

    return Matcher.load(run)


@pytest.fixture(scope="module")
def triples(tiny_data_master):
    rows = [line.split("\t") for line in (tiny_data_master / "flickr8k.DevImages.txt").read_text().splitlines()]
    return [(tiny_data_master / IMAGES / image, caption) for image, caption, _ in rows]


def post_match(live, image_bytes, captions, name="x.jpg", client=httpx):
    files = [("image", (name, image_bytes, "image/jpeg"))] if image_bytes is not None else []
    return client.post(live.url + "/api/match", files=files or None, data={"caption": captions}, timeout=60)


def test_health_and_openapi(live, matcher):
    h = httpx.get(live.url + "/healthz").json()
    assert h["status"] == "ok" and h["search"] is True
    assert h["threshold"] == pytest.approx(matcher.threshold)
    assert h["notes"] == matcher.notes and "synthetic demo data" in h["notes"][0]  # the page shows them
    schema = httpx.get(live.url + "/openapi.json").json()
    import itm

    assert schema["info"]["version"] == itm.__version__  # one version, not the app's own
    assert {"/api/match", "/api/search", "/healthz"} <= set(schema["paths"])
    body = schema["paths"]["/api/match"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    page = httpx.get(live.url + "/")
    assert page.status_code == 200 and 'id="captions"' in page.text


def test_match_answers_as_the_matcher_does(live, matcher, triples):
    image, _ = triples[0]
    captions = [c for _, c in triples[:4]]
    r = post_match(live, image.read_bytes(), captions)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = matcher.score(image, captions)[0]
    assert [x["caption"] for x in body["results"]] == captions
    np.testing.assert_allclose([x["p_match"] for x in body["results"]], expected, atol=1e-5)
    assert [x["match"] for x in body["results"]] == [bool(p >= matcher.threshold) for p in expected]
    assert body["threshold"] == pytest.approx(matcher.threshold)


def test_bad_requests_get_readable_errors(live, matcher, triples, tmp_path):
    from itm.models.encoders import find_encoder

    image, caption = triples[0]
    jpeg = image.read_bytes()
    cases = {
        "no image": (post_match(live, None, [caption]), 400, "no image"),
        "no caption": (post_match(live, jpeg, []), 400, "no caption"),
        "blank captions": (post_match(live, jpeg, ["  ", ""]), 400, "no caption"),
        "not an image": (post_match(live, b"%PDF-1.4 not an image", [caption], "a.pdf"), 400, "not an image"),
        "truncated image": (post_match(live, jpeg[:200], [caption]), 400, "image"),
        "empty file": (post_match(live, b"", [caption]), 400, "empty"),
        "too large": (post_match(live, jpeg + b"\0" * (MAX_UPLOAD_MB * 2**20), [caption]), 413, "upload limit"),
        "too many captions": (post_match(live, jpeg, [caption] * 101), 400, "too many captions"),
        "caption too long": (post_match(live, jpeg, [caption, "a" * 1001]), 400, "a caption of 1,001 characters"),
        "too many pixels": (post_match(live, _png(7000, 7000), [caption], "big.png"), 400,
                            "7000x7000 pixels, more than the 16,000,000 allowed"),
    }
    if find_encoder()[0] is None:
        cases["caption that cannot be embedded"] = (post_match(live, jpeg, ["a purple giraffe"]), 400, "cannot embed")
    else:  # a new caption is embedded by the sentence encoder
        r = post_match(live, jpeg, ["a purple giraffe"])
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["p_match"] == pytest.approx(
            float(matcher.score(image, "a purple giraffe")[0, 0]), abs=1e-4)
    for name, (r, status, words) in cases.items():
        assert r.status_code == status, (name, r.status_code, r.text)
        assert words in r.json()["detail"], (name, r.text)
    # a streamed body with no Content-Length is cut off at the cap too
    def chunks():
        yield (b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
               b"Content-Type: image/jpeg\r\n\r\n" + jpeg)
        for _ in range(MAX_UPLOAD_MB * 4 + 1):
            yield b"\0" * 2**18
    r = httpx.post(live.url + "/api/match", content=chunks(),
                   headers={"content-type": "multipart/form-data; boundary=x"}, timeout=60)
    assert r.status_code == 413
    assert httpx.get(live.url + "/healthz").status_code == 200  # still serving


def _png(width, height) -> bytes:
    """A one-colour PNG: a small file (61 KB at 7000 x 7000) that claims many pixels."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG", optimize=True)
    return out.getvalue()


def test_fifty_concurrent_requests_are_each_answered_correctly(live, matcher, triples):
    jobs = [(triples[i % len(triples)][0], [triples[(i + k) % len(triples)][1] for k in range(1 + i % 5)])
            for i in range(50)]
    with httpx.Client(limits=httpx.Limits(max_connections=50)) as client:
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda job: post_match(live, job[0].read_bytes(), job[1], client=client), jobs))
    for (image, captions), r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        got = [x["p_match"] for x in r.json()["results"]]
        np.testing.assert_allclose(got, matcher.score(image, captions)[0], atol=1e-5)
    # requests with 1 to 5 captions ran through the same traced model functions: nothing retraced
    live.log.seek(0)
    assert "retracing" not in live.log.read()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=2000), captions=st.lists(st.text(max_size=40), max_size=3))
def test_random_uploads_are_never_a_server_error(live, triples, raw, captions):
    r = post_match(live, raw, captions)
    assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text)
    assert "detail" in r.json() or "results" in r.json()


@pytest.mark.parametrize("option, message", [
    (["--port", "70000"], "--port must lie in 1..65535"),
    (["--max-upload-mb", "inf"], "--max-upload-mb: must be a finite number"),
    (["--max-upload-mb", "0.0000001"], "less than 1 KiB"),
    (["--max-upload-mb", "5000"], "--max-upload-mb must be a number in (0, 1024]"),
])
def test_server_limits_are_checked_at_start_up(run, option, message):
    r = itm_cli("serve", "--run", run, *option)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_search_over_the_served_folder(live, matcher, triples, tiny_data_master):
    query = triples[0][1]
    r = httpx.post(live.url + "/api/search", json={"query": query, "top": 5}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    hits = matcher.search(tiny_data_master / IMAGES, query, top=5)
    assert [x["image"] for x in body["results"]] == [p.name for p, _ in hits]
    np.testing.assert_allclose([x["p_match"] for x in body["results"]], [p for _, p in hits], atol=1e-5)
    first = body["results"][0]
    img = httpx.get(live.url + first["url"])
    assert img.status_code == 200 and img.content == (tiny_data_master / IMAGES / first["image"]).read_bytes()

    assert httpx.post(live.url + "/api/search", json={"query": ""}).status_code == 422
    assert httpx.post(live.url + "/api/search", json={"query": "   "}).status_code == 400
    assert httpx.get(live.url + "/api/images/100000").status_code == 404
    for attempt in ("/api/images/..%2F..%2Fetc%2Fpasswd", "/api/images/-1", "/api/images/%2Fetc%2Fpasswd"):
        r = httpx.get(live.url + attempt)
        assert r.status_code in (404, 422) and b"root:" not in r.content, attempt


def test_binds_to_loopback_only(live):
    """The default --host is 127.0.0.1: the port is closed on the machine's other addresses."""
    import socket

    addresses = set()
    try:
        addresses |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except socket.gaierror:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP: sends nothing, only picks the outgoing interface
            addresses.add(s.getsockname()[0])
        except OSError:
            pass
    others = sorted(a for a in addresses if not a.startswith("127."))
    if not others:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    for address in others:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{address}:{live.port}/healthz", timeout=5)


@pytest.mark.slow
def test_search_over_a_contrastive_run_takes_the_embedding_shortlist(contrastive_run, tiny_data_master, tmp_path,
                                                                     monkeypatch):
    """/api/search on a run trained contrastively (the session's ``contrastive_run``): the folder's VectorIndex
    (kept beside the server's feature cache) shortlists by the embedding and the head re-ranks: the results of
    ``Matcher.search``, whose order differs from the head's over every image."""
    from itm import Matcher

    out = contrastive_run
    matcher = Matcher.load(out)
    assert matcher.contrastive
    monkeypatch.setenv("ITM_CACHE_DIR", str(tmp_path / "here"))
    images = tiny_data_master / IMAGES
    query = (tiny_data_master / "flickr8k.DevImages.txt").read_text().splitlines()[0].split("\t")[1]
    cache = tmp_path / "served"
    cache.mkdir()
    live = Server(out, images, cache)
    try:
        for top in (5, 30):
            got = httpx.post(live.url + "/api/search", json={"query": query, "top": top}, timeout=60)
            assert got.status_code == 200, got.text
            hits = matcher.search(images, query, top=top)
            assert [x["image"] for x in got.json()["results"]] == [p.name for p, _ in hits]
            np.testing.assert_allclose([x["p_match"] for x in got.json()["results"]], [p for _, p in hits], atol=1e-5)
    finally:
        live.stop()
    assert list((cache / "search").glob("*.index.npz")), "the server kept no vector index beside its feature cache"
    # two stages: the embedding's 5 nearest images (the index's ranks), ordered by the head's p(match)
    from itm.evaluation.retrieval import embedding_vectors

    index = matcher.index_folder(images)
    assert len(index.paths) > 10
    ids, _ = index.vectors.search(embedding_vectors(matcher.encode_text([query])), 5)
    nearest = {index.paths[index.rows[i]].name for i in ids[0]}
    hits = matcher.search(images, query, top=5, rerank=5)
    assert {p.name for p, _ in hits} == nearest
    assert [p for _, p in hits] == sorted((p for _, p in hits), reverse=True)
