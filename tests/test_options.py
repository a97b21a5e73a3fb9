"""Options: one declaration each; presets and --fast applied before the checks; every check, in-process."""
import pytest

from itm.errors import ConfigError
from itm.options import (FAST_BATCH_SCALE, FAST_LR_SCALE, OPTIONS, PRESETS, TrainConfig, _checks, parse_value,
                         problems, resolve_config)

# One combination per check in itm.options._checks (in its order), and what its message says.
CHECKS = [
    (dict(image_size=7), "--image-size 7 is too small for the faithful-cnn image tower"),
    (dict(negatives="redraw"), "--negatives redraw needs --pipeline cached"),
    (dict(strategy="mirrored", objective="contrastive"), "--strategy mirrored trains on the split's triples"),
    (dict(strategy="multiworker", pipeline="shards"), "--strategy multiworker shards the split's triples itself"),
    (dict(strategy="multiworker", pipeline="cached", negatives="redraw"), "use it with --negatives fixed"),
    (dict(text_tower="minilm", pipeline="cached"), "--text-tower minilm reads raw captions"),
    (dict(text_learning_rate=1e-6), "--text-learning-rate is for fine-tuning the minilm text tower"),
    (dict(text_trainable=True), "--text-trainable fine-tunes the minilm text tower"),
    (dict(xla=True, pipeline="grouped"), "--xla compiles Keras' step for fixed shapes"),
    (dict(pipeline="grouped", objective="contrastive"), "--pipeline grouped is for the kl objective"),
    (dict(pipeline="shards", objective="contrastive"), "--pipeline shards is for the kl objective"),
    (dict(pipeline="shards", limit=10), "--limit takes the first N triples"),
    (dict(shards_dir="x"), "--shards-dir is for --pipeline shards"),
    (dict(image_tower="resnet50", image_weights="torchvision"), "--image-weights torchvision are MobileNetV2's"),
    (dict(image_tower="mobilenetv2", image_weights="imagenet-lite"), "--image-weights imagenet-lite are EfficientNet-Lite's"),
    (dict(image_tower="efficientnet-lite2+mobilenetv2", image_weights="torchvision"),
     "--image-weights torchvision: the efficientnet-lite2+mobilenetv2 image tower takes imagenet-lite"),
    (dict(image_tower="efficientnet-lite2+mobilenetv2", backbone_pooling="avgmax"),
     "--backbone-pooling avgmax: the efficientnet-lite2+mobilenetv2 image tower average-pools each network"),
    (dict(image_tower="efficientnet-lite2+mobilenetv2", freeze_backbone=True, unfreeze_from="block_14_expand"),
     "--unfreeze-from cuts one network: the efficientnet-lite2+mobilenetv2 image tower has two"),
    (dict(image_tower="efficientnet-lite2+mobilenetv2", fusion="attention"),
     "--fusion attention attends over one network's regions: the efficientnet-lite2+mobilenetv2 image tower"),
    (dict(image_tower="efficientnet-lite2", image_weights="imagenet"),
     "efficientnet-lite2 has no Keras download: its ImageNet weights are --image-weights imagenet-lite"),
    (dict(image_tower="mobilenetv2", freeze_backbone=True, cache_features=True, objective="contrastive"),
     "--cache-features caches a pretrained backbone's features"),
    (dict(image_tower="mobilenetv2", image_weights="torchvision", cache_features=True, objective="contrastive"),
     "--cache-features needs a frozen backbone"),
    (dict(unfreeze_from="block_14_expand"), "--unfreeze-from trains the top of a frozen backbone"),
    (dict(image_tower="mobilenetv2", freeze_backbone=True, cache_features=True, fusion="attention",
          objective="contrastive"), "the attention head cannot attend over"),
    (dict(image_tower="mobilenetv2", freeze_backbone=True, cache_features=True),
     "--cache-features trains on image-grouped batches"),
    (dict(image_tower="mobilenetv2", freeze_backbone=True, cache_features=True, pipeline="grouped",
          strategy="mirrored"), "--cache-features trains on one device"),
]


# The combinations that the parts' structure rules out (itm.options.Backbone, Contrastive: a part that is absent
# has no options to set), refused all the same, with the messages the checks gave before the parts.
STRUCTURE = [
    (dict(extra_captions="auto"), "--extra-captions feeds the contrastive objective's positives"),
    (dict(soft_targets=0.1), "--soft-targets shapes the contrastive objective's InfoNCE targets"),
    (dict(hard_negatives=True), "--hard-negatives draws from the contrastive objective's batch"),
    (dict(head_negatives=2), "--head-negatives samples the contrastive objective's batch"),
    (dict(image_weights="imagenet"), "--image-weights is for the pretrained backbones, not faithful-cnn"),
    (dict(freeze_backbone=True), "--freeze-backbone is for the pretrained backbones"),
    (dict(image_tower="cnn-bn", backbone_pooling="avgmax"), "--backbone-pooling is for the pretrained backbones, "
                                                            "not cnn-bn"),
]


def test_every_check_has_a_case():
    assert len(CHECKS) == len(list(_checks(TrainConfig()))) == 26


@pytest.mark.parametrize("options, message", CHECKS + STRUCTURE, ids=[m[:40] for _, m in CHECKS + STRUCTURE])
def test_each_check_refuses_its_combination(options, message):
    with pytest.raises(ConfigError) as e:
        resolve_config(**options)
    assert message in str(e.value)


def test_defaults_and_presets_pass_every_check():
    for preset in PRESETS:
        assert problems(resolve_config(preset)) == []
    faithful = resolve_config()
    assert (faithful.epochs, faithful.batch_size, faithful.learning_rate, faithful.warmup_fraction) == (10, 16, 3e-5, 0.2)


def test_every_preset_value_is_a_valid_option_value():
    for preset, values in PRESETS.items():
        for name, value in values.items():
            assert parse_value(name, value) == value, (preset, name)


def test_several_problems_are_reported_together():
    with pytest.raises(ConfigError) as e:
        resolve_config(negatives="redraw", soft_targets=0.1)
    assert "do not go together" in str(e.value) and "--negatives redraw" in str(e.value) and "--soft-targets" in str(e.value)


@pytest.mark.parametrize("name, value, message", [
    ("learning_rate", "inf", "finite"), ("learning_rate", "nan", "finite"), ("learning_rate", 0, "greater than 0"),
    ("epochs", 0, "at least 1"), ("dropout", 1.0, "[0, 1)"), ("seed", -1, "[0, 2**32)"),
    ("image_tower", "vgg", "must be one of"), ("augment", "yes", "on or off"),
])
def test_bad_values_are_refused(name, value, message):
    with pytest.raises(ConfigError) as e:
        resolve_config(**{name: value})
    assert message in str(e.value)


def test_fast_is_applied_before_the_checks():
    # --pipeline cached --negatives redraw --fast: the explicit pipeline stands, so redraw is kept
    config = resolve_config(pipeline="cached", negatives="redraw", fast=True)
    assert (config.pipeline, config.negatives, config.precision) == ("cached", "redraw", "auto")
    # --text-tower minilm --fast: grouping needs embeddings; refused before training, with the reason
    with pytest.raises(ConfigError, match="drop --fast"):
        resolve_config(text_tower="minilm", fast=True)


def test_fast_scales_the_batch_and_rate_unless_they_are_given():
    fast = resolve_config(fast=True)
    assert fast.pipeline == "grouped" and fast.precision == "auto"
    assert (fast.batch_size, fast.learning_rate) == (16 * FAST_BATCH_SCALE, 3e-5 * FAST_LR_SCALE)
    given = resolve_config(fast=True, batch_size=32, precision="float32")
    assert (given.batch_size, given.learning_rate, given.precision) == (32, 3e-5, "float32")
    assert resolve_config("best-cpu", fast=True).pipeline == "cached"
    assert resolve_config(pipeline="shards", fast=True).pipeline == "shards"


def test_the_command_line_is_derived_from_the_options():
    from itm.cli.parser import train_parser

    parser = train_parser()
    flags = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "verbosity")}
    assert set(flags) == set(OPTIONS)
    for name, action in flags.items():
        assert action.default is None, name  # unset means "as the preset says"
        if OPTIONS[name].metadata["choices"]:
            assert tuple(action.choices) == OPTIONS[name].metadata["choices"]
    args = parser.parse_args(["--preset", "best-cpu", "--no-augment", "--temperature", "0.1"])
    config = resolve_config(args.preset, **{k: getattr(args, k) for k in OPTIONS if k != "preset"})
    assert (config.augment, config.temperature, config.image_tower) == (False, 0.1, "cnn-bn")
    with pytest.raises(SystemExit):
        parser.parse_args(["--learning-rate", "inf"])


@pytest.mark.parametrize("preset, extra", [("faithful", {}), ("best-cpu", {}), ("pretrained", {}), ("retrieval", {}),
                                           ("faithful", {"fast": True, "limit": 40})])
def test_a_run_is_rerun_from_its_config_json(preset, extra, tmp_path):
    import json

    from itm.cli.commands import train_config
    from itm.cli.parser import train_parser

    from itm.options import finish_config

    # What config.json records: the config finished as a run finishes it (paths, seed, precision).
    recorded, _ = finish_config(resolve_config(preset, seed=5, **extra), "/data/x", tmp_path / "old")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(recorded.to_dict()))
    again = train_config(train_parser().parse_args(["--config", str(tmp_path / "old" / "config.json")]))
    assert again.to_dict() == {**recorded.to_dict(), "output_dir": None}  # a new run folder, nothing else new
    # A run folder names its config.json too; options on the command line override the file's.
    changed = train_config(train_parser().parse_args(["--config", str(tmp_path / "old"), "--epochs", "3",
                                                      "--no-augment"]))
    assert changed.to_dict() == {**recorded.to_dict(), "output_dir": None, "epochs": 3, "augment": False}


@pytest.mark.parametrize("content, message", [
    ({"batch_sise": 8}, "config.json: unknown option(s) --batch-sise ('itm train --help' lists them)"),
    ({"batch_size": 0}, "config.json: --batch-size: must be at least 1, got 0"),
    ({"fusion": "sum"}, "config.json: --fusion must be one of concat, "),
    ({"augment": "yes"}, "config.json: --augment is on or off, not 'yes'"),
    ([1, 2], "must hold a JSON object, not a list"),
])
def test_a_wrong_key_or_value_in_a_config_file_is_a_one_line_error(content, message, tmp_path, capsys):
    import json

    from itm.cli import main

    (tmp_path / "config.json").write_text(json.dumps(content))
    assert main(["train", "--config", str(tmp_path / "config.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("preset", list(PRESETS))
def test_help_shows_what_each_preset_sets(preset, capsys):
    from itm.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--preset", preset, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    config = resolve_config(preset)
    for name in ("epochs", "batch_size", "learning_rate", "image_tower"):
        label = preset if name in PRESETS[preset] else "default"
        assert f"({label}: {getattr(config, name)})" in text, name
    assert "presets (an option given explicitly overrides its preset's value):" in text
    assert "best-cpu: --image-tower cnn-bn, --image-size 128, --augment on" in text  # the table, for any preset


def test_version_is_the_package_version(capsys):
    import itm
    from itm.cli.parser import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"itm {itm.__version__}"
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(itm.__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert project["dynamic"] == ["version"] and project["license"] == "Apache-2.0"


@pytest.mark.fresh_process
def test_options_and_the_command_line_are_importable_without_tensorflow():
    """Fresh process: what a bare interpreter imports, not this one (which has TensorFlow loaded)."""
    import subprocess
    import sys

    code = "import itm.options, itm.cli, sys; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_bench_settings_are_train_options():
    from itm.training.bench import SETTINGS

    for options in SETTINGS.values():
        options = dict(options)
        resolve_config(options.pop("preset", "faithful"), **options)  # each is a valid `itm train` invocation
