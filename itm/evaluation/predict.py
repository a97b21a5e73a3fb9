"""The one prediction path, shared by dev scoring during training, evaluation, retrieval and ``itm.Matcher``.

A model is cut into image encoder, text encoder and fusion head (``split_model``); each distinct image
and each distinct caption is encoded once, and only the small head runs per pair. Each part runs as a
``tf.function`` traced once, with a fixed signature whose batch dimension is free, so calls with new
numbers of images or captions never retrace.
"""
from __future__ import annotations

import functools

import numpy as np

from ..data.batches import group_by_image
from ..data.images import decoded_paths

IMAGE_BATCH = 64
PAIR_BATCH = 16384


def _inference(part, *inputs):
    return part(list(inputs) if len(inputs) > 1 else inputs[0], training=False)


class Scorer:
    """p(match) from a trained classifier, each image and caption encoded once."""

    def __init__(self, model):
        import tensorflow as tf

        from ..models.classifier import split_model, text_input_name

        self.model = model
        self.image_encoder, self.text_encoder, self.head = split_model(model)
        self.raw_text = text_input_name(model) == "caption"  # the model embeds caption strings itself
        self.image_size = int(model.input["image_input"].shape[1])
        self._feature_encoder = None

        def traced(part):
            inputs = part.inputs if isinstance(part.inputs, list) else [part.inputs]
            spec = [tf.TensorSpec([None, *x.shape[1:]], tf.string if x.dtype == "string" else x.dtype) for x in inputs]
            # a partial, not a lambda: TensorFlow counts retracing per code object, and each part traces once
            return tf.function(functools.partial(_inference, part), input_signature=spec, autograph=False)

        self._traced = traced
        self._image, self._text, self._head = traced(self.image_encoder), traced(self.text_encoder), traced(self.head)

    # -------------------------------------------------------- parts

    def encode_images(self, pixels) -> np.ndarray:
        """float32 pixels [N,S,S,3] in [0, 1] -> image features [N,D] (or [N,T,D] tokens)."""
        return np.asarray(self._image(np.asarray(pixels, np.float32)))

    def encode_backbone_features(self, features) -> np.ndarray:
        """A frozen backbone's cached pooled features [N,F] -> image features [N,D]."""
        if self._feature_encoder is None:
            from ..models.classifier import backbone_split

            self._feature_encoder = self._traced(backbone_split(self.model)[1])
        return np.asarray(self._feature_encoder(np.asarray(features, np.float32)))

    def encode_texts(self, texts) -> np.ndarray:
        """Caption embeddings [N,384] (or caption strings, for raw-text towers) -> text features [N,D]."""
        if self.raw_text:
            return np.asarray(self._text(np.asarray(texts, dtype=object)))
        return np.asarray(self._text(np.asarray(texts, np.float32)))

    def pairs(self, image_features, text_features, image_rows, text_rows) -> np.ndarray:
        """[p(match), p(no-match)] of image ``image_rows[k]`` with caption ``text_rows[k]``: [K,2] float64."""
        out = [np.asarray(self._head(image_features[image_rows[i:i + PAIR_BATCH]],
                                     text_features[text_rows[i:i + PAIR_BATCH]]))
               for i in range(0, len(image_rows), PAIR_BATCH)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 2))

    def all_pairs(self, image_features, text_features) -> np.ndarray:
        """p(match) of every image with every caption: [n_images, n_captions]."""
        n_i, n_t = len(image_features), len(text_features)
        rows, cols = np.repeat(np.arange(n_i), n_t), np.tile(np.arange(n_t), n_i)
        return self.pairs(image_features, text_features, rows, cols)[:, 0].reshape(n_i, n_t)

    # -------------------------------------------------------- a split's images and captions

    def split_image_features(self, names, images_dir, store=None) -> np.ndarray:
        """Features of the images ``names``: decoded from ``images_dir``, or taken from ``store`` (decoded-once
        uint8 pixels, or a frozen backbone's cached features)."""
        chunks = []
        if store is None:
            for batch in decoded_paths([images_dir / n for n in names], self.image_size).batch(IMAGE_BATCH):
                chunks.append(self.encode_images(batch.numpy()))
        else:
            for i in range(0, len(names), IMAGE_BATCH):
                block = store.take(names[i:i + IMAGE_BATCH])
                chunks.append(self.encode_images(block.astype(np.float32) / 255.0) if block.dtype == np.uint8
                              else self.encode_backbone_features(block))
        return np.concatenate(chunks)

    def caption_features(self, captions, embeddings) -> np.ndarray:
        texts = captions if self.raw_text else np.stack([embeddings[c] for c in captions])
        return np.concatenate([self.encode_texts(texts[i:i + 1024]) for i in range(0, len(captions), 1024)])

    def score_split(self, split, embeddings, store=None) -> np.ndarray:
        """[p(match), p(no-match)] for every triple of ``split``, in file order: [N,2] float64."""
        images = list(group_by_image(split.triples))
        captions = sorted({t.caption for t in split.triples})
        image_row = {name: i for i, name in enumerate(images)}
        caption_row = {c: j for j, c in enumerate(captions)}
        return self.pairs(self.split_image_features(images, split.images_dir, store),
                          self.caption_features(captions, embeddings),
                          np.array([image_row[t.image] for t in split.triples]),
                          np.array([caption_row[t.caption] for t in split.triples]))
