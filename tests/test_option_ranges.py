"""Every training option has a sane range, checked before anything is built, from the command line and from
``--config`` alike (issue 30): one line naming the option and its range, never a hang or a traceback."""
import json

import pytest

from conftest import itm_cli

# (option, value as a config.json holds it, what the one line says)
OUT_OF_RANGE = [
    ("num_projection_layers", 100000, "--num-projection-layers: must lie in [1, 64], got 100000"),
    ("image_size", 100000, "--image-size: must lie in [1, 1024], got 100000"),
    ("projection_dim", 1e8, "--projection-dim: must lie in [1, 8192], got 1e+08"),
    ("learning_rate", 1e308, "--learning-rate: must lie in (0, 1e+30], got 1e+308"),
    ("batch_size", 4.7, "--batch-size: must be a whole number, got 4.7"),
    ("data_dir", 12345, "--data-dir: must be a text (a path or a name), got 12345"),
    ("epochs", 0, "--epochs: must be at least 1, got 0"),
    ("epochs", 10**9, "--epochs: must lie in [1, 100000], got 1e+09"),
    ("temperature", 1e-300, "--temperature: must be at least 0.0001, got 1e-300"),
    ("head_negatives", -1, "--head-negatives: must be at least 0, got -1"),
    ("image_weights", True, "--image-weights: must be a text"),
]


@pytest.mark.parametrize("name, value, message", OUT_OF_RANGE, ids=[f"{n}={v}" for n, v, _ in OUT_OF_RANGE])
def test_an_option_out_of_range_in_a_config_file_is_one_line(name, value, message, tiny_data, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"preset": "faithful", name: value}))
    out = tmp_path / "run"
    r = itm_cli("train", "--config", config, "--data-dir", tiny_data, "--output-dir", out)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {config}: {message}"), r.stderr
    assert "BUILDING" not in r.stdout and not out.exists()  # refused before anything was built or written


@pytest.mark.parametrize("flag, value, message", [
    ("--num-projection-layers", "100000", "must lie in [1, 64], got 100000"),
    ("--image-size", "100000", "must lie in [1, 1024], got 100000"),
    ("--projection-dim", "100000000", "must lie in [1, 8192], got 1e+08"),
    ("--learning-rate", "1e308", "must lie in (0, 1e+30], got 1e+308"),
    ("--batch-size", "4.7", "'4.7' is not an integer"),
])
def test_an_option_out_of_range_on_the_command_line_is_refused(flag, value, message, tiny_data, tmp_path):
    out = tmp_path / "run"
    r = itm_cli("train", flag, value, "--data-dir", tiny_data, "--output-dir", out)
    assert r.returncode == 2 and f"argument {flag}: {message}" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


def test_the_ends_of_each_range_are_taken():
    """The ranges refuse only what cannot be meant: their ends are valid options (and 4.0 is the integer 4)."""
    from itm.options import MAX_IMAGE_SIZE, MAX_PROJECTION_DIM, MAX_PROJECTION_LAYERS, resolve_config

    config = resolve_config(image_size=MAX_IMAGE_SIZE, projection_dim=MAX_PROJECTION_DIM,
                            num_projection_layers=MAX_PROJECTION_LAYERS, batch_size=4.0, epochs="3",
                            learning_rate="1e-3", data_dir="12345")
    assert (config.image_size, config.projection_dim, config.num_projection_layers) == \
        (MAX_IMAGE_SIZE, MAX_PROJECTION_DIM, MAX_PROJECTION_LAYERS)
    assert config.batch_size == 4 and isinstance(config.batch_size, int) and config.epochs == 3
    assert config.data_dir == "12345"  # a folder named 12345, given as text, is a path like any other
