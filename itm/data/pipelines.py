"""The training input pipelines as objects: each answers what a run needs of it.

A run asks its pipeline (``pipeline_for(config)``, chosen once) for the train split's dataset, the steps
of an epoch, the images held in memory (decoded once, or a frozen backbone's cached features), how
many images a step runs through the image tower (the memory check), and whether its batches are
grouped by image. The batches themselves are made in ``itm.data.batches`` and ``itm.data.shards``.

Which pipeline: the contrastive objective draws its own image-grouped batches whatever --pipeline says;
else --pipeline grouped; else --strategy multiworker shards the triples per worker
(``itm.training.multiworker``); else --pipeline cached, shards or faithful. ``config`` is a
``itm.options.TrainConfig``. The batches' modules import TensorFlow (``itm.options`` imports this module inside
its checks only).
"""
from __future__ import annotations

import time

from ..errors import ConfigError
from ..log import logger
from . import batches
from .features import load_feature_cache
from .images import load_image_cache
from .shards import make_shard_dataset, read_index, shards_dir_of


class Pipeline:
    """The faithful pipeline, the original's: one JPEG decode per triple, every epoch."""
    name = "faithful"
    grouped = False  # a batch holds whole images with all their triples: the image tower runs once per image
    decoded = False  # trains on images decoded once into memory
    drawn = False  # one stream over all epochs, epoch e drawn from (seed, e): ``fit`` needs the steps per epoch

    def __init__(self, config):
        self.config = config

    def steps_per_epoch(self, split, replicas: int = 1) -> int:
        return -(-len(split.triples) // self.config.batch_size)

    def images_per_step(self, split) -> int:
        """Images a step runs through the image tower (and keeps activations of for the backward pass)."""
        return self.config.batch_size

    def images_per_epoch(self, split) -> int:
        """Images an epoch runs through the image tower."""
        return len(split.triples)

    def memory_needed(self, split, bytes_per_image: int) -> int:
        """Bytes of the image tower's activations in one step, at ``bytes_per_image`` each."""
        return bytes_per_image * self.images_per_step(split)

    def check_ready(self, data_dir) -> None:
        """Refuse, before training, an input the pipeline cannot read (the shards pipeline's shards)."""

    def image_store(self, data, model):
        """The train and dev images held in memory, or None (the faithful and shards pipelines read files): a
        frozen backbone's cached features (--cache-features), or every image decoded once."""
        splits = [data.splits["train"], data.splits["dev"]]
        if self.config.cache_features:
            return load_feature_cache(model, splits, self.config)
        if not self.decoded:
            return None
        start = time.perf_counter()
        store = load_image_cache([t.image for s in splits for t in s.triples], splits[0].images_dir,
                                 self.config.image_size)
        logger.info(f"Decoded {len(store.names)} images once into memory ({store.pixels.nbytes / 2**20:.0f} MiB uint8) "
                    f"in {time.perf_counter() - start:.1f} s")
        return store

    def dataset(self, data, store, first_epoch: int = 0, extra=None, epochs: int | None = None):
        """The train split's batches from epoch ``first_epoch + 1`` to ``epochs`` (default: the run's);
        ``extra`` are the contrastive objective's extra captions."""
        return batches.model_inputs(self._triples(data), self._inputs())

    def _inputs(self):
        c = self.config
        return ("image_input", "caption" if c.text_tower != "precomputed" else "text_embedding")

    def _triples(self, data):
        c = self.config
        return batches.file_triples(data.splits["train"], data.embeddings, c.batch_size, shuffle=True, seed=c.seed,
                                    image_size=c.image_size)


class ShardsPipeline(Pipeline):
    """TFRecord shards ('itm shard') streamed, each image decoded once per epoch: data bigger than memory."""
    name = "shards"

    def check_ready(self, data_dir) -> None:
        shards = shards_dir_of(data_dir, self.config.shards_dir)
        index = read_index(shards, splits=("train", "dev"), data_dir=data_dir)
        logger.info(f"  train streams from {shards} ({index['splits']['train']['shards']} TFRecord shards)")

    def _triples(self, data):
        c = self.config
        return make_shard_dataset(shards_dir_of(data.path, c.shards_dir), "train", c.batch_size, shuffle=True,
                                  seed=c.seed, image_size=c.image_size)


class CachedPipeline(Pipeline):
    """The triples from images decoded once (uint8 in memory); with --negatives redraw, new no-match
    captions every epoch."""
    name = "cached"
    decoded = True
    drawn = True

    def dataset(self, data, store, first_epoch: int = 0, extra=None, epochs: int | None = None):
        c = self.config
        return batches.cached_triples(data.splits["train"], data.embeddings, store, c.batch_size, c.seed, first_epoch,
                                      c.epochs if epochs is None else epochs, c.negatives)


class GroupedPipeline(Pipeline):
    """Whole decoded-once images with all their triples, about --batch-size triples a batch."""
    name = "grouped"
    grouped = decoded = drawn = True

    def images_per_batch(self, split) -> int:
        """As many whole images as make about ``batch_size`` triples."""
        images = len({t.image for t in split.triples})
        return max(1, round(self.config.batch_size * images / len(split.triples)))

    def steps_per_epoch(self, split, replicas: int = 1) -> int:
        return batches.grouped_steps(split, self.images_per_batch(split))

    def images_per_step(self, split) -> int:
        return self.images_per_batch(split)

    def images_per_epoch(self, split) -> int:
        return len({t.image for t in split.triples})

    def dataset(self, data, store, first_epoch: int = 0, extra=None, epochs: int | None = None):
        c = self.config
        split = data.splits["train"]
        return batches.grouped_epochs(split, data.embeddings, store, self.images_per_batch(split), c.seed,
                                      first_epoch, c.epochs if epochs is None else epochs)


class ContrastivePipeline(Pipeline):
    """The contrastive objective's batches: --batch-size distinct images, each with a matching caption
    drawn for InfoNCE, and all their triples; whole batches only."""
    name = "contrastive"
    grouped = decoded = drawn = True

    def steps_per_epoch(self, split, replicas: int = 1) -> int:
        steps = batches.contrastive_steps(split, self.config.batch_size)
        if steps == 0:
            raise ConfigError(f"the train split has {len(batches.positives_per_image(split))} images with a match, "
                              f"fewer than one batch of {self.config.batch_size}; lower --batch-size")
        return steps

    def images_per_epoch(self, split) -> int:
        return self.steps_per_epoch(split) * self.config.batch_size

    def dataset(self, data, store, first_epoch: int = 0, extra=None, epochs: int | None = None):
        c = self.config
        return batches.contrastive_epochs(data.splits["train"], data.embeddings, store, c.batch_size, c.seed,
                                          first_epoch, c.epochs if epochs is None else epochs, extra)


class MultiWorkerPipeline(Pipeline):
    """--strategy multiworker: each worker decodes its own share of every epoch's whole global batches
    (``itm.training.multiworker.epoch_shard``), in the custom loop that makes its dataset per epoch."""
    name = "multiworker"

    def __init__(self, config):
        super().__init__(config)
        self.decoded = config.pipeline == "cached"  # the dev scores read the decoded-once images

    def steps_per_epoch(self, split, replicas: int = 1) -> int:
        c = self.config
        if c.batch_size % replicas:
            raise ConfigError(f"--batch-size {c.batch_size} is the global batch, split evenly across the "
                              f"{replicas} replicas of all workers: make it a multiple of that")
        steps = len(split.triples) // c.batch_size
        if steps == 0:
            raise ConfigError(f"the train split has {len(split.triples)} triples, fewer than one global batch of "
                              f"{c.batch_size}; lower --batch-size")
        return steps

    def dataset(self, data, store, first_epoch: int = 0, extra=None, epochs: int | None = None):
        raise NotImplementedError("--strategy multiworker makes each worker's dataset per epoch (worker_dataset)")

    def worker_dataset(self, shard, embeddings, per_replica_batch: int):
        """One worker's share of an epoch (``shard``, in its drawn order), batched for its replicas."""
        return batches.model_inputs(batches.file_triples(shard, embeddings, per_replica_batch, shuffle=False,
                                                         image_size=self.config.image_size))


PIPELINES = {p.name: p for p in (Pipeline, CachedPipeline, GroupedPipeline, ShardsPipeline)}


def pipeline_for(config) -> Pipeline:
    """The one pipeline that ``config``'s objective, --pipeline and --strategy choose."""
    if config.objective.name == "contrastive":
        return ContrastivePipeline(config)
    if config.pipeline == "grouped":
        return GroupedPipeline(config)
    if config.strategy == "multiworker":
        return MultiWorkerPipeline(config)
    return PIPELINES[config.pipeline](config)
