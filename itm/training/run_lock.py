"""One writer per run folder: ``itm train`` holds ``RUN/.itm-train.lock`` for as long as it runs.

The hold is an ``flock`` on that file, which names its holder (pid, host, start time). The kernel drops
the hold when the process ends however it ends, so a second run into a live run's folder is refused
(naming the holder), while a file left by a killed run is only a record: the next run takes it over and
says so. (``flock`` is per machine; on a shared network folder two hosts are told apart by the host
name in the file only where the file system passes locks on.)
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import DataError

LOCK_NAME = ".itm-train.lock"


def _holder(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (it wrote no name)"
    since = holder.get("started")
    return (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}"
            + (f" (started {since})" if since else ""))


class RunLock:
    """Hold ``out`` for this process: ``with RunLock(out): ...``. Creates ``out`` if needed; on release the
    lock file goes, and so do the folders this hold made, when nothing else was written into them."""

    def __init__(self, out, log=None):
        self.out, self.path, self.log = Path(out), Path(out) / LOCK_NAME, log  # None: the sys.stdout of the moment
        self.fd: int | None = None
        self.made: list[Path] = []

    def acquire(self) -> RunLock:
        missing = []
        folder = self.out
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the run folder {self.out}: {e.strerror or e}") from None
        self.made = missing  # innermost first
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                self._remove_made()
                raise DataError(f"cannot create the lock file {self.path}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DataError(f"{self.out} is being written by another 'itm train': {_describe(_holder(self.path))}; "
                                "wait for it to finish, or choose another --output-dir") from None
            try:  # the file may have been removed by its last holder between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        stale = _holder(self.path)
        if stale:
            print(f"note: taking over {self.out} from {_describe(stale)}, which has ended without releasing it",
                  file=self.log or sys.stdout, flush=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: no one can be handed a file that is going
        finally:
            os.close(self.fd)
            self.fd = None
        self._remove_made()

    def _remove_made(self) -> None:
        for folder in self.made:  # only empty ones: a run that wrote anything keeps its folder
            try:
                folder.rmdir()
            except OSError:
                break
        self.made = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
