"""The options in four parts (model, data, objective, run): what each holds, the flat view that config.json and
the command line keep, the combinations the structure rules out, and old config.json files loading."""
import json
import re
from pathlib import Path

import pytest

from itm.errors import ConfigError
from itm.options import (GROUP_OF, GROUPS, OPTIONS, PARTS, PRESETS, DataConfig, ModelConfig, ObjectiveConfig,
                         RunConfig, TrainConfig, options_from_file, resolve_config)

FIXTURES = Path(__file__).parent / "fixtures"
OLD_RUNS = ["run-main-f04bf50-faithful", "run-itm-0.2-faithful"]


def test_each_option_is_in_exactly_one_part():
    names = [name for kind in PARTS.values() for name in kind.leaves()]
    assert len(names) == len(set(names)) == len(OPTIONS) == 40
    assert set(names) == set(OPTIONS) and set(GROUP_OF.values()) == set(GROUPS) == set(PARTS)
    # the model part is the architecture: exactly what build_model takes, nothing of data, loss or schedule
    assert set(ModelConfig.leaves()) == {
        "image_size", "image_tower", "image_weights", "freeze_backbone", "unfreeze_from", "backbone_pooling",
        "text_tower", "text_trainable", "fusion", "projection_dim", "num_projection_layers", "dropout", "augment"}
    assert set(DataConfig.leaves()) == {"data_dir", "limit", "shards_dir", "cache_features"}
    assert "pipeline" in ObjectiveConfig.leaves() and "epochs" in RunConfig.leaves()


def test_a_part_that_does_not_apply_is_absent_and_its_options_read_as_defaults():
    faithful = resolve_config()
    assert faithful.model.backbone is None and faithful.objective.contrastive is None
    assert (faithful.image_weights, faithful.freeze_backbone, faithful.temperature, faithful.hard_negatives) == \
        ("none", False, 0.07, False)
    retrieval = resolve_config("retrieval")
    assert retrieval.model.backbone.image_weights == retrieval.image_weights == "imagenet-lite"
    assert (retrieval.image_tower, retrieval.image_size) == ("efficientnet-lite2+mobilenetv2", 260)
    assert retrieval.objective.contrastive.head_negatives == retrieval.head_negatives == 4
    assert retrieval.objective.name == "contrastive" and retrieval.objective.grouped
    with pytest.raises(AttributeError):
        _ = faithful.no_such_option
    # a part cannot be made inconsistent by hand either
    with pytest.raises(ValueError):
        ModelConfig(image_tower="mobilenetv2")
    with pytest.raises(ValueError):
        ObjectiveConfig(name="contrastive")


def test_an_unused_contrastive_setting_of_a_kl_run_is_left_out():
    """--temperature and --contrastive-weight were accepted (unused) with the kl objective before the parts, so
    a kl run's config.json may record any value: it loads as the same run."""
    config = resolve_config(temperature=0.5, contrastive_weight=2.0)
    assert config.objective.contrastive is None and config.temperature == 0.07
    assert resolve_config(objective="contrastive", temperature=0.5).temperature == 0.5


@pytest.mark.parametrize("preset", list(PRESETS))
def test_the_flat_and_the_by_part_forms_round_trip(preset):
    config = resolve_config(preset, seed=3, data_dir="/data/x")
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_json()))) == config
    assert ModelConfig.from_json(json.loads(json.dumps(config.model.to_json()))) == config.model
    assert set(config.to_json()) == set(PARTS)
    assert config.replace(epochs=3).epochs == 3 and config.replace(epochs=3).model == config.model


def test_the_objective_part_knows_whether_its_pipeline_is_grouped():
    from itm.data.pipelines import pipeline_for

    cases = [{}, {"pipeline": "cached"}, {"pipeline": "grouped"}, {"pipeline": "shards"}, {"fast": True},
             {"objective": "contrastive"}, {"strategy": "multiworker", "pipeline": "cached"}]
    for options in cases + [{"preset": p} for p in PRESETS]:
        config = resolve_config(**options)
        assert config.objective.grouped == pipeline_for(config).grouped, options


@pytest.mark.parametrize("run", OLD_RUNS)
def test_an_old_runs_flat_config_json_loads_as_the_same_options(run, tmp_path):
    from itm.cli.commands import train_config
    from itm.cli.parser import train_parser

    saved = json.loads((FIXTURES / run / "config.json").read_text())
    config = TrainConfig.from_dict(saved)
    assert config.to_dict() == {**config.to_dict(), **saved}  # every recorded value, as recorded
    assert config.model == ModelConfig(image_size=8, projection_dim=8)
    again = train_config(train_parser().parse_args(["--config", str(FIXTURES / run)]))
    assert again.to_dict() == {**config.to_dict(), "output_dir": None}


def test_a_config_json_written_by_part_is_read_too(tmp_path):
    from itm.cli.commands import train_config
    from itm.cli.parser import train_parser

    config = resolve_config("best-cpu", seed=1)
    (tmp_path / "config.json").write_text(json.dumps(config.to_json()))
    recorded = options_from_file(tmp_path)  # an absent part (best-cpu's backbone) records none of its options
    assert recorded == {k: v for k, v in config.to_dict().items() if k in recorded} and "epochs" in recorded
    assert "image_weights" not in recorded
    assert train_config(train_parser().parse_args(["--config", str(tmp_path)])) == config


def test_structural_and_checked_problems_are_reported_together():
    with pytest.raises(ConfigError) as e:
        resolve_config(freeze_backbone=True, negatives="redraw")
    assert "do not go together" in str(e.value)
    assert "--freeze-backbone is for the pretrained backbones" in str(e.value) and "--negatives redraw" in str(e.value)


def test_help_groups_the_options_by_part(capsys):
    from itm.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    starts = [text.index(title + ":") for title in GROUPS.values()]
    assert starts == sorted(starts)  # Model, Data, Objective, Run, in that order
    for name, group in GROUP_OF.items():
        titles = list(GROUPS)
        at = re.search(rf"\n  --{name.replace('_', '-')}\b", text).start()  # its line, not the usage's
        i = titles.index(group)
        assert starts[i] < at < (starts[i + 1] if i + 1 < len(starts) else len(text)), name


def test_build_model_takes_the_model_part():
    from itm.models.classifier import build_model

    part = resolve_config("best-cpu", image_size=32).model
    assert build_model(part).count_params() == build_model(**part.flat()).count_params()
    with pytest.raises(TypeError):
        build_model(image_sise=32)


def test_a_run_writes_its_model_part_beside_its_weights(faithful_run):
    """model.json: the architecture alone, by which the run's model is built again."""
    import keras

    from itm.models.classifier import build_model

    saved = json.loads((faithful_run / "model.json").read_text())
    model = ModelConfig.from_json(saved)
    assert model == TrainConfig.from_dict(json.loads((faithful_run / "config.json").read_text())).model
    assert model.to_json() == saved
    trained = keras.saving.load_model(faithful_run / "model.keras")
    assert build_model(model).count_params() == trained.count_params()
