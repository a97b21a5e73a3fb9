"""A finished run folder, read in one place: its options (``config.json``, else the copy in
``metrics.json``), its dev-calibrated threshold (``calibration.json``) and its model. Light on purpose
(no Keras until a model is loaded), so that the command line can import it; training, the ``Matcher``,
``itm evaluate`` and ``itm export`` all read runs through it."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..files import finite_number, read_json


def saved_config(out: Path) -> dict:
    """The options a run was started with: config.json (written as it starts), else the copy in metrics.json
    (written at its end; runs of before config.json); a damaged file is a DataError."""
    out = Path(out)
    if (out / "config.json").is_file() or not (out / "metrics.json").is_file():
        return read_json(out / "config.json", "run file")
    config = read_json(out / "metrics.json", "run file").get("config", {})
    if not isinstance(config, dict):
        raise DataError(f"{out / 'metrics.json'} does not hold the run's options (its 'config' is damaged)")
    return config



class SavedRun:
    """A trained run folder, read: ``config`` (the options it was trained with), ``threshold()`` and
    ``load_model()``. ``finished``: also its metrics.json, which training writes at its very end."""

    def __init__(self, path, finished: bool = False):
        self.path = Path(path)
        self.model_path = self.path / "model.keras"
        if not self.model_path.is_file() or (finished and not (self.path / "metrics.json").is_file()):
            expected = "model.keras and metrics.json" if finished else "model.keras"
            raise DataError(f"{self.path} is not a run folder (expected {expected} from 'itm train')")
        has_config = (self.path / "config.json").is_file() or (self.path / "metrics.json").is_file()
        self.config = saved_config(self.path) if has_config else {}

    @property
    def data_dir(self) -> str | None:
        """The data folder the run was trained on, as its options name it."""
        return self.config.get("data_dir") or None

    def threshold(self) -> tuple[float, str]:
        """The run's dev-calibrated threshold (calibration.json), else 0.5; a damaged file is an error."""
        path = self.path / "calibration.json"
        if not path.is_file():
            return 0.5, "default 0.5 (the run has no calibration.json; 'itm evaluate' writes one)"
        calibration = read_json(path, "calibration file")
        if "threshold" not in calibration:
            raise DataError(f"calibration file {path} has no 'threshold'; run 'itm evaluate --run {self.path}' to "
                            "write it again")
        threshold = finite_number(calibration["threshold"], f"the threshold in {path}", 0.0, 1.0)
        return threshold, f"dev-calibrated {threshold:.3f} (calibration.json)"

    def load_model(self):
        """The trained classifier (``itm.models.load_keras``: a run of an earlier layout is converted)."""
        from .load_keras import load_model  # Keras: only when a model is wanted

        return load_model(self.model_path, self.config)
