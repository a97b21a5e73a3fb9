"""A saved classifier (a run's ``model.keras``), loaded with itm's layers registered.

Every run loads as an ``ITMClassifier``. Older ones are converted as they load (the file itself is left as
it is): runs saved by itm 0.2 and before hold the classifier as one flat graph (the image encoder, text
encoder and head not yet models of their own, and pixels scaled to [0, 1] before the model), so the
classifier is built from the run's options (its config.json) and each layer's weights are copied into the
layer of the same name; runs saved before the class (up to f04bf50) hold a plain functional model of the
three named parts, which the class takes over as they are, with the model's optimizer.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import keras

from ..errors import DataError
from .config import ModelConfig
from . import classifier, optim  # noqa: F401  (optim registers the saved optimizer)

MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


def _read(path: Path):
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a saved Keras model (not a .keras zip archive); train the run again")
    try:
        return keras.saving.load_model(path)
    except Exception as e:  # Keras raises many kinds (ValueError, KeyError, TypeError, OSError) for a bad archive
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot load {path} (damaged, or saved by an incompatible version of itm): {first}") from None


def is_flat_layout(model: keras.Model) -> bool:
    """True for a classifier saved before it was built from an image encoder, a text encoder and a head."""
    return classifier.IMAGE_ENCODER not in {layer.name for layer in model.layers}


def load_model(path, config: dict | None = None) -> classifier.ITMClassifier:
    """``path`` (a ``model.keras``) as the classifier; a flat one is converted with the help of ``config``,
    the options its run was trained with. A damaged file is a DataError."""
    path = Path(path)
    model = _read(path)
    if isinstance(model, classifier.ITMClassifier):
        return model
    if is_flat_layout(model):
        return from_flat_layout(model, config or {}, path)
    return from_parts_layout(model)


def from_parts_layout(old: keras.Model) -> classifier.ITMClassifier:
    """The classifier made of the parts (the same layers and weights) of ``old``, a plain functional model of
    the three named parts, compiled as ``old`` was, with its optimizer."""
    new = classifier.ITMClassifier(*(old.get_layer(name) for name in classifier.PART_NAMES), name=old.name)
    if getattr(old, "compiled", False):
        settings = keras.saving.deserialize_keras_object(old.get_compile_config())
        new.compile(**{**settings, "optimizer": old.optimizer})
    return new


def from_flat_layout(old: keras.Model, config: dict, what) -> classifier.ITMClassifier:
    """The three-part classifier with the weights of ``old``, a flat one trained with options ``config``."""
    retrain = f"{what} was saved by an earlier version of itm in a layout that cannot be converted"
    if "image_size" not in config:
        raise DataError(f"{retrain}: its run has no config.json naming its options; train the run again")
    model = ModelConfig.from_json(config)  # its model part (config.json is flat)
    if model.image_weights == "imagenet":
        model = model.replace(image_weights="none")  # the same network; its weights come from the saved model
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config["precision"] if config.get("precision") in MIXED_POLICIES
                                            else "float32")  # each layer's dtype as it was trained
    try:
        new = classifier.build_model(model)
    except Exception as e:  # e.g. its pretrained weights or text model are no longer installed
        raise DataError(f"{retrain} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                        "train the run again") from None
    finally:
        keras.mixed_precision.set_global_policy(before)
    target = {layer.name: layer for layer in new.flat_layers()}
    for layer in old.layers:
        if not layer.weights:
            continue
        into = target.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if into is None or [tuple(w.shape) for w in into.weights] != shapes:
            raise DataError(f"{retrain} (its layer {layer.name!r} has no counterpart); train the run again")
        into.set_weights(layer.get_weights())
    if new.count_params() != old.count_params():
        raise DataError(f"{retrain} ({old.count_params():,} parameters, rebuilt {new.count_params():,}); "
                        "train the run again")
    return new
