"""The ITM model: an image tower and a text tower, projected, fused, and classified.

Shapes on the faithful path (batch B, image 224x224)::

    image_input (B,224,224,3) -> Conv16/Pool -> Conv32/Pool -> Conv64/Pool -> (B,28,28,64)
        -> Dropout -> Flatten (B,50176) -> projection (B,128)
    text_embedding (B,384) -> projection (B,128)
    concat (B,256) -> Dropout -> Dense(2, softmax) = [p(match), p(no-match)]

Towers and fusion heads are looked up by name, so other ones can be added beside
the faithful ones without touching this flow.
"""
from __future__ import annotations

import keras
from keras import layers

from .data import EMBEDDING_DIM

OUTPUT_NAME = "ITM_Classifier-flickr"  # the original's name for its softmax layer
# The towers' outputs carry these names, so that a model can be cut into encoders and a head.
IMAGE_FEATURES, TEXT_FEATURES = "image_features", "text_features"


def project_embeddings(x, num_projection_layers: int, projection_dims: int, dropout_rate: float, name: str):
    """Dense, then blocks of GELU > Dense > Dropout > residual Add > LayerNorm (the original's)."""
    projected = layers.Dense(projection_dims, name=f"{name}_dense")(x)
    for i in range(num_projection_layers):
        h = layers.Activation("gelu", name=f"{name}_gelu_{i}")(projected)
        h = layers.Dense(projection_dims, name=f"{name}_block_{i}_dense")(h)
        h = layers.Dropout(dropout_rate, name=f"{name}_block_{i}_dropout")(h)
        h = layers.Add(name=f"{name}_block_{i}_add")([projected, h])
        projected = layers.LayerNormalization(name=f"{name}_block_{i}_layer_norm")(h)
    return projected


def faithful_cnn(image_input, dropout_rate: float):
    """Three Conv2D(3x3, same, relu) + MaxPool stages learning from raw pixels."""
    x = image_input
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"image_conv{filters}")(x)
        x = layers.MaxPooling2D(name=f"image_pool{filters}")(x)
    x = layers.Dropout(dropout_rate, name="image_dropout")(x)
    return layers.Flatten(name="image_flatten")(x)


IMAGE_TOWERS = {"faithful-cnn": faithful_cnn}
TEXT_TOWERS = {"precomputed": lambda text_input, dropout_rate: text_input}


def concat_head(image_features, text_features, dropout_rate: float):
    """The original's fusion: concatenate, dropout, linear softmax."""
    x = layers.Concatenate(axis=1, name="fusion_concat")([image_features, text_features])
    x = layers.Dropout(dropout_rate, name="fusion_dropout")(x)
    return layers.Dense(2, activation="softmax", name=OUTPUT_NAME)(x)


FUSION_HEADS = {"concat": concat_head}


def _choose(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(registry)}")
    return registry[name]


def build_model(image_size: int = 224, image_tower: str = "faithful-cnn", text_tower: str = "precomputed",
                fusion: str = "concat", projection_dim: int = 128, num_projection_layers: int = 1,
                dropout: float = 0.1) -> keras.Model:
    """Build the classifier; the defaults are the original's (6,529,570 parameters at 224x224)."""
    image_input = keras.Input(shape=(image_size, image_size, 3), name="image_input")
    text_input = keras.Input(shape=(EMBEDDING_DIM,), name="text_embedding")

    image_features = _choose(IMAGE_TOWERS, "image tower", image_tower)(image_input, dropout)
    text_features = _choose(TEXT_TOWERS, "text tower", text_tower)(text_input, dropout)
    image_proj = project_embeddings(image_features, num_projection_layers, projection_dim, dropout, "image_proj")
    text_proj = project_embeddings(text_features, num_projection_layers, projection_dim, dropout, "text_proj")
    image_proj = layers.Identity(name=IMAGE_FEATURES)(image_proj)
    text_proj = layers.Identity(name=TEXT_FEATURES)(text_proj)

    outputs = _choose(FUSION_HEADS, "fusion head", fusion)(image_proj, text_proj, dropout)
    return keras.Model(inputs={"image_input": image_input, "text_embedding": text_input}, outputs=outputs,
                       name="itm_classifier")


def split_model(model: keras.Model):
    """Cut a trained model into (image encoder, text encoder, fusion head), sharing its weights.

    Retrieval scores every image against every caption: with the split, each image and each
    caption is encoded once and only the small head runs per pair.
    """
    names = {layer.name for layer in model.layers}
    if IMAGE_FEATURES in names:
        image_out, text_out = model.get_layer(IMAGE_FEATURES).output, model.get_layer(TEXT_FEATURES).output
    else:  # runs saved before the towers' outputs were named
        norms = [n for n in names if n.endswith("_layer_norm")]
        image_out = model.get_layer(max(n for n in norms if n.startswith("image_proj"))).output
        text_out = model.get_layer(max(n for n in norms if n.startswith("text_proj"))).output
    image_encoder = keras.Model(model.input["image_input"], image_out)
    text_encoder = keras.Model(model.input["text_embedding"], text_out)
    head = keras.Model([image_out, text_out], model.output)
    return image_encoder, text_encoder, head
