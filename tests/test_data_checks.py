"""The data check against what a careless edit of a split file produces: paths out of the images folder,
a pair labelled both ways, repeated lines, bytes that are not UTF-8. Each through `itm train`, which stops
at the check (before TensorFlow is loaded) with one message naming file and line."""
import pytest

from conftest import run_cli
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
    return run_cli(["-m", "itm", "train", "--data-dir", str(tiny_data), "--output-dir", str(tmp_path / "run")])


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
