"""The original's class names, for people who know ``ITM_DataLoader`` and ``ITM_Classifier``."""
from __future__ import annotations

from .data.batches import file_triples
from .data.folder import load_data_dir
from .data.source import resolve_data_dir
from .files import read_json
from .log import logger
from .options import TrainConfig, resolve_config
from .training.run import train


class ITM_DataLoader:
    """Reads a data folder into ``train_ds``, ``val_ds`` and ``test_ds`` (tf.data, batched, shuffled)."""

    BATCH_SIZE = 16
    IMAGE_SIZE = (224, 224)
    IMAGE_SHAPE = (224, 224, 3)
    SENTENCE_EMBEDDING_SHAPE = (384,)

    def __init__(self, data_dir=None, batch_size: int = BATCH_SIZE, limit: int | None = None, seed: int | None = None):
        path, origin = resolve_data_dir(data_dir)
        logger.info(origin)
        data = load_data_dir(path, limit=limit)
        self.data_dir = path
        self.splits = data.splits
        self.sentence_embeddings = data.embeddings
        self.train_ds, self.val_ds, self.test_ds = (
            file_triples(data.splits[s], data.embeddings, batch_size, shuffle=True, seed=seed,
                         image_size=self.IMAGE_SIZE[0]) for s in ("train", "dev", "test"))


class ITM_Classifier:
    """As in the original, constructing one trains, evaluates and saves a model (see ``itm.training``).

    Keyword arguments are options (``itm.options.TrainConfig``), e.g. ``ITM_Classifier(data_dir=..., epochs=2)``.
    """

    def __init__(self, preset: str = "faithful", **options):
        self.run_dir = train(resolve_config(preset, **options))
        self.metrics = read_json(self.run_dir / "metrics.json", "metrics file")
        self.config = TrainConfig.from_dict(self.metrics["config"])  # as the run finished it: seed, precision, paths
