"""The ITM model, ``ITMClassifier``: an image encoder, a text encoder and a head, three Keras models of their
own that the classifier owns (``model.image_encoder``, ``model.text_encoder``, ``model.head``) and saves.

Shapes on the faithful path (batch B, image 224x224)::

    image_encoder: image_input (B,224,224,3) pixels 0..255 -> Rescaling(1/255) -> Conv16/Pool -> Conv32/Pool
        -> Conv64/Pool -> (B,28,28,64) -> Dropout -> Flatten (B,50176) -> projection (B,128)
    text_encoder:  text_embedding (B,384) -> projection (B,128)
    head:          [image (B,128), text (B,128)] -> concat (B,256) -> Dropout -> Dense(2, softmax)
                   = [p(match), p(no-match)]

The parts share the classifier's weights: retrieval encodes each image and each caption once
(``model.encode_image``, ``model.encode_text``) and runs only the head per pair (``model.score``); grouped
training runs the image encoder once per image. Over a frozen backbone the image encoder is itself two
models, ``model.image_frozen`` (pixels -> what the frozen backbone computes, which can be cached) and
``model.image_trained`` (that -> the vector).

The towers and heads are small typed classes (``image_towers``, the text towers here, ``fusion_heads``);
``model_parts`` turns the model's options into them in one place, so other ones can be added beside the
faithful ones without touching this flow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import keras
from keras import layers

from . import FUSION_HEADS as FUSION_HEAD_NAMES, IMAGE_TOWERS as IMAGE_TOWER_NAMES, TEXT_TOWERS as TEXT_TOWER_NAMES
from ..defaults import EMBEDDING_DIM
from .config import ModelConfig
from .fusion_heads import FUSION_HEADS, OUTPUT_NAME, FusionHead  # noqa: F401  (OUTPUT_NAME: the model's output)
from .image_towers import IMAGE_TOWERS, ImageTower
# The modules, not their names: Keras' registration (itm.models.keras_registry) may meet one half-made.
from . import minilm

IMAGE_ENCODER, TEXT_ENCODER, HEAD = "image_encoder", "text_encoder", "head"  # the classifier's three parts
FROZEN_PART, TRAINED_PART = "image_frozen", "image_trained"  # the image encoder's parts over a frozen backbone
PART_NAMES = (IMAGE_ENCODER, TEXT_ENCODER, HEAD)


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


@dataclass(frozen=True)
class TextTower:
    """The data folder's 384-d caption embedding (B,384), as it is (the faithful tower)."""
    reads_raw_text: ClassVar[bool] = False  # caption strings (B,) instead of the embedding

    @classmethod
    def from_config(cls, model: ModelConfig) -> TextTower:
        return cls()

    def __call__(self, text_input, dropout: float):
        return text_input


@dataclass(frozen=True)
class MiniLMText(TextTower):
    """all-MiniLM-L6-v2 inside the model, on caption strings (B,) -> (B,384); frozen, or fine-tuned."""
    reads_raw_text: ClassVar[bool] = True
    trainable: bool = False

    @classmethod
    def from_config(cls, model: ModelConfig) -> MiniLMText:
        return cls(trainable=model.text_trainable)

    def __call__(self, text_input, dropout: float):
        return minilm.minilm_text_tower(text_input, dropout, trainable=self.trainable)


@dataclass(frozen=True)
class ScratchText(TextTower):
    """A small Transformer over the same WordPiece tokens, trained from zero: caption strings (B,) -> (B,F)."""
    reads_raw_text: ClassVar[bool] = True

    def __call__(self, text_input, dropout: float):
        return minilm.scratch_text_tower(text_input, dropout)


# --text-tower name -> its class (the names are the command line's, itm.models.TEXT_TOWERS).
TEXT_TOWERS = {"precomputed": TextTower, "minilm": MiniLMText, "scratch": ScratchText}


def _choose(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(registry)}")
    return registry[name]


def model_parts(m: ModelConfig) -> tuple[ImageTower, TextTower, FusionHead]:
    """The one place where the model's options (the names the command line takes) become its typed parts:
    ``--image-tower mobilenetv2 --freeze-backbone`` is ``PretrainedBackbone("mobilenetv2", freeze=True)``.
    A wrong name fails here, before anything is built."""
    head = _choose(FUSION_HEADS, "fusion head", m.fusion)()
    image_tower = _choose(IMAGE_TOWERS, "image tower", m.image_tower).from_config(m)
    text_tower = _choose(TEXT_TOWERS, "text tower", m.text_tower).from_config(m)
    return image_tower, text_tower, head


def text_input_name(model: keras.Model) -> str:
    """``text_embedding`` (a precomputed vector) or ``caption`` (raw strings): what the model reads."""
    return "caption" if "caption" in model.input else "text_embedding"


def augmentation(x, enabled: bool):
    """Random flips and shifts, active in training only (Keras' random layers are identity at inference)."""
    if not enabled:
        return x
    x = layers.RandomFlip("horizontal", name="augment_flip")(x)
    return layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", name="augment_shift")(x)


def build_image_encoder(m: ModelConfig, tower: ImageTower, head: FusionHead) -> keras.Model:
    """Pixels (B,S,S,3), 0..255 -> (B,D), or tokens (B,N,D) for a head that takes them.

    Over a frozen backbone it is two models in a row: ``image_frozen`` (pixels -> the pooled backbone
    features, or the frozen blocks' output with ``unfreeze_from``) and ``image_trained`` (the rest)."""
    pixels = keras.Input(shape=(m.image_size, m.image_size, 3), name="image_input")
    # 0..255 -> [0, 1] in float32 (under mixed precision too: the first layer that computes casts)
    x = augmentation(layers.Rescaling(1.0 / 255, dtype="float32", name="image_rescale")(pixels), m.augment)
    features, frozen_end = tower.features(x, m.dropout, tokens=head.takes_tokens)  # (B,F) or (B,N,C)
    projected = project_embeddings(features, m.num_projection_layers, m.projection_dim, m.dropout, "image_proj")
    if frozen_end is not None:  # a frozen backbone: what it computes can be cached, the rest trains
        frozen_part = keras.Model(pixels, frozen_end, name=FROZEN_PART)
        trained_part = keras.Model(frozen_end, projected, name=TRAINED_PART)
        pixels_in = keras.Input(shape=(m.image_size, m.image_size, 3), name="image_input")
        return keras.Model(pixels_in, trained_part(frozen_part(pixels_in)), name=IMAGE_ENCODER)
    return keras.Model(pixels, projected, name=IMAGE_ENCODER)


def build_text_encoder(m: ModelConfig, tower: TextTower) -> keras.Model:
    """A caption embedding (B,384), or caption strings (B,) for the towers that read them -> (B,D)."""
    if tower.reads_raw_text:
        text_input = keras.Input(shape=(), dtype="string", name="caption")  # (B,)
    else:
        text_input = keras.Input(shape=(EMBEDDING_DIM,), name="text_embedding")
    text = tower(text_input, m.dropout)  # (B,384) or (B,F)
    projected = project_embeddings(text, m.num_projection_layers, m.projection_dim, m.dropout, "text_proj")
    return keras.Model(text_input, projected, name=TEXT_ENCODER)


def build_head(head: FusionHead, image_features, text_features, dropout: float = 0.1) -> keras.Model:
    """[image features, text features] (shaped as the encoders' outputs) -> [p(match), p(no-match)] (B,2),
    float32 under mixed precision too."""
    image_in = keras.Input(shape=image_features.shape[1:], dtype=image_features.dtype, name="image_features")
    text_in = keras.Input(shape=text_features.shape[1:], dtype=text_features.dtype, name="text_features")
    return keras.Model([image_in, text_in], head(image_in, text_in, dropout), name=HEAD)


@keras.saving.register_keras_serializable(package="itm")
class ITMClassifier(keras.Model):
    """The classifier: ``head([image_encoder(image), text_encoder(text)])``, a functional Keras model that owns
    its three parts as attributes and saves them as three models of their own (``get_config``).

    Inputs ``image_input`` (B,S,S,3) float32 pixels 0..255 and ``text_embedding`` (B,384), or ``caption`` (B,)
    strings for the raw-text towers; output [p(match), p(no-match)] (B,2). Retrieval encodes each image and
    each caption once (``encode_image``, ``encode_text``) and runs only the small head per pair (``score``).
    Over a frozen backbone the image encoder is ``image_frozen`` (pixels -> what can be cached) then
    ``image_trained`` (that -> the vector)."""

    def __init__(self, image_encoder: keras.Model, text_encoder: keras.Model, head: keras.Model, **kwargs):
        image_input = keras.Input(shape=image_encoder.input.shape[1:], name="image_input")
        text_name = text_encoder.input.name
        text_input = keras.Input(shape=text_encoder.input.shape[1:], dtype=text_encoder.input.dtype, name=text_name)
        outputs = head([image_encoder(image_input), text_encoder(text_input)])
        super().__init__(inputs={"image_input": image_input, text_name: text_input}, outputs=outputs, **kwargs)
        self.image_encoder, self.text_encoder, self.head = image_encoder, text_encoder, head

    def encode_image(self, pixels, training=False):
        """Pixels (B,S,S,3), 0..255 -> image features (B,D), or tokens (B,N,D) for the attention head."""
        return self.image_encoder(pixels, training=training)

    def encode_text(self, text, training=False):
        """Caption embeddings (B,384), or caption strings (B,) for the raw-text towers -> text features (B,D)."""
        return self.text_encoder(text, training=training)

    def score(self, image_features, text_features, training=False):
        """[p(match), p(no-match)] (B,2) of image features row b with text features row b."""
        return self.head([image_features, text_features], training=training)

    def _image_part(self, name: str) -> keras.Model:
        if name not in {layer.name for layer in self.image_encoder.layers}:
            raise ValueError("this model's image encoder has no frozen part: build it with a frozen backbone "
                             "(freeze_backbone=True)")
        return self.image_encoder.get_layer(name)

    @property
    def image_frozen(self) -> keras.Model:
        """The image encoder's frozen part over a frozen backbone: its pooled features, or, when its top blocks
        train (--unfreeze-from), the output of the blocks before. Its output depends on the photo alone, so
        it can be computed once and cached (--cache-features); ValueError without a frozen backbone."""
        return self._image_part(FROZEN_PART)

    @property
    def image_trained(self) -> keras.Model:
        """The rest of the image encoder after ``image_frozen``: what trains on cached features."""
        return self._image_part(TRAINED_PART)

    def flat_layers(self, part: keras.Model | None = None) -> list:
        """The layers of ``part`` (by default the whole classifier), each of the classifier's own parts
        opened down to the towers' layers (a pretrained backbone counts as one): as the flat layout of itm 0.2
        held them."""
        own = {id(layer) for layer in self.image_encoder.layers if layer.name in (FROZEN_PART, TRAINED_PART)}
        own |= {id(self.image_encoder), id(self.text_encoder), id(self.head)}
        out = []
        for layer in (self if part is None else part).layers:
            out.extend(self.flat_layers(layer) if id(layer) in own else [layer])
        return out

    def get_config(self):
        return {"name": self.name, **{part: keras.saving.serialize_keras_object(getattr(self, part))
                                      for part in PART_NAMES}}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        parts = {part: keras.saving.deserialize_keras_object(config.pop(part), custom_objects=custom_objects)
                 for part in PART_NAMES}
        return cls(**parts, **config)


def build_model(model: ModelConfig | None = None, **options) -> ITMClassifier:
    """Build the classifier that ``model`` (the model part of a run's options) describes, or its options given as
    keywords (``build_model(image_size=64, fusion="mlp")``); the defaults are the original's (6,529,570
    parameters at 224x224)."""
    unknown = sorted(set(options) - set(ModelConfig.leaves()))
    if unknown or (model is not None and options):
        raise TypeError(f"build_model() takes a ModelConfig or its options, not {', '.join(unknown) or 'both'}")
    m = ModelConfig.from_flat(options) if model is None else model
    image_tower, text_tower, head = model_parts(m)
    image_encoder = build_image_encoder(m, image_tower, head)
    text_encoder = build_text_encoder(m, text_tower)
    head = build_head(head, image_encoder.output, text_encoder.output, m.dropout)
    return ITMClassifier(image_encoder, text_encoder, head, name="itm_classifier")


def _check_registry(registry: dict, names: tuple, kind: str) -> None:
    """The classes here hold exactly the names that itm.models offers the command line (which cannot import
    them: ``itm --help`` imports no TensorFlow)."""
    if tuple(registry) != names:
        raise RuntimeError(f"the {kind} classes {tuple(registry)} and itm.models' names {names} differ")


_check_registry(IMAGE_TOWERS, IMAGE_TOWER_NAMES, "image tower")
_check_registry(TEXT_TOWERS, TEXT_TOWER_NAMES, "text tower")
_check_registry(FUSION_HEADS, FUSION_HEAD_NAMES, "fusion head")
