"""The faithful model's structure, size and save/load round trip."""
import keras
import numpy as np

from itm.model import OUTPUT_NAME, build_model


def _layers_of(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def test_faithful_parameter_count_and_layers():
    model = build_model()
    assert model.count_params() == 6_529_570
    convs = _layers_of(model, keras.layers.Conv2D)
    assert [(c.filters, c.kernel_size, c.padding, c.activation.__name__) for c in convs] == [
        (16, (3, 3), "same", "relu"), (32, (3, 3), "same", "relu"), (64, (3, 3), "same", "relu")]
    assert len(_layers_of(model, keras.layers.MaxPooling2D)) == 3
    assert model.get_layer("image_flatten").output.shape == (None, 28 * 28 * 64)
    dense = {layer.name: layer.units for layer in _layers_of(model, keras.layers.Dense)}
    assert dense == {"image_proj_dense": 128, "image_proj_block_0_dense": 128, "text_proj_dense": 128,
                     "text_proj_block_0_dense": 128, OUTPUT_NAME: 2}
    assert len(_layers_of(model, keras.layers.LayerNormalization)) == 2
    assert {d.rate for d in _layers_of(model, keras.layers.Dropout)} == {0.1}
    assert len(_layers_of(model, keras.layers.Dropout)) == 4
    assert model.get_layer("fusion_concat").output.shape == (None, 256)
    assert model.get_layer(OUTPUT_NAME).activation.__name__ == "softmax"
    assert sorted(model.input.keys()) == ["image_input", "text_embedding"]


def test_outputs_are_probabilities():
    model = build_model(image_size=32)
    x = {"image_input": np.random.rand(4, 32, 32, 3).astype("float32"),
         "text_embedding": np.random.rand(4, 384).astype("float32")}
    p = model.predict(x, verbose=0)
    assert p.shape == (4, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_component_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="unknown fusion head 'nope'; choose from concat"):
        build_model(fusion="nope")
