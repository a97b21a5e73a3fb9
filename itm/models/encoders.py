"""The sentence encoders that embed captions, and where their weights are.

Two backends compute the same all-MiniLM-L6-v2 embedding (384-d, L2-normalised): ``tf``, itm's own
Keras encoder (``itm.models.minilm``, needs tensorflow-text and a local model folder, no torch), and
``sentence-transformers``, the reference (an optional extra that pulls in torch). An encoder is a
callable ``list[str] -> float32 [n, 384]``. Nothing here downloads weights except sentence-transformers
given a hub name.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np

from ..defaults import BACKENDS, EMBED_BATCH_SIZE as DEFAULT_BATCH_SIZE
from ..errors import DataError, MissingExtra
from .minilm import tf_encoder
from .minilm_files import default_model_path

Encoder = Callable[[list[str]], np.ndarray]
INSTALL_HINT = "pip install '.[embed]'  (sentence-transformers and torch; several GB)"


def require_sentence_transformers() -> None:
    """Fail before any long work starts, not after it, when the extra is missing."""
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


def sentence_transformers_encoder(model: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> Encoder:
    """all-MiniLM-L6-v2 (or ``model``) through sentence-transformers: ``encode()``'s normalised output."""
    st = load_sentence_transformer(model)

    def encode(captions: list[str]) -> np.ndarray:
        return np.asarray(st.encode(captions, batch_size=batch_size, convert_to_numpy=True,
                                    show_progress_bar=False), dtype=np.float32)
    return encode


def default_backend() -> str:
    """tf (itm's own TensorFlow all-MiniLM-L6-v2, at parity) where tensorflow-text is installed."""
    return "tf" if importlib.util.find_spec("tensorflow_text") else "sentence-transformers"


def make_encoder(backend: str | None = None, model: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> Encoder:
    backend = backend or default_backend()
    if backend == "tf":
        return tf_encoder(model, batch_size)
    if backend == "sentence-transformers":
        return sentence_transformers_encoder(model, batch_size)
    raise DataError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def find_encoder() -> tuple[Encoder | None, str]:
    """The encoder for new captions, as ``(encoder or None, why none, naming the backend)``: the TensorFlow
    all-MiniLM-L6-v2 first, then sentence-transformers."""
    reasons = []
    try:
        encoder = tf_encoder()
        encoder.backend = "itm's TensorFlow all-MiniLM-L6-v2"
        return encoder, ""
    except (DataError, ImportError) as e:  # no local model folder, no tensorflow-text
        reasons.append(f"TensorFlow encoder: {e}")
    if importlib.util.find_spec("sentence_transformers") is not None:
        encoder = sentence_transformers_encoder()
        encoder.backend = "sentence-transformers all-MiniLM-L6-v2"
        return encoder, ""
    reasons.append("sentence-transformers: not installed")
    return None, "; ".join(reasons)
