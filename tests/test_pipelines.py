"""The input pipelines as objects: chosen once from the options, and what each tells a run holds for
the batches it makes (steps per epoch, images per step, the decoded-image store)."""
import pytest

from itm.data.folder import load_data_dir
from itm.data.pipelines import (CachedPipeline, ContrastivePipeline, GroupedPipeline, MultiWorkerPipeline, Pipeline,
                                ShardsPipeline, pipeline_for)
from itm.errors import ConfigError
from itm.options import resolve_config


@pytest.mark.parametrize("options, kind, grouped, decoded, drawn", [
    ({}, Pipeline, False, False, False),
    ({"pipeline": "cached"}, CachedPipeline, False, True, True),
    ({"pipeline": "grouped"}, GroupedPipeline, True, True, True),
    ({"pipeline": "shards"}, ShardsPipeline, False, False, False),
    ({"objective": "contrastive"}, ContrastivePipeline, True, True, True),
    ({"objective": "contrastive", "pipeline": "cached"}, ContrastivePipeline, True, True, True),
    ({"fast": True}, GroupedPipeline, True, True, True),
    ({"strategy": "multiworker"}, MultiWorkerPipeline, False, False, False),
    ({"strategy": "multiworker", "pipeline": "cached"}, MultiWorkerPipeline, False, True, False),
])
def test_the_options_choose_one_pipeline(options, kind, grouped, decoded, drawn):
    pipeline = pipeline_for(resolve_config(**options))
    assert type(pipeline) is kind and (pipeline.grouped, pipeline.decoded, pipeline.drawn) == (grouped, decoded, drawn)


def test_the_presets_pipelines():
    assert type(pipeline_for(resolve_config("faithful"))) is Pipeline
    assert type(pipeline_for(resolve_config("best-cpu"))) is ContrastivePipeline
    assert type(pipeline_for(resolve_config("pretrained"))) is ContrastivePipeline


def test_steps_and_images_per_step_follow_the_split(tiny_data):
    train = load_data_dir(tiny_data).splits["train"]
    triples, images = len(train.triples), len({t.image for t in train.triples})
    faithful = pipeline_for(resolve_config(batch_size=5))
    assert faithful.steps_per_epoch(train) == -(-triples // 5) and faithful.images_per_step(train) == 5
    assert faithful.images_per_epoch(train) == triples
    grouped = pipeline_for(resolve_config(pipeline="grouped", batch_size=8))
    per_step = grouped.images_per_step(train)
    assert per_step == max(1, round(8 * images / triples)) and grouped.steps_per_epoch(train) == -(-images // per_step)
    assert grouped.images_per_epoch(train) == images
    assert grouped.memory_needed(train, 1000) == 1000 * per_step
    contrastive = pipeline_for(resolve_config(objective="contrastive", batch_size=2))
    assert contrastive.images_per_epoch(train) == contrastive.steps_per_epoch(train) * 2
    with pytest.raises(ConfigError, match="lower --batch-size"):
        pipeline_for(resolve_config(objective="contrastive", batch_size=10**6)).steps_per_epoch(train)
    multiworker = pipeline_for(resolve_config(strategy="multiworker", batch_size=4))
    assert multiworker.steps_per_epoch(train, replicas=2) == triples // 4  # whole global batches only
    with pytest.raises(ConfigError, match="multiple of that"):
        multiworker.steps_per_epoch(train, replicas=3)


@pytest.mark.parametrize("options", [{"pipeline": "cached"}, {"pipeline": "grouped"},
                                     {"objective": "contrastive", "batch_size": 2}])
def test_a_drawn_pipeline_streams_its_steps_per_epoch_for_every_epoch(options, tiny_data):
    data = load_data_dir(tiny_data)
    config = resolve_config(data_dir=str(tiny_data), image_size=32, seed=1, epochs=3, **options)
    pipeline = pipeline_for(config)
    store = pipeline.image_store(data, model=None)
    assert sorted(store.names) == sorted({t.image for s in ("train", "dev") for t in data.splits[s].triples})
    steps = pipeline.steps_per_epoch(data.splits["train"])
    assert sum(1 for _ in pipeline.dataset(data, store, first_epoch=1)) == 2 * steps  # epochs 2 and 3
    assert sum(1 for _ in pipeline.dataset(data, store, epochs=1)) == steps


def test_the_faithful_pipeline_reads_files_and_keeps_no_store(tiny_data):
    data = load_data_dir(tiny_data)
    pipeline = pipeline_for(resolve_config(data_dir=str(tiny_data), image_size=32, seed=1, batch_size=4))
    assert pipeline.image_store(data, model=None) is None
    x, y = next(iter(pipeline.dataset(data, None)))
    assert set(x) == {"image_input", "text_embedding"} and x["image_input"].shape[1:] == (32, 32, 3)
    assert x["image_input"].shape[0] == y.shape[0] == 4
