"""Data: a data folder read and checked (``folder``), images (``images``), the training pipelines
(``pipelines``, their batches in ``batches`` and ``shards``), cached features (``features``), and making
data folders (``prepare``, ``embed``, ``demo``, ``ood``).

Modules here import TensorFlow inside the functions that use it, not at their top: ``itm.options`` and
the command line's parser read this package, and ``itm --help`` must not wait for TensorFlow."""
