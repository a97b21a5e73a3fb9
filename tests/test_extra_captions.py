"""--extra-captions: more matching captions for the training images only, from a Flickr8k.token.txt."""
import pytest

from conftest import NO_MINILM_MODEL, NO_TEXT_EXTRA, itm_cli
from itm.data.folder import load_data_dir
from itm.errors import DataError

SIZE = 32


def _token_file(data, path, new_for_train=1):
    """A Flickr8k-style caption file: each image's split captions (as Flickr8k writes them: ' .' at the end)
    plus new ones, for train and dev images; one line with a space instead of a tab, as in the real file."""
    lines, new_train = [], []
    for split in ("train", "dev"):
        by_image = {}
        for t in data.splits[split].triples:
            if t.match:
                by_image.setdefault(t.image, []).append(t.caption)
        for image, captions in sorted(by_image.items()):
            own = [c + " ." for c in captions]
            new = [f"a new {split} caption number {k} for {image}" for k in range(new_for_train)]
            if split == "train":
                new_train += new
            lines += [f"{image}#{n}\t{c}" for n, c in enumerate(own + new)]
    lines[0] = lines[0].replace("\t", " ", 1)
    path.write_text("\n".join(lines) + "\n")
    return new_train


def test_only_new_captions_of_training_images_are_taken(tiny_data, tmp_path):
    from itm.data.extra_captions import extra_positives

    data = load_data_dir(tiny_data)
    new = _token_file(data, tmp_path / "Flickr8k.token.txt", new_for_train=2)
    extra = extra_positives(tmp_path / "Flickr8k.token.txt", data.splits["train"])
    assert sorted(c for cs in extra.values() for c in cs) == sorted(new)
    assert set(extra) == {t.image for t in data.splits["train"].triples if t.match}
    assert not any("dev caption" in c for cs in extra.values() for c in cs)


def test_a_file_with_nothing_new_is_a_clear_error(tiny_data, tmp_path):
    from itm.data.extra_captions import extra_positives, resolve

    data = load_data_dir(tiny_data)
    _token_file(data, tmp_path / "tokens.txt", new_for_train=0)
    with pytest.raises(DataError, match="no new captions"):
        extra_positives(tmp_path / "tokens.txt", data.splits["train"])
    assert resolve("auto", tiny_data) is None  # the fixture has no Flickr8k.token.txt: nothing to add
    with pytest.raises(DataError, match="no such file"):
        resolve(str(tmp_path / "missing.txt"), tiny_data)
    r = itm_cli("train", "--data-dir", tiny_data, "--extra-captions", "auto")
    assert r.returncode == 2 and "--objective contrastive" in r.stderr and "Traceback" not in r.stderr


def test_contrastive_training_embeds_and_uses_them(tiny_data, tmp_path):
    pytest.importorskip("tensorflow_text", reason=NO_TEXT_EXTRA)
    from itm.data.folder import load_embeddings_file
    from itm.models.minilm_files import model_folder

    try:
        model_folder()
    except DataError:
        pytest.skip(NO_MINILM_MODEL)
    data = load_data_dir(tiny_data)
    new = _token_file(data, tiny_data / "Flickr8k.token.txt")
    cache = tmp_path / "cache"
    args = ["train", "--data-dir", tiny_data, "--preset", "best-cpu", "--extra-captions", "auto",
            "--batch-size", "8", "--epochs", "2", "--image-size", SIZE, "--seed", "0"]
    r = itm_cli(*args, "--output-dir", tmp_path / "run", env={"ITM_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Extra captions: {len(new)} more matching captions for {len(new)} training images" in r.stdout
    [cached] = cache.glob("extra-captions-*.npz")
    vectors = load_embeddings_file(cached)
    assert sorted(vectors) == sorted(new) and all(v.shape == (384,) for v in vectors.values())
    assert "Embedding" in r.stdout
