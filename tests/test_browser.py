"""The page in a real headless Chromium: upload a JPEG, type captions, read the bars."""
import os
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import NO_CHROMIUM, NO_SERVE_EXTRA

from serving_helpers import server, trained_run

pytest.importorskip("fastapi", reason=NO_SERVE_EXTRA)
pytest.importorskip("playwright", reason="playwright is not installed: pip install '.[test]'")
IMAGES = "flickr8k-resised"
# Debian's chromium (apt-get install chromium); never Playwright's own download.
CHROMIUM = os.environ.get("ITM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not CHROMIUM or not Path(CHROMIUM).exists(),
                                reason=NO_CHROMIUM)


@pytest.fixture(scope="module")
def live(tiny_data_master, tmp_path_factory):
    run = trained_run(tiny_data_master, tmp_path_factory)
    return server(run, tiny_data_master / IMAGES, tmp_path_factory)


@pytest.fixture(scope="module")
def page(live):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page()
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def test_upload_captions_and_read_the_probabilities(page, live, tiny_data_master):
    rows = [line.split("\t") for line in (tiny_data_master / "flickr8k.DevImages.txt").read_text().splitlines()]
    image = tiny_data_master / IMAGES / rows[0][0]
    captions = [c for i, c, _ in rows if i == rows[0][0]]
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live.url + "/")
    page.wait_for_function("document.getElementById('threshold').textContent.includes('threshold')")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#preview")
    page.fill("#captions", "\n".join(captions) + "\n\n")
    page.click("#score")
    page.wait_for_selector("#results[data-done='1']")

    api = httpx.post(live.url + "/api/match", files={"image": (image.name, image.read_bytes(), "image/jpeg")},
                     data={"caption": captions}, timeout=60).json()
    shown = page.eval_on_selector_all("#results .result", """rows => rows.map(r => ({
        caption: r.querySelector('.caption').textContent, p: Number(r.dataset.p),
        text: r.querySelector('.p').textContent, label: r.querySelector('.label').textContent,
        width: r.querySelector('.bar').style.width}))""")
    assert len(shown) == len(captions) == len(api["results"])
    for row, want in zip(shown, api["results"]):
        assert row["caption"] == want["caption"]
        assert row["p"] == want["p_match"]
        assert row["text"] == f"{want['p_match']:.3f}"
        assert row["label"] == ("Match" if want["match"] else "No-Match")
        assert row["width"] == f"{100 * want['p_match']:.1f}%"
    assert not errors


def test_search_box_shows_images(page, live):
    page.goto(live.url + "/")
    page.wait_for_selector("#search-section:not([hidden])")
    page.fill("#query", "a red circle on a white background")
    page.click("#search-button")
    page.wait_for_selector("#search-results figure")
    page.wait_for_function("[...document.querySelectorAll('#search-results img')].every(i => i.complete)")
    widths = page.eval_on_selector_all("#search-results img", "imgs => imgs.map(i => i.naturalWidth)")
    ps = page.eval_on_selector_all("#search-results figure", "fs => fs.map(f => Number(f.dataset.p))")
    assert widths and all(w > 0 for w in widths)  # the images really loaded
    assert ps == sorted(ps, reverse=True)
