"""The training harness: ``run.train`` (one run, one folder), the step every objective shares
(``trainer.Trainer``), what runs around it (``callbacks``), the run folder's policy (``run_folder``),
multi-worker training (``multiworker``) and speed measurements (``bench``)."""
