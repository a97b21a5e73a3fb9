"""The synthetic data folders of scripts/bench_scale.py: valid for the loader, the asked counts, deterministic."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from itm.data.folder import EMBEDDINGS_NPZ, IMAGES_SUBDIR, SPLIT_FILES, load_data_dir
from itm.data.synthetic import build, images_needed


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build(tmp_path_factory.mktemp("syn") / "data", 53, n_dev=21, n_test=20, pool=12, image_size=32, seed=1)


def test_the_folder_loads_with_the_asked_counts(small):
    data = load_data_dir(small)  # every line, image and embedding checked
    assert {k: len(s.triples) for k, s in data.splits.items()} == {"train": 53, "dev": 21, "test": 20}
    train = data.splits["train"]
    assert len({t.image for t in train.triples}) == images_needed(53) == 11
    per_image = Counter(t.image for t in train.triples)
    assert sorted(per_image.values())[1:] == [5] * 10  # 5 triples an image; the last cut to fit 53
    assert train.n_match == 2 * 10 + min(2, 53 - 50)
    assert data.splits["test"].n_match == 5  # dev and test: 1 match in 4, like the real test split
    for split in data.splits.values():  # a no-match caption is never one of the image's own matches
        own = {(t.image, t.caption) for t in split.triples if t.match}
        assert not any((t.image, t.caption) in own for t in split.triples if not t.match)


def test_captions_are_distinct_and_photos_come_from_a_bounded_pool(small):
    data = load_data_dir(small)
    images = small / IMAGES_SUBDIR
    names = {t.image for s in data.splits.values() for t in s.triples}
    assert len({(images / n).stat().st_ino for n in names}) <= 12  # hard links into the pool of 12 photos
    matches = [t.caption for s in data.splits.values() for t in s.triples if t.match]
    assert len(set(matches)) == len(matches)  # every match caption is its own sentence, with its own vector
    vectors = np.stack([data.embeddings[c] for c in matches])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert len({v.tobytes() for v in vectors}) == len(matches)


def test_same_arguments_give_the_same_bytes(small, tmp_path):
    again = build(tmp_path / "again", 53, n_dev=21, n_test=20, pool=12, image_size=32, seed=1)
    for name in [*SPLIT_FILES.values(), EMBEDDINGS_NPZ]:
        assert (again / name).read_bytes() == (small / name).read_bytes(), name
    assert sorted(p.name for p in (again / IMAGES_SUBDIR).iterdir()) == \
        sorted(p.name for p in (small / IMAGES_SUBDIR).iterdir())
    photo = IMAGES_SUBDIR + "/pool_00003.jpg"
    assert (again / photo).read_bytes() == (small / photo).read_bytes()
    other = build(tmp_path / "other", 53, n_dev=21, n_test=20, pool=12, image_size=32, seed=2)
    assert (other / SPLIT_FILES["train"]).read_bytes() != (small / SPLIT_FILES["train"]).read_bytes()


def test_the_figure_is_drawn_from_recorded_lines(tmp_path):
    rows = [{"n": n, "phase": phase, "seconds": n / r, "items": n, "items_per_second": r, "peak_rss_mib": m}
            for n in (10000, 100000) for phase, r, m in (("shard", 500.0, 700.0), ("load", 9000.0, 60.0))]
    lines = tmp_path / "rows.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    figure = tmp_path / "scale.png"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_scale.py"), "--from", str(lines),
                        "--figure", str(figure)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
