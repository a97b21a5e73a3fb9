"""Shared by the inference, serve and browser tests: one tiny trained run (``itm train`` in this process)
and one live server (a real ``itm serve`` subprocess) per test session."""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import ROOT, TINY_IMAGE, built_once, itm_cli

MAX_UPLOAD_MB = 1
_cache: dict = {}


def trained_run(tiny_data_master: Path, tmp_path_factory) -> Path:
    """``itm train`` on the tiny demo data, once for the session (``built_once``: one training for all xdist
    workers, a copy each): 1 epoch at 64 px; it writes calibration.json too."""
    def build(folder):
        r = itm_cli("train", "--data-dir", tiny_data_master, "--epochs", "1", "--seed", "0", "--image-size", TINY_IMAGE,
                    "--output-dir", folder / "run")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    if "run" not in _cache:
        _cache["run"] = built_once(tmp_path_factory, "serve-run", build) / "run"
    return _cache["run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run: Path, images: Path, cache_dir: Path, extra=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(cache_dir / "server.log", "w+")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "ITM_CACHE_DIR": str(cache_dir)}
        self.proc = subprocess.Popen([sys.executable, "-m", "itm", "serve", "--run", str(run), "--images", str(images),
                                      "--port", str(self.port), "--max-upload-mb", str(MAX_UPLOAD_MB), *extra],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"itm serve exited with {self.proc.returncode}:\n{self.log.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("itm serve did not answer /healthz within 180 s")
            time.sleep(0.3)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def server(run: Path, images: Path, tmp_path_factory) -> Server:
    """``itm serve`` on a free loopback port, searching ``images``; stopped when the session ends."""
    if "server" not in _cache:
        _cache["server"] = Server(run, images, tmp_path_factory.mktemp("serve-cache"))
        atexit.register(_cache["server"].stop)
    return _cache["server"]
