"""Small file helpers shared by every layer: atomic writes, checked JSON, the cache folder."""
from __future__ import annotations

import hashlib
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable

from .errors import DataError


def cache_dir() -> Path:
    """``$ITM_CACHE_DIR``, else ``~/.cache/itm``: the demo data, embedded captions, image features."""
    return Path(os.environ.get("ITM_CACHE_DIR") or Path.home() / ".cache" / "itm")


def cause(e: OSError) -> str:
    """An OSError's reason in a few words ('File too large', 'No space left on device'); h5py's own
    messages run to lines."""
    return os.strerror(e.errno) if e.errno else (e.strerror or str(e)).splitlines()[0]


def default_mode(kind: int = 0o666) -> int:
    """The mode a plain ``open`` would give a new file (``kind`` less the umask); mkstemp and mkdtemp
    make theirs private (0600, 0700), which a shared run or cache folder must not get."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return kind & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return kind & ~mask


def temp_name(path: Path) -> Path:
    """A hidden name beside ``path`` that keeps its suffixes (Keras wants '.keras', '.weights.h5')."""
    return path.with_name(f".tmp-{os.getpid()}-{os.urandom(3).hex()}-{path.name}")


@contextmanager
def written_as(path, what: str):
    """Yields a temporary path beside ``path`` for a writer that wants a file name (Keras, h5py); renamed to
    ``path`` when the block ends, removed when it fails, so ``path`` is whole or absent. A write the disk
    refuses (full, file-size limit, read-only, no permission) becomes one DataError naming path and cause."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise DataError(f"cannot write {what} {path}: {cause(e)}") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def atomic_write(path, write: Callable, what: str = "the file") -> None:
    """Write through a temp file in the same folder, then rename: a crash never leaves half a file, a
    failing disk is a DataError naming ``path`` and the cause. ``write`` gets the open binary file."""
    path = Path(path)
    with written_as(path, what) as tmp:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def write_json(path, value, what: str = "the JSON file") -> None:
    """``value`` as indented JSON, written atomically; NaN and infinity (not JSON) become null."""
    text = json.dumps(_finite(value), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), what)


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


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The file's sha256, read in blocks (a backup's weights, a split file, an embeddings file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
