"""matplotlib's pyplot for itm's figures (the Agg backend: files, no window), imported on the first figure, the
one place itm imports it: it takes as long to import as the rest of itm."""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
