"""Scoring a trained model: a split's predictions (``predict``, through ``itm.models.scorer``), metrics
that the imbalanced test split cannot fool (``metrics``), a split's evaluation with retrieval and figures
(``evaluate``, ``plots``) and the run report (``report``)."""
