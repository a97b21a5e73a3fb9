"""A split's predictions: its images (decoded from files, or taken from an in-memory store) and captions,
each encoded once by the model's ``Scorer`` (``itm.models.scorer``), and p(match) of every triple."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.batches import group_by_image
from ..data.features import cached_features, feature_key
from ..data.images import decoded_paths
from ..log import progress
from ..models.scorer import Scorer

IMAGE_BATCH = 64


def split_image_features(scorer: Scorer, names, images_dir, store=None) -> np.ndarray:
    """Features of the images ``names``: decoded from ``images_dir``, or taken from ``store`` (decoded-once
    uint8 pixels, or a frozen backbone's cached features)."""
    chunks = []
    if store is None:
        for batch in decoded_paths([images_dir / n for n in names], scorer.image_size).batch(IMAGE_BATCH):
            chunks.append(scorer.encode_images(batch.numpy()))
    else:
        for i in range(0, len(names), IMAGE_BATCH):
            chunks.append(scorer.encode_stored(store.take(names[i:i + IMAGE_BATCH])))
    return np.concatenate(chunks)


def caption_features(scorer: Scorer, captions, embeddings) -> np.ndarray:
    texts = captions if scorer.raw_text else np.stack([embeddings[c] for c in captions])
    return np.concatenate([scorer.encode_texts(texts[i:i + 1024]) for i in range(0, len(captions), 1024)])


def score_split(scorer: Scorer, split, embeddings, store=None) -> np.ndarray:
    """[p(match), p(no-match)] for every triple of ``split``, in file order: [N,2] float64."""
    images = list(group_by_image(split.triples))
    captions = sorted({t.caption for t in split.triples})
    image_row = {name: i for i, name in enumerate(images)}
    caption_row = {c: j for j, c in enumerate(captions)}
    return scorer.pairs(split_image_features(scorer, images, split.images_dir, store),
                        caption_features(scorer, captions, embeddings),
                        np.array([image_row[t.image] for t in split.triples]),
                        np.array([caption_row[t.caption] for t in split.triples]))


def cached_backbone_stores(model, run_config: dict | None, splits, log=None) -> dict:
    """images folder -> ``FeatureCache`` of the frozen backbone's features of every image of ``splits``, for a
    run trained with --cache-features (its ``config.json`` says so): evaluation then runs only
    ``image_trained`` on them, and its scores are the pixel path's (the cached vector is the backbone's on the
    same decode). The cache file is training's (``itm.data.features.cached_features``, the same key), so a warm
    run decodes nothing; the photos it lacks (the test split, another folder) are computed once and added.
    {} for any other run: one trained without --cache-features asked for no files in $ITM_CACHE_DIR (a few
    KiB a photo), and is scored from pixels as before. ``log``: where the progress lines go (default: the
    ``itm`` logger)."""
    config = run_config or {}
    if not config.get("cache_features"):
        return {}
    try:
        backbone = model.image_frozen
    except (AttributeError, ValueError):  # no frozen part: nothing to cache
        return {}
    size = int(model.input["image_input"].shape[1])
    tower = config.get("image_tower") or "image"
    key = feature_key(backbone, tower, size, config.get("unfreeze_from"), config.get("backbone_pooling") or "avg")
    folders: dict[Path, list] = {}
    for split in splits:
        folders.setdefault(Path(split.images_dir).resolve(), []).extend(t.image for t in split.triples)
    return {folder: cached_features(backbone, key, names, folder, size, what=tower, log=log or progress)
            for folder, names in folders.items()}


def store_of(stores: dict, split):
    """The split's ``FeatureCache`` among ``cached_backbone_stores``'s, or None (its images are decoded)."""
    return stores.get(Path(split.images_dir).resolve()) if stores else None
