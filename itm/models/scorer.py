"""The one prediction path from a trained classifier, shared by dev scoring during training, evaluation,
retrieval and ``itm.Matcher``.

The classifier's image encoder, text encoder and head (``ITMClassifier``'s parts) each run on their own:
each distinct image and each distinct caption is encoded once, and only the small head runs per pair.
Each part runs as a ``tf.function`` traced once, with a fixed signature whose batch dimension is free,
so calls with new numbers of images or captions never retrace. What to score (a split's images and
captions) is ``itm.evaluation.predict``'s.
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from .classifier import text_input_name

PAIR_BATCH = 16384


def _inference(part, *inputs):
    return part(list(inputs) if len(inputs) > 1 else inputs[0], training=False)


def _traced(part):
    inputs = part.inputs if isinstance(part.inputs, list) else [part.inputs]
    spec = [tf.TensorSpec([None, *x.shape[1:]], tf.string if x.dtype == "string" else x.dtype) for x in inputs]
    # a partial, not a lambda: TensorFlow counts retracing per code object, and each part traces once
    return tf.function(functools.partial(_inference, part), input_signature=spec, autograph=False)


class Scorer:
    """p(match) from a trained classifier, each image and caption encoded once."""

    def __init__(self, model):
        self.model = model
        self.image_encoder, self.text_encoder, self.head = model.image_encoder, model.text_encoder, model.head
        self.raw_text = text_input_name(model) == "caption"  # the model embeds caption strings itself
        self.image_size = int(model.input["image_input"].shape[1])
        self._feature_encoder = None
        self._image, self._text, self._head = _traced(self.image_encoder), _traced(self.text_encoder), _traced(self.head)

    def encode_images(self, pixels) -> np.ndarray:
        """Pixels [N,S,S,3], 0..255 (float32 or uint8) -> image features [N,D] (or [N,T,D] tokens)."""
        return np.asarray(self._image(np.asarray(pixels, np.float32)))

    def encode_backbone_features(self, features) -> np.ndarray:
        """A frozen backbone's cached features [N,F] -> image features [N,D]."""
        if self._feature_encoder is None:
            self._feature_encoder = _traced(self.model.image_trained)
        return np.asarray(self._feature_encoder(np.asarray(features, np.float32)))

    def encode_stored(self, block) -> np.ndarray:
        """What an image store holds (``itm.data``: decoded-once uint8 pixels, or a frozen backbone's
        cached features) -> image features."""
        return self.encode_images(block) if block.dtype == np.uint8 else self.encode_backbone_features(block)

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
