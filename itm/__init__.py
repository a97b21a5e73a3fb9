"""itm: image-text matching on TensorFlow/Keras.

Where things are: data reading and the tf.data pipeline in ``itm.data``; the model in
``itm.model``; the original's optimizer in ``itm.optim``; training in ``itm.train``;
evaluation in ``itm.evaluate`` and ``itm.metrics``; the command line in ``itm.cli``.
"""
__version__ = "0.1.0"

from .compat import ITM_Classifier, ITM_DataLoader  # noqa: E402,F401


def __getattr__(name):
    """``itm.Matcher`` on first use, so that ``import itm`` does not import TensorFlow."""
    if name == "Matcher":
        from .inference import Matcher

        return Matcher
    raise AttributeError(f"module 'itm' has no attribute {name!r}")
