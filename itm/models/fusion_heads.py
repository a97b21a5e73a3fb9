"""The fusion heads: small typed classes, each building the head's graph from the image and text features
to [p(match), p(no-match)] (B,2), float32 under mixed precision too. ``FUSION_HEADS`` maps each ``--fusion``
name to its class.

A head says what it takes from the image tower (``takes_tokens``): one vector per image (B,D), or, for the
attention head, the image's region tokens (B,N,D), so the tower asks the head rather than the head's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import keras
from keras import layers, ops

OUTPUT_NAME = "ITM_Classifier-flickr"  # the original's name for its softmax layer (in the head)


def _classifier(x, dropout: float, width: int):
    """A hidden GELU layer of ``width``, dropout, linear softmax: (B,2)."""
    x = layers.Dense(width, activation="gelu", name="fusion_hidden")(x)
    x = layers.Dropout(dropout, name="fusion_dropout")(x)
    return layers.Dense(2, activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)


@keras.saving.register_keras_serializable(package="itm")
def absolute(x):
    return ops.abs(x)


def interaction_features(image_vec, text_vec, with_inputs: bool = True):
    """[image, text, image*text, |image-text|, cosine]: the pair's agreement, made explicit. Without the
    inputs themselves, only how the two relate: no score for an image or a caption on its own."""
    product = layers.Multiply(name="fusion_product")([image_vec, text_vec])
    difference = layers.Subtract(name="fusion_difference")([image_vec, text_vec])
    abs_difference = layers.Activation(absolute, name="fusion_abs_difference")(difference)
    cosine = layers.Dot(axes=-1, normalize=True, name="fusion_cosine")([image_vec, text_vec])
    parts = [image_vec, text_vec] if with_inputs else []
    return layers.Concatenate(axis=-1, name="fusion_concat")([*parts, product, abs_difference, cosine])


@dataclass(frozen=True)
class FusionHead:
    """[image features (B,D), text features (B,D)] -> [p(match), p(no-match)] (B,2)."""
    takes_tokens: ClassVar[bool] = False  # the image's region tokens (B,N,D) instead of one vector

    def __call__(self, image_features, text_features, dropout: float):
        raise NotImplementedError


@dataclass(frozen=True)
class ConcatHead(FusionHead):
    """The original's fusion: concatenate (B,2D), dropout, linear softmax. Adds an image-only score and a
    text-only score, so it cannot express whether *this* caption fits *this* image."""

    def __call__(self, image_features, text_features, dropout: float):
        x = layers.Concatenate(axis=-1, name="fusion_concat")([image_features, text_features])  # (B,2D)
        x = layers.Dropout(dropout, name="fusion_dropout")(x)
        return layers.Dense(2, activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)


@dataclass(frozen=True)
class MLPHead(FusionHead):
    """Concatenate (B,2D), then a hidden GELU layer (B,2D): can express interactions, but must learn them."""

    def __call__(self, image_features, text_features, dropout: float):
        x = layers.Concatenate(axis=-1, name="fusion_concat")([image_features, text_features])
        return _classifier(x, dropout, 2 * image_features.shape[-1])


@dataclass(frozen=True)
class InteractionHead(FusionHead):
    """Interaction features (B,4D+1), then a hidden GELU layer (B,2D)."""
    with_inputs: ClassVar[bool] = True

    def __call__(self, image_features, text_features, dropout: float):
        return _classifier(interaction_features(image_features, text_features, with_inputs=self.with_inputs),
                           dropout, 2 * image_features.shape[-1])


@dataclass(frozen=True)
class RelationHead(InteractionHead):
    """Interaction features without the image's and the caption's own vectors (B,2D+1): the head can only
    judge the pair, never learn which photos or captions tend to match in the training data."""
    with_inputs: ClassVar[bool] = False


@dataclass(frozen=True)
class AttentionHead(FusionHead):
    """The caption attends over the image's region tokens; the attended image summary is then compared
    with the caption through interaction features. image tokens (B,N,D), text features (B,D)."""
    takes_tokens: ClassVar[bool] = True

    def __call__(self, image_tokens, text_features, dropout: float):
        dim = text_features.shape[-1]
        query = layers.Reshape((1, dim), name="fusion_query")(text_features)  # (B,1,D)
        attended = layers.MultiHeadAttention(num_heads=4, key_dim=dim // 4, dropout=dropout,
                                             name="fusion_attention")(query, image_tokens)  # (B,1,D)
        attended = layers.Reshape((dim,), name="fusion_attended")(attended)  # (B,D)
        return _classifier(interaction_features(attended, text_features), dropout, 2 * dim)


# --fusion name -> its class (the names are the command line's, itm.models.FUSION_HEADS).
FUSION_HEADS = {"concat": ConcatHead, "mlp": MLPHead, "interaction": InteractionHead, "relation": RelationHead,
                "attention": AttentionHead}
