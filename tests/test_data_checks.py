"""The data check against what a careless edit of a split file produces: paths out of the images folder,
a pair labelled both ways, repeated lines, bytes that are not UTF-8. Each through `itm train`, which stops
at the check (before TensorFlow is loaded) with one message naming file and line."""
import pytest

from conftest import itm_cli
from itm.data.folder import SPLIT_FILES, load_data_dir

TRAIN, DEV = SPLIT_FILES["train"], SPLIT_FILES["dev"]


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def append(path, text: bytes) -> int:
    """Append raw bytes as one more line; returns its line number."""
    with open(path, "ab") as f:
        f.write(text + b"\n")
    return len(path.read_bytes().splitlines())


def check(tiny_data, tmp_path):
    return itm_cli("train", "--data-dir", tiny_data, "--output-dir", tmp_path / "run")


@pytest.mark.parametrize("name", ["../../x.jpg", "/etc/passwd", "a/../../../x.jpg", "..\\..\\x.jpg", "~/x.jpg"])
def test_an_image_path_leaving_the_images_folder_is_refused(name, tiny_data, tmp_path):
    (tmp_path / "x.jpg").write_bytes((tiny_data / "flickr8k-resised" / lines(tiny_data / TRAIN)[0].split("\t")[0]).read_bytes())
    line = append(tiny_data / TRAIN, f"{name}\ta red circle on a grey background\tmatch".encode())
    r = check(tiny_data, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "image path leaving the flickr8k-resised folder: 1" in r.stderr and f"{TRAIN}:{line}: {name!r}" in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_pair_labelled_both_match_and_no_match_names_both_lines(tiny_data, tmp_path):
    image, caption, label = lines(tiny_data / DEV)[2].split("\t")
    other = "no-match" if label == "match" else "match"
    line = append(tiny_data / TRAIN, f"{image}\t{caption}\t{other}".encode())
    r = check(tiny_data, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "pair labelled both match and no-match: 1" in r.stderr
    assert f"{TRAIN}:{line} ({other}) and {DEV}:3 ({label})" in r.stderr or \
           f"{DEV}:3 ({label}) and {TRAIN}:{line} ({other})" in r.stderr, r.stderr


def test_repeated_lines_are_a_warning_with_counts(tiny_data, capsys):
    train = tiny_data / TRAIN
    first, second = lines(train)[0], lines(train)[5]
    at = [append(train, first.encode()), append(train, first.encode()), append(train, second.encode())]
    data = load_data_dir(tiny_data)  # still loads: the course data itself holds two such lines
    err = capsys.readouterr().err
    assert "warning: 3 line(s) repeat an earlier line exactly" in err, err
    assert f"{TRAIN}:{at[0]} repeats {TRAIN}:1" in err and f"{TRAIN}:{at[2]} repeats {TRAIN}:6" in err
    assert len(data.splits["train"].triples) == len(lines(train))


def test_bytes_that_are_not_utf8_are_an_encoding_problem_with_file_and_line(tiny_data, tmp_path):
    image = lines(tiny_data / TRAIN)[0].split("\t")[0]
    line = append(tiny_data / TRAIN, image.encode() + b"\tA black dog \xe9 runs\tmatch")  # Latin-1, not UTF-8
    r = check(tiny_data, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "line that is not UTF-8 (an encoding problem: save the file as UTF-8): 1" in r.stderr
    assert f"{TRAIN}:{line}: byte b'\\xe9' at column" in r.stderr
    assert "caption missing from the embeddings" not in r.stderr


def _as_npz(tiny_data, compressed=False):
    """The fixture's embeddings as the npz (preferred over the pickle): as `itm embed` writes it, or compressed."""
    import numpy as np

    from itm.data.embed import write_embeddings
    from itm.data.folder import EMBEDDINGS_NPZ, EMBEDDINGS_PKL, load_embeddings_file

    vectors = load_embeddings_file(tiny_data / EMBEDDINGS_PKL)
    if compressed:
        np.savez_compressed(tiny_data / EMBEDDINGS_NPZ, captions=np.array(list(vectors)),
                            embeddings=np.stack(list(vectors.values())))
    else:
        write_embeddings(tiny_data / EMBEDDINGS_NPZ, vectors)
    return vectors, tiny_data / EMBEDDINGS_NPZ


@pytest.mark.parametrize("compressed", [False, True])
def test_the_npz_read_row_by_row_gives_what_the_whole_read_does(tiny_data, compressed):
    import numpy as np

    from itm.data.folder import NpzEmbeddings, load_embeddings_file

    vectors, path = _as_npz(tiny_data, compressed)
    table = load_data_dir(tiny_data).embeddings
    assert isinstance(table, NpzEmbeddings) != compressed  # a compressed archive is read whole, as before
    whole = load_embeddings_file(path)
    assert sorted(table) == sorted(whole) == sorted(vectors) and len(table) == len(vectors)
    for caption, vector in whole.items():
        assert table[caption].dtype == np.float32 and np.array_equal(table[caption], vector)
    table.update({"a new caption": np.ones(384, np.float32)})  # what `itm train` does with extra captions
    assert "a new caption" in table and table["a new caption"].sum() == 384 and len(table) == len(vectors) + 1
    with pytest.raises(KeyError):
        table["never embedded"]


def test_the_npz_read_row_by_row_is_checked_as_before(tiny_data, tmp_path):
    import numpy as np

    from itm.data.embed import write_embeddings

    vectors, path = _as_npz(tiny_data)
    caption, gone = lines(tiny_data / TRAIN)[0].split("\t")[1], lines(tiny_data / DEV)[0].split("\t")[1]
    vectors[caption] = np.full(384, np.nan, np.float32)
    del vectors[gone]
    write_embeddings(path, vectors)
    r = check(tiny_data, tmp_path)
    assert r.returncode != 0 and "embedding with NaN or infinity (in flickr8k.cmp9137.sentence_transformers.npz)" in r.stderr
    assert f"{TRAIN}:1: {caption!r}" in r.stderr and "caption missing from the embeddings: 1\n" in r.stderr
    assert f": {gone!r}" in r.stderr
    path.write_bytes(path.read_bytes()[:-1000])  # truncated: refused, not read short
    r = check(tiny_data, tmp_path)
    assert r.returncode != 0 and "cannot load embeddings file" in r.stderr and "Traceback" not in r.stderr
