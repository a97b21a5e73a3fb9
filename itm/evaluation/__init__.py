"""Scoring a trained model: a split's predictions (``predict``, through ``itm.models.scorer``), metrics
that the imbalanced test split cannot fool (``metrics``), a split's evaluation with retrieval and figures
(``evaluate``, ``plots``), two-stage retrieval (``retrieval``), the run report (``report``) and the TensorBoard
logs that training writes (``tensorboard``)."""
