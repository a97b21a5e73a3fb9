"""Small file helpers shared by every layer: atomic writes, checked JSON, the cache folder."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from collections.abc import Callable

from .errors import DataError


def cache_dir() -> Path:
    """``$ITM_CACHE_DIR``, else ``~/.cache/itm``: the demo data, embedded captions, image features."""
    return Path(os.environ.get("ITM_CACHE_DIR") or Path.home() / ".cache" / "itm")


def atomic_write(path, write: Callable) -> None:
    """Write through a temp file in the same folder, then rename: a crash never leaves half a file.

    ``write`` gets the open binary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, value) -> None:
    """``value`` as indented JSON, written atomically; NaN and infinity (not JSON) become null."""
    text = json.dumps(_finite(value), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_json(path, what: str) -> dict:
    """A JSON object from ``path``; a missing, unreadable or malformed file is a DataError naming ``what``."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except FileNotFoundError:
        raise DataError(f"{what} {path} is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {getattr(e, 'strerror', None) or e}") from None
    except ValueError as e:
        raise DataError(f"{what} {path} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise DataError(f"{what} {path} must hold a JSON object, not a {type(value).__name__}")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def finite_number(value, what: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float within [low, high], else a DataError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{what} must be a finite number, not {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise DataError(f"{what} must lie in [{low}, {high}], not {value!r}")
    return float(value)
