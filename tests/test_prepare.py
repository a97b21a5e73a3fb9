"""`itm prepare`: small raw datasets in every public form (real JPEGs, messy lines) become valid data folders."""
import json
import random
import re
from pathlib import Path

import pytest

pytest.importorskip("PIL", reason="itm prepare resizes photos with Pillow")
from PIL import Image  # noqa: E402

from conftest import NO_COURSE_DATA, SHARED, itm_cli  # noqa: E402
from itm.data.folder import IMAGES_SUBDIR, SPLIT_FILES, Problems, parse_split_file  # noqa: E402
from itm.errors import DataError  # noqa: E402
from itm.data.prepare import prepare, read_captions  # noqa: E402

N_IMAGES = 12
SHARED_CAPTION = "A dog runs on the grass ."  # belongs to two images: never a no-match for either


def _photo(path: Path, i: int, size=(60, 40)) -> None:
    rng = random.Random(i)
    im = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    im.putpixel((i % size[0], 0), (255, 255, 255))
    im.save(path, quality=90)


def raw_captions(n=N_IMAGES):
    """image -> its captions, five each; images 0 and 1 share one caption."""
    caps = {f"{1000 + i}_abc.jpg": [f"photo {i} caption {k} ." for k in range(5)] for i in range(n)}
    caps["1000_abc.jpg"][4] = caps["1001_abc.jpg"][4] = SHARED_CAPTION
    return caps


def make_images(folder: Path, names, size=(60, 40)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sorted(names)):
        _photo(folder / name, i, size)
    return folder


def write_token(path: Path, caps) -> Path:
    """Flickr8k.token.txt with the real file's quirks: a space for a tab, an image named X.jpg.1, junk."""
    lines = []
    for j, (image, captions) in enumerate(caps.items()):
        name = image + ".1" if j == 2 else image
        for k, c in enumerate(captions):
            sep = " " if (j, k) == (0, 0) else "\t"
            lines.append(f"{name}#{k}{sep}{c}")
    lines[7:7] = ["", "this line is garbage", "9999_missing.jpg#0\tan image that is not in the folder"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_out(out: Path):
    splits = {}
    for name, file in SPLIT_FILES.items():
        problems = Problems()
        splits[name] = parse_split_file(out / file, problems)
        assert not problems, problems.report(out)
    return splits


def check_invariants(out: Path, caps, negatives: int, size: int = 224):
    splits = read_out(out)
    owner = {}
    for name, triples in splits.items():
        images = {t.image for t in triples}
        assert len(images) >= 2, name
        for image in images:
            assert owner.setdefault(image, name) == name, f"{image} in {owner[image]} and {name}"
            mine = [t for t in triples if t.image == image]
            assert [t.caption for t in mine if t.match] == caps[image]
            wrong = [t.caption for t in mine if not t.match]
            assert len(wrong) == negatives and len(set(wrong)) == negatives
            assert not set(wrong) & set(caps[image]), image
            with Image.open(out / IMAGES_SUBDIR / image) as im:
                assert (im.format, im.size, im.mode) == ("JPEG", (size, size), "RGB")
    return splits


def tree_bytes(root: Path):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def flickr8k(tmp_path):
    caps = raw_captions()
    images = make_images(tmp_path / "Flicker8k_Dataset", caps)
    return write_token(tmp_path / "Flickr8k.token.txt", caps), images, caps


def test_flickr8k_token_file_messy_lines(flickr8k, tmp_path, capsys):
    token, images, caps = flickr8k
    prepare("flickr8k", token, images, tmp_path / "out", negatives=3, embed=False)
    splits = check_invariants(tmp_path / "out", caps, negatives=3)
    assert sum(len({t.image for t in s}) for s in splits.values()) == N_IMAGES
    assert sorted(len({t.image for t in s}) for s in splits.values()) == [2, 2, 8]
    captured = capsys.readouterr()  # the itm logger's notes: stdout in-process, stderr from `itm prepare`
    err = captured.out + captured.err
    assert "space instead of a tab after image#N (read anyway): 1" in err
    assert "1002_abc.jpg.1 -> 1002_abc.jpg" in err
    assert "absent from" in err and "9999_missing.jpg" in err
    assert "line not of the form image#N<TAB>caption (skipped): 1" in err


def test_same_seed_same_bytes_other_seed_other_split(flickr8k, tmp_path):
    token, images, _ = flickr8k
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        prepare("flickr8k", token, images, tmp_path / name, seed=seed, embed=False)
    a, b, c = (tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a[SPLIT_FILES["train"]] != c[SPLIT_FILES["train"]]


def test_resizes_to_the_requested_size(flickr8k, tmp_path):
    token, images, caps = flickr8k
    prepare("flickr8k", token, images, tmp_path / "out", image_size=32, negatives=2, embed=False)
    check_invariants(tmp_path / "out", caps, negatives=2, size=32)


def test_right_sized_jpegs_are_copied_unchanged(tmp_path):
    caps = raw_captions(6)
    images = make_images(tmp_path / "img", caps, size=(224, 224))
    prepare("flickr8k", write_token(tmp_path / "t.txt", caps), images, tmp_path / "out", embed=False)
    for name in caps:
        assert (tmp_path / "out" / IMAGES_SUBDIR / name).read_bytes() == (images / name).read_bytes()


def test_kaggle_captions_csv(tmp_path):
    caps = raw_captions()
    caps["1003_abc.jpg"][0] = "A man, a plan , a canal"
    lines = ["image,caption"]
    for image, captions in caps.items():
        lines += [f'{image},"{c}"' if "," in c else f"{image},{c}" for c in captions]
    lines += ["1004_abc.jpg,an unquoted, comma", "lonely-field"]
    caps["1004_abc.jpg"].append("an unquoted, comma")
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare("flickr8k", path, make_images(tmp_path / "Images", caps), tmp_path / "out", negatives=4, embed=False)
    check_invariants(tmp_path / "out", caps, negatives=4)


def test_flickr30k_pipe_csv_and_token(tmp_path):
    caps = raw_captions()
    lines = ["image_name| comment_number| comment"]
    for image, captions in caps.items():
        lines += [f"{image}| {k}| {c}" for k, c in enumerate(captions)]
    lines[3] = lines[3].replace("| 2|", "| 2")  # the real results.csv's missing '|'
    path = tmp_path / "results.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    images = make_images(tmp_path / "flickr30k_images", caps)
    prepare("flickr30k", path, images, tmp_path / "out", embed=False)
    check_invariants(tmp_path / "out", caps, negatives=5)
    token = tmp_path / "results_20130124.token"
    token.write_text("".join(f"{i}#{k}\t{c}\n" for i, cs in caps.items() for k, c in enumerate(cs)), encoding="utf-8")
    prepare("flickr30k", token, images, tmp_path / "out2", embed=False)
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "out2")


def test_coco_json(tmp_path):
    caps = raw_captions()
    data = {"images": [{"id": 10 + i, "file_name": name} for i, name in enumerate(caps)] + [{"id": 99}],
            "annotations": [{"image_id": 10 + i, "id": 100 * i + k, "caption": c + "\n"}
                            for i, cs in enumerate(caps.values()) for k, c in enumerate(cs)]
            + [{"image_id": 12345, "caption": "orphan"}]}
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    prepare("coco", path, make_images(tmp_path / "val2017", caps), tmp_path / "out", negatives=2, embed=False)
    check_invariants(tmp_path / "out", caps, negatives=2)


def test_official_split_lists(flickr8k, tmp_path):
    token, images, caps = flickr8k
    names = sorted(caps)
    lists = []
    for split, chosen in (("train", names[:6]), ("dev", names[6:8]), ("test", names[8:10] + ["not_there.jpg"])):
        lists.append(tmp_path / f"Flickr_8k.{split}Images.txt")
        lists[-1].write_text("\n".join(chosen) + "\n")
    prepare("flickr8k", token, images, tmp_path / "out", splits=",".join(map(str, lists)), embed=False)
    splits = check_invariants(tmp_path / "out", caps, negatives=5)
    assert sorted({t.image for t in splits["train"]}) == names[:6]
    assert sorted({t.image for t in splits["test"]}) == names[8:10]


def test_duplicate_caption_lines_and_formats_are_read(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a.jpg#0\tx\na.jpg#1\tx\nb.jpg#0  y  \n", encoding="utf-8")
    problems = Problems()
    assert read_captions("flickr8k", path, problems) == {"a.jpg": ["x"], "b.jpg": ["y"]}
    assert problems.counts["caption repeated for the same image (kept once)"] == 1


def test_too_few_images_is_a_clear_error(tmp_path):
    caps = raw_captions(5)
    with pytest.raises(DataError, match="at least 6"):
        prepare("flickr8k", write_token(tmp_path / "t.txt", caps), make_images(tmp_path / "i", caps),
                tmp_path / "out", embed=False)


def _cli_error(args):
    result = itm_cli("prepare", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_cli_errors(flickr8k, tmp_path):
    token, images, caps = flickr8k
    out = str(tmp_path / "out")
    assert "does not exist" in _cli_error(["flickr8k", "--captions", str(tmp_path / "nope.txt"),
                                           "--images", str(images), "--out", out, "--no-embed"])
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _cli_error(["flickr8k", "--captions", str(token), "--images", str(empty), "--out", out, "--no-embed"])
    assert "nothing usable" in err and "absent from" in err
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("1000_abc.jpg\n")
    b.write_text("1000_abc.jpg\n")
    err = _cli_error(["flickr8k", "--captions", str(token), "--images", str(images), "--out", out, "--no-embed",
                      "--splits", f"{a},{b},{b}"])
    assert "listed in both" in err


def test_cli_without_sentence_transformers_says_what_to_install(flickr8k, tmp_path):
    try:
        import sentence_transformers  # noqa: F401
        pytest.skip("sentence-transformers is installed here")
    except ImportError:
        pass
    token, images, _ = flickr8k
    err = _cli_error(["flickr8k", "--captions", str(token), "--images", str(images), "--out", str(tmp_path / "o")])
    assert "pip install '.[embed]'" in err and "--no-embed" in err
    assert not (tmp_path / "o").exists()  # failed before doing any work


def test_cli_no_embed_run(flickr8k, tmp_path):
    token, images, caps = flickr8k
    result = itm_cli("prepare", "flickr8k", "--captions", token, "--images", images, "--out", tmp_path / "out",
                     "--no-embed", "--negatives", "2")
    assert result.returncode == 0, result.stderr
    assert "itm embed --data-dir" in result.stdout
    check_invariants(tmp_path / "out", caps, negatives=2)


@pytest.mark.skipif(not SHARED.is_dir(), reason=NO_COURSE_DATA)
def test_real_flickr8k_token_file(tmp_path):
    """A few hundred real images from the shared raw caption file: the output passes the loader's checks."""
    from itm.data.image_files import image_problem as check_image

    available = sorted(p.name for p in (SHARED / "flickr8k-resised").iterdir())[:300]
    wanted = set(available)
    token = tmp_path / "Flickr8k.token.txt"
    with open(SHARED / "Flickr8k.token.txt", encoding="utf-8") as f:
        keep = [line for line in f if line.split("#")[0] in wanted or line.startswith("2258277193")]
    token.write_text("".join(keep), encoding="utf-8")
    images = tmp_path / "photos"
    images.mkdir()
    for name in available:
        (images / name).symlink_to(SHARED / "flickr8k-resised" / name)
    out = tmp_path / "out"
    prepare("flickr8k", token, images, out, embed=False)
    problems = Problems()
    splits = {name: parse_split_file(out / f, problems) for name, f in SPLIT_FILES.items()}
    assert not problems
    used = {t.image for s in splits.values() for t in s}
    assert used == wanted
    assert all(check_image(out / IMAGES_SUBDIR / name) is None for name in used)
    expected = {(head.split("#")[0], caption.strip()) for head, caption in
                (re.split(r"\t| ", line.rstrip("\n"), maxsplit=1) for line in keep) if head.split("#")[0] in wanted}
    assert {(t.image, t.caption) for s in splits.values() for t in s if t.match} == expected
    assert len({t.image for t in splits["dev"]}) == round(300 / 8)


def test_no_match_is_never_a_caption_of_the_image_itself():
    from itm.data.prepare import draw_negatives

    caps = {"a.jpg": ["x", "a1"], "b.jpg": ["x", "b1"], "c.jpg": ["c1", "c2"]}
    for seed in range(30):
        problems = Problems()
        got = draw_negatives(sorted(caps), caps, 3, random.Random(seed), problems)
        assert sorted(got["a.jpg"]) == ["b1", "c1", "c2"] and sorted(got["b.jpg"]) == ["a1", "c1", "c2"]
        assert sorted(got["c.jpg"]) in (["a1", "b1", "x"],) and not problems
    problems = Problems()
    assert sorted(draw_negatives(sorted(caps), caps, 4, random.Random(0), problems)["a.jpg"]) == ["b1", "c1", "c2"]
    assert problems.counts["image with fewer than 4 other captions to use as no-match"] == 3


def test_prepare_with_shards_writes_them_after_the_folder(flickr8k, tmp_path, monkeypatch):
    """--shards N: the folder, its embeddings (a stand-in encoder here: no torch), then its shards."""
    import numpy as np

    import itm.data.embed
    import itm.data.prepare
    from itm.data.shards import read_index

    def fake_embed(data_dir, model=None, batch_size=None):
        captions = itm.data.embed.split_captions(data_dir)
        vectors = np.random.default_rng(0).normal(size=(len(captions), 384)).astype(np.float32)
        itm.data.embed.write_embeddings(Path(data_dir) / "flickr8k.cmp9137.sentence_transformers.npz",
                                   dict(zip(captions, vectors)))

    monkeypatch.setattr(itm.data.prepare, "require_sentence_transformers", lambda: None)
    monkeypatch.setattr(itm.data.prepare, "embed_data_dir", fake_embed)
    token, images, caps = flickr8k
    out = prepare("flickr8k", token, images, tmp_path / "out", negatives=2, shards=2)
    index = read_index(out / "shards", splits=("train", "dev", "test"), data_dir=out)
    splits = read_out(out)
    assert index["splits"]["train"]["shards"] == 2
    assert {s: index["splits"][s]["triples"] for s in splits} == {s: len(t) for s, t in splits.items()}


def test_cli_shards_without_embeddings_is_a_clear_error(flickr8k, tmp_path):
    token, images, _ = flickr8k
    err = _cli_error(["flickr8k", "--captions", str(token), "--images", str(images), "--out", str(tmp_path / "o"),
                      "--no-embed", "--shards", "4"])
    assert "--shards holds the embeddings too" in err and "itm shard --data-dir" in err
    assert not (tmp_path / "o").exists()
