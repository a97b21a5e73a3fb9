"""Make ``import itm`` enough for ``keras.saving.load_model`` to load any run's ``model.keras``.

A saved model names its custom layers ``itm>FusedBatchNormalization``, ``itm>SentenceEncoder``, ...;
Keras finds them only in its registry, which the modules defining them fill when imported (Keras
imports a class by its module path only for its own packages). Importing those modules means
importing Keras and TensorFlow (seconds), which ``itm --help`` and ``import itm`` must not pay. So
``import itm`` calls ``register_when_keras_loads``: if Keras is already imported the classes are
registered now; otherwise a one-shot import hook registers them the moment Keras finishes importing,
whichever code imports it (``import keras``, ``tf.keras``, or itm itself).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# The modules whose import registers itm's Keras objects (layers, functions, the optimizer and schedule).
MODULES = ("itm.models.classifier", "itm.models.image_towers", "itm.models.fusion_heads", "itm.models.optim",
           "itm.models.tokenizer", "itm.models.minilm")


def register_custom_objects() -> None:
    """Import every module that registers an itm class with Keras (importing Keras if it is not yet)."""
    for name in MODULES:
        importlib.import_module(name)


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the top-level ``keras`` package so that, once that
    package has run, itm's classes are registered; then removes itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the search below from finding this finder
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register_custom_objects()

        loader.exec_module = exec_then_register
        return spec


def register_when_keras_loads() -> None:
    """Register itm's Keras classes now if Keras is imported, else as soon as it is."""
    if "keras" in sys.modules:
        register_custom_objects()
    elif not any(isinstance(f, _AfterKerasImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasImport())

