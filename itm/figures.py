"""matplotlib's pyplot for itm's figures (the Agg backend: files, no window), imported on the first figure, the
one place itm imports it: it takes as long to import as the rest of itm; and the one place the test suite's
switch for figures is read."""
import os

FIGURES_SWITCH = "ITM_FIGURES"  # "0": no figures (the test suite's switch, docs/testing.md; not a user option)


def wanted() -> bool:
    """Whether runs and evaluations draw their figures (PNG files, and the same in TensorBoard): always, unless
    ``ITM_FIGURES=0``, which the test suite sets so that a tiny training does not spend ~40% of its time
    drawing figures that only the tests of the figures read (they unset it)."""
    return os.environ.get(FIGURES_SWITCH, "1") != "0"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
