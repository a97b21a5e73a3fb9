"""The README's main command on the bundled demo: best-cpu at the demo recipe's image size, unless an option
or a recorded config says otherwise (issue 31)."""
from itm.cli.commands import train_config
from itm.cli.parser import train_parser


def _config(*argv):
    return train_config(train_parser().parse_args([str(a) for a in argv]))


def test_best_cpu_on_the_demo_takes_the_demo_recipe_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("ITM_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no flickr8k.dataset-cmp9137-item1 here: the demo is what a run would use
    assert _config("--preset", "best-cpu").image_size == 64
    assert _config("--preset", "best-cpu", "--image-size", 96).image_size == 96
    assert _config().image_size == 224  # the faithful preset is never changed
    real = tmp_path / "flickr"
    real.mkdir()
    assert _config("--preset", "best-cpu", "--data-dir", real).image_size == 128
    monkeypatch.setenv("ITM_DATA_DIR", str(real))
    assert _config("--preset", "best-cpu").image_size == 128
