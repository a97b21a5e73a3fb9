#!/usr/bin/env python
"""Latency of `itm serve` on loopback: starts its own server, then prints JSON with the median and
95th-percentile latency of single POST /api/match requests, and requests/s at 8 concurrent clients.

Bounded: --requests single requests and at most --concurrent-requests (or --max-seconds) for the
concurrent part. The image and captions default to the first dev triple of the run's data folder.

    .venv/bin/python scripts/bench_serve.py --run runs/RUN [--image X.jpg --caption TEXT ...]
"""
import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, *extra: str):
    """``itm serve`` for ``run`` on a free loopback port, answering /healthz; returns (process, url)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a pipe nobody reads can block the server
    server = subprocess.Popen([sys.executable, "-m", "itm", "serve", "--run", str(run), "--port", str(port), *extra],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            log.seek(0)
            sys.exit(f"itm serve exited: {log.read()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.terminate()
            sys.exit("itm serve did not start within 180 s")
        time.sleep(0.3)


def default_inputs(run: Path):
    config = json.loads((run / "metrics.json").read_text())["config"]
    data = Path(config["data_dir"])
    rows = [line.split("\t") for line in (data / "flickr8k.DevImages.txt").read_text().splitlines() if line]
    image = rows[0][0]
    return data / "flickr8k-resised" / image, [c for i, c, _ in rows if i == image][:3]


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--image", type=Path)
    ap.add_argument("--caption", action="append")
    ap.add_argument("--requests", type=int, default=50, help="single requests timed one after another")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--concurrent-requests", type=int, default=200, help="at most this many in the concurrent part")
    ap.add_argument("--max-seconds", type=float, default=60, help="and at most this long")
    args = ap.parse_args()
    image, captions = default_inputs(args.run)
    image, captions = args.image or image, args.caption or captions
    payload = image.read_bytes()

    server, url = start_server(args.run)
    try:
        def one(client):
            t = time.perf_counter()
            r = client.post(url + "/api/match", files={"image": (image.name, payload, "image/jpeg")},
                            data={"caption": captions}, timeout=60)
            r.raise_for_status()
            return time.perf_counter() - t

        with httpx.Client() as client:
            for _ in range(3):  # warm-up: first calls trace the model's functions
                one(client)
            single = [one(client) for _ in range(args.requests)]

        done, failed, lock, stop_at = [], [], threading.Lock(), time.monotonic() + args.max_seconds

        def worker():
            with httpx.Client() as client:
                while time.monotonic() < stop_at:
                    with lock:
                        if len(done) >= args.concurrent_requests:
                            return
                        done.append(None)
                    try:
                        one(client)
                    except httpx.HTTPError as e:
                        failed.append(repr(e))

        start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(10)

    print(json.dumps({
        "run": str(args.run), "image": image.name, "captions_per_request": len(captions),
        "single_requests": len(single),
        "latency_ms_median": round(1000 * statistics.median(single), 1),
        "latency_ms_p95": round(1000 * percentile(single, 95), 1),
        "concurrent_clients": args.concurrency, "concurrent_requests": len(done),
        "concurrent_failed": len(failed), "concurrent_seconds": round(elapsed, 2),
        "requests_per_second": round(len(done) / elapsed, 1),
        "cpu_cores": os.cpu_count(), "machine": platform.machine(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
