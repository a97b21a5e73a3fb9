"""itm: image-text matching on TensorFlow/Keras.

Where things are: data reading and the tf.data pipeline in ``itm.data``; the model in
``itm.model``; the original's optimizer in ``itm.optim``; training in ``itm.train``;
evaluation in ``itm.evaluate`` and ``itm.metrics``; the command line in ``itm.cli``.
"""
__version__ = "0.1.0"

from .compat import ITM_Classifier, ITM_DataLoader  # noqa: E402,F401
