"""The demo dataset is honest: only relating caption and image can answer it."""
from collections import Counter, defaultdict

from itm.data.folder import load_data_dir
from itm.data.demo import COLOURS, SHAPES, BACKGROUNDS, all_captions, generate, load_caption_embeddings


def _attrs(caption):
    words = set(caption.split())
    pick = lambda names: next(n for n in names if n in words)  # noqa: E731
    return pick(COLOURS), pick(SHAPES), pick(BACKGROUNDS)


def test_every_caption_has_a_real_embedding():
    emb = load_caption_embeddings()
    assert sorted(emb) == sorted(all_captions()) and len(emb) == 144
    for v in emb.values():
        assert v.shape == (384,) and abs(float((v ** 2).sum()) - 1.0) < 1e-4  # L2-normalised MiniLM output


def test_demo_is_honest(tmp_path):
    data = load_data_dir(generate(tmp_path / "d", sizes={"train": (120, 2, 2)}, seed=5, image_size=32))
    train = data.splits["train"].triples
    per_image = defaultdict(Counter)
    for t in train:
        per_image[t.image][t.match] += 1
    assert all(c[True] == c[False] == 2 for c in per_image.values())
    # Match captions and no-match captions of an image differ in exactly one attribute.
    match_attrs = {t.image: _attrs(t.caption) for t in train if t.match}
    for t in train:
        if not t.match:
            assert sum(a != b for a, b in zip(_attrs(t.caption), match_attrs[t.image])) == 1
    # Captions serve both sides: no caption's label can be read off the caption alone.
    as_match = Counter(t.caption for t in train if t.match)
    as_nomatch = Counter(t.caption for t in train if not t.match)
    both = set(as_match) & set(as_nomatch)
    assert len(both) > 0.5 * len(set(as_match) | set(as_nomatch))


def test_wording_is_no_tell_of_the_label(tmp_path):
    data = load_data_dir(generate(tmp_path / "d", sizes={"train": (60, 2, 2), "dev": (60, 1, 3), "test": (60, 1, 3)},
                                  seed=2, image_size=32))
    for split in data.splits.values():
        for template in ("on a", "background with"):
            labels = {t.match for t in split.triples if template in t.caption}
            assert labels == {True, False}, (split.name, template)


def test_same_seed_same_bytes(tmp_path):
    a = generate(tmp_path / "a", sizes={"train": (4, 2, 2), "dev": (2, 1, 3), "test": (2, 1, 3)}, seed=9, image_size=32)
    b = generate(tmp_path / "b", sizes={"train": (4, 2, 2), "dev": (2, 1, 3), "test": (2, 1, 3)}, seed=9, image_size=32)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
