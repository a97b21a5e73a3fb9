"""What a run folder holds, and the record of it (``itm.output_folder``): the names a run and its evaluations
write, how a run folder of before the record is known, and ``record``, which both the training run
(``itm.training.run_folder``) and an evaluation (``itm.evaluation.evaluate``) call before they write.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import output_folder

TENSORBOARD_DIR = "tensorboard"  # in every run folder: tensorboard --logdir runs
TITLE = "# Model card: "  # its first line, by which a card of a run of before the folder record is known

BACKUP_DIR = "backup"  # the epoch-end backup (itm.training.callbacks.EpochBackup)
BACKUP_FILES = ("state.json", "epoch*.weights.h5", ".tmp-*")  # what it writes there (nothing else is removed)

# What a run writes into its folder: recorded as it starts (its evaluations record theirs), removed by
# --overwrite; the names a run folder of before the record is taken to hold (README.md: a model card only).
RUN_FILES = ("model.keras", "model.json", "metrics.json", "config.json", "calibration.json", "history.csv", "history.png",
             "predictions.tsv", "report.md", "environment.json", "README.md")
RUN_PATTERNS = ("metrics-*.json", "predictions-*.tsv", "roc-pr-*.png", "scores-*.png", "confusion-*.png",
                "samples-*.png")


def _itm_json(path: Path, keys) -> bool:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(value, dict) and all(k in value for k in keys)


def is_legacy_run(out: Path) -> bool:
    """A run folder written before the folder record: a model and the options itm records beside it, or an
    interrupted run's backup state."""
    return ((out / "model.keras").is_file() and (_itm_json(out / "config.json", ("preset", "data_dir", "seed"))
                                                 or _itm_json(out / "metrics.json", ("config", "parameters")))
            or _itm_json(out / BACKUP_DIR / "state.json", ("epoch", "weights", "history")))


def _legacy_names(out: Path) -> tuple[str, ...]:
    """What a legacy run folder holds of a run's names; its README.md only when it is a model card."""
    is_card = not (out / "README.md").exists() or _is_card(out / "README.md")
    return tuple(n for n in RUN_FILES if n != "README.md" or is_card) + RUN_PATTERNS + (BACKUP_DIR, TENSORBOARD_DIR)


def _is_card(path: Path) -> bool:
    try:
        return path.read_text(encoding="utf-8", errors="replace").startswith(TITLE)
    except OSError:
        return False


RUN = output_folder.Kind("run", "itm train", "a run", legacy=is_legacy_run, known=_legacy_names,
                         contents={BACKUP_DIR: BACKUP_FILES})


def record(out: Path, *names: str) -> None:
    """Record names the run is about to write into ``out`` (removed by a later --overwrite)."""
    output_folder.record(out, RUN, *names)


def record_run(out: Path) -> None:
    """Record what a run writes, before it writes it: its files, backup and TensorBoard log; README.md only
    where no other README is in the way (a user's own README in an adopted folder is never recorded)."""
    names = [n for n in RUN_FILES if n != "README.md"] + [BACKUP_DIR, TENSORBOARD_DIR]
    readme = out / "README.md"
    if not readme.exists() or "README.md" in output_folder.recorded(out) or _is_card(readme):
        names.append("README.md")
    record(out, *names)
