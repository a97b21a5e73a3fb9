"""The run folder: its policy (what a new, a finished and an interrupted run folder allow), and the one
reader of a run folder (``SavedRun``: its options, its dev-calibrated threshold, its model).

* A run writes only into a new or empty folder, or one of its own (``itm.output_folder``: the folder's
  record, ``.itm-folder.json``, names every file the run wrote; a run folder of before the record is known
  by its ``config.json`` and ``model.keras``, or an interrupted run's ``backup/state.json``). Any other
  folder is refused, ``--overwrite`` or not; so is one inside the data folder the run reads.
* A folder holding a finished run (``model.keras`` and ``metrics.json``) is refused unless
  ``--overwrite`` is given; then the files the earlier run recorded are removed first, nothing else.
* A folder holding an interrupted run (``backup/state.json``) resumes it, but only with the options it
  was started with: any difference is refused before anything is written. One whose model.keras was
  saved but whose evaluation did not finish is completed from that model, not trained again.
* One run writes into a folder at a time (``itm.training.run_lock``).
* A path that is a file, or a folder that cannot be written, is refused before the data is checked;
  the folder itself is made only once the data has passed its check.
"""
from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from .. import output_folder
from ..errors import ConfigError, DataError
from ..models.run_reader import SavedRun, saved_config  # noqa: F401 (SavedRun: also read from here)
from ..run_files import BACKUP_DIR, RUN
from .run_lock import LOCK_NAME

# Options that may differ when an interrupted run is started again.
RESTART_MAY_CHANGE = ("output_dir", "overwrite")


def default_output_dir(preset: str) -> Path:
    return Path("runs") / f"{preset}-{datetime.now():%Y%m%d-%H%M%S}"


def is_finished(out: Path) -> bool:
    return (out / "model.keras").is_file() and (out / "metrics.json").is_file()


def is_trained(out: Path) -> bool:
    """model.keras saved (whole: it is written under another name and renamed), its evaluation not finished."""
    return (out / "model.keras").is_file() and not (out / "metrics.json").is_file() and (out / "config.json").is_file()


def is_interrupted(out: Path) -> bool:
    """A run to resume (its backup) or to complete (its model saved, not yet evaluated)."""
    return (out / BACKUP_DIR / "state.json").is_file() or is_trained(out)


def check_writable(out: Path) -> None:
    """Refuse a path that is (or lies inside) a file, or that this process cannot write into, before any
    long work; nothing is created yet (a data folder that fails its check leaves no run folder behind)."""
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == out else f"lies inside {existing}, which is a file"
        raise DataError(f"--output-dir {out} {what}, not a folder: choose another --output-dir")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise DataError(f"cannot write the run folder {out}: no file can be created in {existing} "
                        f"({e.strerror or e}); choose another --output-dir") from None


def check_restart(out: Path, config: dict) -> None:
    """An interrupted run resumes only with the options it was started with."""
    saved = saved_config(out)
    changed = [f"--{k.replace('_', '-')} was {saved.get(k)!r}, now {v!r}" for k, v in config.items()
               if k not in RESTART_MAY_CHANGE and saved.get(k) != v]
    if changed:
        raise ConfigError(f"{out} holds an interrupted run started with other options ({'; '.join(changed)}): "
                          "start it again with its own options to resume it, pass --overwrite to start afresh, "
                          "or choose another --output-dir")


def check_output_dir(out: Path) -> bool:
    """Refuse a folder a run may not write (``itm.output_folder``), before anything is written into it;
    True when it holds a run (finished, interrupted, or started)."""
    check_writable(out)
    return output_folder.check(out, RUN, "--output-dir", "--overwrite", ignore=(LOCK_NAME,))


def check_not_in_data(out: Path, data_dir: Path) -> None:
    """A run never writes into the data folder it reads."""
    if output_folder.inside(out, data_dir):
        where = "is" if Path(out).resolve() == Path(data_dir).resolve() else "lies inside"
        raise ConfigError(f"--output-dir {out} {where} the data folder {data_dir}: a run never writes into the data "
                          "it reads; choose another --output-dir")


def open_run_folder(out: Path, overwrite: bool) -> bool:
    """Apply the policy to ``out``; True when it holds an interrupted run to resume."""
    own = check_output_dir(out)
    if overwrite:
        if own:
            output_folder.clear(out, RUN)
        return False
    if is_finished(out):
        raise ConfigError(f"{out} holds a finished run: pass --overwrite to replace it, or choose another "
                          "--output-dir")
    return is_interrupted(out)
