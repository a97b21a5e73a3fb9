"""The folders a command writes: only one it made (or an empty one), never a user's, never its own inputs.

Every command that writes a folder (``itm train`` and ``evaluate`` into a run, ``prepare``, ``ood-split``,
``shard``, ``export``, the demo data) claims it first, as one ``Kind`` of output:

* an absent or empty folder is taken;
* a folder whose record (``MARKER``, a small JSON file: the kind, the command, the itm version and every
  name itm wrote there) names the same kind is the command's own earlier output;
* a folder of that kind written before records existed is recognised by what itm wrote there (the kind's
  ``legacy`` test) and adopted: the names the kind writes that are present become its record;
* any other folder is refused with one line naming it and the flag, before anything is written.

Names are recorded *before* they are written, so a crash never leaves an unrecorded file; ``clear``
(``--overwrite``) removes the recorded names only, so a file itm did not write is never deleted.
A single-file output (``check_new_file``) refuses an existing file unless told to overwrite it, and then
only a file of its own kind. ``check_apart`` refuses an output that is, or lies inside, one of the
command's inputs (or holds one): no command writes into the data it reads.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import DataError
from .files import write_json
from .version import __version__

MARKER = ".itm-folder.json"


@dataclass(frozen=True)
class Kind:
    """One kind of output folder: ``name`` is recorded, ``command`` and ``what`` are for messages."""
    name: str
    command: str  # the command that writes it, e.g. "itm train"
    what: str  # e.g. "a run"
    legacy: Callable[[Path], bool] | None = None  # recognises one written before the record existed
    # glob patterns of what it writes, adopted from a legacy folder (or a function of the folder giving them)
    known: tuple[str, ...] | Callable[[Path], tuple[str, ...]] = ()
    # a recorded folder that a user may also put files into: the patterns of what itm writes there (clear
    # removes those, then the folder if empty); any other recorded folder is removed whole
    contents: dict | None = None


def read_record(folder) -> dict | None:
    """The folder's record, or None when it has none; a damaged one is a DataError."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str) \
            or not isinstance(record.get("files"), list):
        raise DataError(f"{path} is not a record itm wrote (damaged?): move the folder's files elsewhere, or "
                        "choose another folder")
    return record


def _entries(folder: Path, ignore) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in ignore)


def check(folder, kind: Kind, flag: str, overwrite_flag: str | None = None, ignore: Iterable[str] = ()) -> bool:
    """Refuse ``folder`` unless ``kind`` may write it: absent, empty (names in ``ignore`` aside), or an earlier
    output of ``kind``. Returns True for an earlier output of ``kind``. Nothing is written."""
    folder = Path(folder)
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise DataError(f"{flag} {folder} is a file, not a folder: choose another {flag}")
    entries = _entries(folder, set(ignore))
    if not entries:
        return False
    record = read_record(folder)
    if record is not None:
        if record["kind"] == kind.name:
            return True
        raise DataError(f"{flag} {folder} holds the output of {record.get('command', 'another itm command')}, "
                        f"not {kind.what} of {kind.command}: choose another {flag}")
    if kind.legacy is not None and kind.legacy(folder):
        return True
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    hint = f" ({overwrite_flag} replaces only {kind.what} of {kind.command})" if overwrite_flag else ""
    raise DataError(f"{flag} {folder} is not an empty folder ({shown}) and was not written by {kind.command}: "
                    f"choose a new or empty folder{hint}")


def claim(folder, kind: Kind, flag: str, overwrite_flag: str | None = None) -> bool:
    """``check``, then make the folder and its record; returns True for an earlier output of ``kind``."""
    folder = Path(folder)
    own = check(folder, kind, flag, overwrite_flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {flag} {folder}: {e.strerror or e}") from None
    record(folder, kind)
    return own


def _adopted(folder: Path, kind: Kind) -> list[str]:
    """What a legacy folder of ``kind`` holds of the names ``kind`` writes."""
    patterns = kind.known(folder) if callable(kind.known) else kind.known
    return sorted({p.name for pattern in patterns for p in folder.glob(pattern)})


def _new_record(folder: Path, kind: Kind) -> dict:
    adopted = _adopted(folder, kind) if kind.legacy is not None and kind.legacy(folder) else []
    return {"kind": kind.name, "command": kind.command, "itm": __version__, "files": adopted}


def record(folder, kind: Kind, *names: str) -> None:
    """Record ``names`` (relative to ``folder``) as written by itm, before they are written; makes the
    record (adopting a legacy folder's names) when there is none."""
    folder = Path(folder)
    current = read_record(folder) or _new_record(folder, kind)
    files = sorted(set(current["files"]) | set(names))
    if (folder / MARKER).is_file() and files == current["files"]:
        return
    write_json(folder / MARKER, {**current, "files": files}, "the folder's record")


def recorded(folder) -> set[str]:
    """The names itm recorded in ``folder`` (empty without a record)."""
    found = read_record(folder)
    return set(found["files"]) if found else set()


def _safe(name) -> bool:
    """A recorded name that stays inside its folder (a damaged record must not reach outside)."""
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    parts = PurePosixPath(name).parts
    return not PurePosixPath(name).is_absolute() and ".." not in parts and MARKER not in parts


def clear(folder, kind: Kind) -> None:
    """Remove what itm recorded in ``folder`` (for --overwrite); nothing else in it is touched."""
    folder = Path(folder)
    current = read_record(folder) or _new_record(folder, kind)
    for name in current["files"]:
        if not _safe(name):
            continue
        path = folder / name
        if path.is_dir() and not path.is_symlink() and kind.contents and name in kind.contents:
            for pattern in kind.contents[name]:
                for inner in path.glob(pattern):
                    if inner.is_file() or inner.is_symlink():
                        inner.unlink(missing_ok=True)
            try:
                path.rmdir()
            except OSError:
                pass  # the user's files in it stay
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    write_json(folder / MARKER, {**current, "files": []}, "the folder's record")


def inside(path, folder) -> bool:
    """``path`` is ``folder`` or lies inside it (both resolved: links and ``..`` followed)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_apart(outputs: dict[str, object], inputs) -> None:
    """Refuse an output that is, or lies inside, an input, or that holds an input; and two outputs that
    overlap. ``outputs`` maps each flag to its path, ``inputs`` too (or is (flag, path) pairs, for a flag
    given several times); None: not given."""
    given_out = {flag: Path(p) for flag, p in outputs.items() if p is not None}
    pairs = list(inputs.items() if isinstance(inputs, dict) else inputs)
    for flag, out in given_out.items():
        for other, path in pairs:
            if path is None:
                continue
            if inside(out, path):
                raise DataError(f"{flag} {out} is {other} {path}" + ("" if Path(out).resolve() == Path(path).resolve()
                                                                      else " or lies inside it")
                                + f": a command never writes over what it reads; choose another {flag}")
            if inside(path, out):
                raise DataError(f"{other} {path} lies inside {flag} {out}: a command never writes over what it "
                                f"reads; choose another {flag}")
    flags = list(given_out)
    for i, a in enumerate(flags):
        for b in flags[i + 1:]:
            if inside(given_out[a], given_out[b]) or inside(given_out[b], given_out[a]):
                raise DataError(f"{a} {given_out[a]} and {b} {given_out[b]} are the same folder (or one holds the "
                                f"other): give each its own folder")


def check_new_file(path, flag: str, overwrite: bool, is_own: Callable[[Path], bool], what: str) -> None:
    """A single-file output: an existing file is refused unless ``overwrite``, and then unless it is
    ``what`` (``is_own``), so --overwrite never replaces a file of another kind."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{flag} {path} is a folder: give a file name")
    if not path.exists():
        return
    if not overwrite:
        raise DataError(f"{flag} {path} exists: pass --overwrite to replace it, or choose another {flag}")
    if not is_own(path):
        raise DataError(f"{flag} {path} is not {what}: --overwrite replaces only that; choose another {flag}")
