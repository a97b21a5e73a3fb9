"""Batches for training: every pipeline is a tf.data dataset of ``(inputs, labels)``.

Labels are one-hot per triple, match = [1, 0] (``one_hot``). Two kinds of inputs, by what the
trainer's step does with them (``itm.training.trainer``):

* triples, the original's: ``{"image_input": (B,S,S,3) float32 pixels 0..255, "text_embedding": (B,384)}``
  (or ``"caption": (B,)`` strings for the raw-text towers): one image per triple. Pipelines:
  ``file_triples`` (decode a JPEG per triple, as the original), ``cached_triples`` (decoded once),
  and ``itm.data.shards`` (TFRecord streams).
* grouped: ``{"images": (G,...), "owner": (T,), "text_embedding": (T,384)}``: a few whole images
  with all their triples (triple t belongs to image ``owner[t]``), so the image tower runs once per
  image. ``images`` are uint8 pixels (G,S,S,3) or, for a frozen backbone, its cached features.
  ``grouped_epochs`` draws batches of G images; ``contrastive_epochs`` draws B distinct images with
  a matching caption each (``"positive_text": (B,384)``) besides their triples.

The drawn pipelines are one stream over all epochs, epoch e drawn from ``(seed, e)`` alone, so a run
resumed after epoch k draws exactly what an uninterrupted one would have (``epochs_dataset``).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import tensorflow as tf

from .folder import EMBEDDING_DIM, Split, Triple
from .images import preprocess_image


def one_hot(triples) -> np.ndarray:
    """(N,2) float32 labels: match = [1, 0], no-match = [0, 1]."""
    return np.array([[1, 0] if t.match else [0, 1] for t in triples], dtype=np.float32)


def group_by_image(triples) -> dict[str, list[Triple]]:
    """Each image with its triples, images in order of first appearance, triples in file order."""
    out: dict[str, list[Triple]] = {}
    for t in triples:
        out.setdefault(t.image, []).append(t)
    return out


def text_matrix(triples, embeddings) -> np.ndarray:
    """(N,384) float32 caption embeddings of ``triples``; zeros when the model reads raw captions."""
    if not embeddings:
        return np.zeros((len(triples), EMBEDDING_DIM), np.float32)
    return np.stack([embeddings[t.caption] for t in triples]).astype(np.float32)


# ---------------------------------------------------------------- triples

def file_triples(split: Split, embeddings, batch_size: int = 16, shuffle: bool = True, seed: int | None = None,
                 image_size: int = 224):
    """The original's pipeline: one JPEG decode per triple, shuffled, batched, prefetched.

    Yields ``(features, label)`` with features ``image_input``, ``text_embedding`` (zeros when
    ``embeddings`` is empty, for models that read the caption), ``caption`` and ``file_name``;
    ``model_inputs`` keeps what a model takes.
    """
    paths = [str(split.images_dir / t.image) for t in split.triples]
    captions = [t.caption for t in split.triples]

    def process_input(path, vector, caption, label):
        img = preprocess_image(tf.io.read_file(path), image_size)
        return {"image_input": img, "text_embedding": vector, "caption": caption, "file_name": path}, label

    ds = tf.data.Dataset.from_tensor_slices((paths, text_matrix(split.triples, embeddings), captions,
                                             one_hot(split.triples)))
    if shuffle:
        ds = ds.shuffle(batch_size * 8, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(process_input, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def model_inputs(ds, names=("image_input", "text_embedding")):
    """Keep only the features the model takes (caption and file name are for people)."""
    return ds.map(lambda features, label: ({k: features[k] for k in names}, label))


def epochs_dataset(make_epoch, first_epoch: int, epochs: int, signature):
    """Epochs ``first_epoch + 1 .. epochs`` of ``make_epoch(epoch)``'s batches, as one stream
    (for ``fit`` with ``steps_per_epoch``)."""
    def one_epoch(epoch):
        return tf.data.Dataset.from_generator(lambda e: make_epoch(int(e)), args=(epoch,), output_signature=signature)

    return tf.data.Dataset.range(first_epoch + 1, epochs + 1).flat_map(one_epoch).prefetch(2)


def redrawn_captions(split: Split, embeddings, rng) -> np.ndarray:
    """The split's caption embeddings with every no-match caption replaced by a matching caption of
    another image (never one of the image's own): fresh negatives for one epoch."""
    text = text_matrix(split.triples, embeddings)
    own = defaultdict(set)
    for t in split.triples:
        if t.match:
            own[t.image].add(t.caption)
    pool = sorted({c for captions in own.values() for c in captions})
    if not pool:
        return text
    for i, t in enumerate(split.triples):
        if not t.match:
            mine = own.get(t.image, set())
            caption = pool[rng.integers(len(pool))]
            while caption in mine and len(mine) < len(pool):
                caption = pool[rng.integers(len(pool))]
            text[i] = embeddings[caption]
    return text


def cached_triples(split: Split, embeddings, cache, batch_size: int, seed: int, first_epoch: int, epochs: int,
                   negatives: str = "fixed"):
    """The triples pipeline from decoded-once uint8 images (as float32 per batch); epoch e's
    order (and, with ``negatives="redraw"``, its no-match captions) drawn from ``(seed, e)``."""
    rows = cache.rows([t.image for t in split.triples])
    text, labels = text_matrix(split.triples, embeddings), one_hot(split.triples)
    pixels = tf.constant(cache.pixels)

    def make_epoch(epoch):
        rng = np.random.default_rng([seed, epoch])
        epoch_text = redrawn_captions(split, embeddings, rng) if negatives == "redraw" else text
        order = rng.permutation(len(rows))
        for i in range(0, len(order), batch_size):
            chosen = order[i:i + batch_size]
            yield rows[chosen], epoch_text[chosen], labels[chosen]

    signature = (tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, text.shape[1]], tf.float32),
                 tf.TensorSpec([None, 2], tf.float32))
    ds = epochs_dataset(make_epoch, first_epoch, epochs, signature)
    return ds.map(lambda r, t, y: ({"image_input": tf.cast(tf.gather(pixels, r), tf.float32),
                                    "text_embedding": t}, y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


# ---------------------------------------------------------------- grouped by image

def grouped_batch(names, by_image, embeddings, store, rng=None):
    """The grouped batch of images ``names`` with all their triples: (inputs, labels)."""
    triples = [(g, t) for g, name in enumerate(names) for t in by_image[name]]
    inputs = {"images": store.take(names, rng), "owner": np.array([g for g, _ in triples], np.int32),
              "text_embedding": text_matrix([t for _, t in triples], embeddings)}
    return inputs, one_hot([t for _, t in triples])


def _grouped_signature(store, extra=None):
    spec = {"images": tf.TensorSpec([None, *store.item_shape], store.dtype), "owner": tf.TensorSpec([None], tf.int32),
            "text_embedding": tf.TensorSpec([None, EMBEDDING_DIM], tf.float32), **(extra or {})}
    return spec, tf.TensorSpec([None, 2], tf.float32)


def grouped_steps(split: Split, images_per_batch: int) -> int:
    return -(-len(group_by_image(split.triples)) // images_per_batch)


def grouped_epochs(split: Split, embeddings, store, images_per_batch: int, seed: int, first_epoch: int, epochs: int):
    """Batches of ``images_per_batch`` whole training images (the last one smaller), epoch e's image
    order drawn from ``(seed, e)``."""
    by_image = group_by_image(split.triples)
    images = sorted(by_image)

    def make_epoch(epoch):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(images))
        for i in range(0, len(order), images_per_batch):
            yield grouped_batch([images[j] for j in order[i:i + images_per_batch]], by_image, embeddings, store, rng)

    return epochs_dataset(make_epoch, first_epoch, epochs, _grouped_signature(store))


def positives_per_image(split: Split, extra: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Each image of ``split`` with its matching captions, plus ``extra`` ones for images it has."""
    out = defaultdict(list)
    for t in split.triples:
        if t.match:
            out[t.image].append(t.caption)
    for image, captions in (extra or {}).items():
        if image in out:
            out[image] = out[image] + captions
    return dict(out)


def contrastive_steps(split: Split, batch_size: int) -> int:
    return len(positives_per_image(split)) // batch_size


def contrastive_epochs(split: Split, embeddings, store, batch_size: int, seed: int, first_epoch: int, epochs: int,
                       extra: dict[str, list[str]] | None = None):
    """Batches of ``batch_size`` distinct training images that have a matching caption, each with
    one of them drawn at random (``positive_text``), and all their triples; whole batches only."""
    positives = positives_per_image(split, extra)
    by_image = group_by_image(split.triples)
    images = sorted(positives)

    def make_epoch(epoch):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(images))
        for step in range(len(images) // batch_size):
            names = [images[j] for j in order[step * batch_size:(step + 1) * batch_size]]
            inputs, labels = grouped_batch(names, by_image, embeddings, store, rng)
            inputs["positive_text"] = np.stack([embeddings[rng.choice(positives[n])] for n in names]).astype(np.float32)
            yield inputs, labels

    extra_spec = {"positive_text": tf.TensorSpec([batch_size, EMBEDDING_DIM], tf.float32)}
    signature = _grouped_signature(store, extra_spec)
    signature[0]["images"] = tf.TensorSpec([batch_size, *store.item_shape], store.dtype)
    return epochs_dataset(make_epoch, first_epoch, epochs, signature)
