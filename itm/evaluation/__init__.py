"""Scoring a trained model: the one prediction path (``predict``), metrics that the imbalanced test split
cannot fool (``metrics``), a split's evaluation with retrieval and figures (``evaluate``, ``plots``) and
the run report (``report``)."""
