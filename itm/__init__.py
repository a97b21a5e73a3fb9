"""itm: image-text matching on TensorFlow/Keras.

Where things are: a data folder and the training pipelines in ``itm.data``; the model library (the
classifier, text encoders, pretrained weights, the original's optimizer) in ``itm.models``; every
training option and preset in ``itm.options``; training in ``itm.training``; scoring and reports in
``itm.evaluation``; ``itm.Matcher`` and the web app in ``itm.serving``; the command line in ``itm.cli``.
"""
__version__ = "0.2.0"  # the one place: pyproject.toml, `itm --version` and the web API read it

from .compat import ITM_Classifier, ITM_DataLoader  # noqa: E402,F401


def __getattr__(name):
    """``itm.Matcher`` on first use, so that ``import itm`` does not import TensorFlow."""
    if name == "Matcher":
        from .serving.matcher import Matcher

        return Matcher
    raise AttributeError(f"module 'itm' has no attribute {name!r}")
