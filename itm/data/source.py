"""Where the data comes from: --data-dir, else $ITM_DATA_DIR, else a default location, else the demo."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from .demo import ensure_demo_data, is_demo

# Where a prepared Flickr8k folder is looked for when neither --data-dir nor ITM_DATA_DIR is given:
# the original's own relative path first, then the project's data/ folder.
DEFAULT_DATA_DIRS = (Path("flickr8k.dataset-cmp9137-item1"), Path("data/flickr8k.dataset-cmp9137-item1"))


def resolve_data_dir(data_dir: str | None, given_by: str = "--data-dir") -> tuple[Path, str]:
    """Pick the data folder: --data-dir, else $ITM_DATA_DIR, else a default location, else the demo.

    Returns the folder and a line saying where it came from (``given_by``: what set ``data_dir``, e.g. a
    re-run's ``--config RUN/config.json``). A folder the user named
    explicitly must exist; only the absence of any choice falls back to the demo data.
    """
    for value, origin in ((data_dir, given_by), (os.environ.get("ITM_DATA_DIR") or None, "ITM_DATA_DIR")):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise DataError(f"data folder {path} (from {origin}) does not exist")
            return path, f"Data: {path} (from {origin})"
    for path in DEFAULT_DATA_DIRS:
        if path.is_dir():
            return path, f"Data: {path} (default location)"
    path = ensure_demo_data()
    where = " or ".join(str(p) for p in DEFAULT_DATA_DIRS)
    return path, (f"Data: no Flickr8k folder configured, so using the bundled DEMO dataset at {path}\n"
                  f"      (synthetic shapes; put the prepared Flickr8k at {where}, or pass --data-dir "
                  "or set ITM_DATA_DIR; see data/README.md)")


def demo_will_be_used(data_dir: str | None) -> bool:
    """Whether ``resolve_data_dir(data_dir)`` picks the demo dataset (without generating it)."""
    chosen = data_dir or os.environ.get("ITM_DATA_DIR")
    if chosen:
        return is_demo(Path(chosen).expanduser())
    return not any(path.is_dir() for path in DEFAULT_DATA_DIRS)
