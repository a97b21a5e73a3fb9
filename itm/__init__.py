"""itm: image-text matching on TensorFlow/Keras.

Where things are: a data folder and the training pipelines in ``itm.data``; the model library (the
classifier, text encoders, pretrained weights, the original's optimizer) in ``itm.models``; every
training option and preset in ``itm.options``; training in ``itm.training``; scoring and reports in
``itm.evaluation``; ``itm.Matcher`` and the web app in ``itm.serving``; the command line in ``itm.cli``.
"""
from .version import __version__  # noqa: F401 (written in itm/version.py, the one place)
from . import tfenv

# Before anything imports TensorFlow: oneDNN on (TensorFlow leaves it off on CPUs without AVX-512) and its C++
# log quiet, each unless the user set it (itm.tfenv).
tfenv.prepare()

from .models.keras_registry import register_when_keras_loads  # noqa: E402

# After ``import itm``, keras.saving.load_model loads any run's model.keras (safe mode on); Keras itself
# is not imported here, so the command line starts at once.
register_when_keras_loads()


def load(run_dir, data_dir=None, encoder=None):
    """A trained run, ready to score: ``itm.load("runs/best-cpu-...")`` returns an ``itm.Matcher``.

    The run folder alone is enough (it may have been moved or copied); captions missing from the run's
    data folder are embedded by the TensorFlow all-MiniLM-L6-v2. Arguments as ``Matcher.load``'s."""
    return __getattr__("Matcher").load(run_dir, data_dir=data_dir, encoder=encoder)


def __getattr__(name):
    """``itm.Matcher``, ``itm.ITM_Classifier`` and ``itm.ITM_DataLoader`` on first use: their modules import
    TensorFlow at their top, and ``import itm`` does not (the one place in itm where attributes wait)."""
    if name == "Matcher":
        from .serving.matcher import Matcher

        return Matcher
    if name in ("ITM_Classifier", "ITM_DataLoader"):
        from . import compat

        return getattr(compat, name)
    raise AttributeError(f"module 'itm' has no attribute {name!r}")
