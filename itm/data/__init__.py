"""Data: a data folder read and checked (``folder``), images (``images``), the training pipelines
(``batches``, ``shards``), and making data folders (``prepare``, ``embed``, ``demo``, ``ood``)."""
