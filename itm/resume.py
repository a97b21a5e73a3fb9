"""Surviving interruption: an epoch-end backup in the run folder, picked up by a restart.

``keras.callbacks.BackupAndRestore`` does this for ``fit``; ``EpochBackup`` does the same for
the custom image-grouped loops. Both keep the model's and the optimizer's state, so a run
killed at any moment and started again with the same ``--output-dir`` finishes with the
same number of optimizer steps as an uninterrupted one (the unfinished epoch is redone).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

BACKUP_DIR = "backup"


class EpochBackup:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / BACKUP_DIR
        self.meta = self.dir / "state.json"

    def restore(self, model) -> tuple[int, dict]:
        """Load the last backup into ``model`` (and its optimizer); return (epochs done, history so far)."""
        if not self.meta.is_file():
            return 0, {}
        state = json.loads(self.meta.read_text())
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.dir / state["weights"])
        print(f"Resuming from the backup in {self.dir}: {state['epoch']} epoch(s) already done", flush=True)
        return state["epoch"], state["history"]

    def save(self, model, epoch: int, history: dict) -> None:
        """Write this epoch's weights under a new name, then switch the state to them by an atomic rename,
        so a kill at any instant leaves a state and the weights it names."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"epoch{epoch}.weights.h5"
        model.save_weights(self.dir / name)
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps({"epoch": epoch, "weights": name, "history": history}))
        os.replace(tmp, self.meta)
        for old in self.dir.glob("epoch*.weights.h5"):
            if old.name != name:
                old.unlink()

    def finish(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- for keras fit, whose BackupAndRestore keeps the weights but not the history of earlier epochs

    def history(self) -> dict:
        path = self.dir / "fit_history.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def history_saver(self, earlier: dict):
        """A callback that keeps every finished epoch's logs in the backup folder."""
        import keras

        backup = self

        class HistorySaver(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.done = dict(earlier)

            def on_epoch_end(self, epoch, logs=None):
                for k, v in (logs or {}).items():
                    self.done.setdefault(k, [])
                    self.done[k] = self.done[k][:epoch] + [float(v)]
                backup.dir.mkdir(parents=True, exist_ok=True)
                tmp = backup.dir / "fit_history.json.tmp"
                tmp.write_text(json.dumps(self.done))
                os.replace(tmp, backup.dir / "fit_history.json")

        return HistorySaver()
