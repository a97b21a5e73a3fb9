#!/usr/bin/env python
"""Latency of `itm serve` on loopback: starts its own server, then prints JSON with

* the median and 95th-percentile latency of --requests single POST /api/match requests, one after
  another, the k-th with 1 + k % 5 captions (so a server that retraces its model for each new number of
  captions shows it), and how many tf.function retracing warnings the server logged;
* --burst requests sent at once by as many clients: how many succeeded, their median and 95th-percentile
  latency;
* requests/s at --concurrency clients (at most --concurrent-requests or --max-seconds).

The image and captions default to the first dev image of the run's data folder and its triples' captions.
``--root`` serves from another checkout of itm (to compare versions on the same run).

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


def start_server(run: Path, *extra: str, root: Path = ROOT):
    """``itm serve`` for ``run`` on a free loopback port, answering /healthz; returns (process, url, log)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(root)}
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a pipe nobody reads can block the server
    server = subprocess.Popen([sys.executable, "-m", "itm", "serve", "--run", str(run), "--port", str(port), *extra],
                              cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            log.seek(0)
            sys.exit(f"itm serve exited: {log.read()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return server, url, log
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
    captions = list(dict.fromkeys(c for _, c, _ in rows))  # the image's own first, then others
    own = [c for i, c, _ in rows if i == image]
    return data / "flickr8k-resised" / image, (own + [c for c in captions if c not in own])[:5]


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--image", type=Path)
    ap.add_argument("--caption", action="append")
    ap.add_argument("--requests", type=int, default=50, help="single requests timed one after another")
    ap.add_argument("--burst", type=int, default=50, help="requests sent at once, one per client")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--concurrent-requests", type=int, default=200, help="at most this many in the concurrent part")
    ap.add_argument("--max-seconds", type=float, default=60, help="and at most this long")
    ap.add_argument("--root", type=Path, default=ROOT, help="the itm checkout that serves (default: this one)")
    args = ap.parse_args()
    image, captions = default_inputs(args.run)
    image, captions = args.image or image, args.caption or captions
    payload = image.read_bytes()

    server, url, log = start_server(args.run, root=args.root)
    try:
        def one(client, n=len(captions)):  # noqa: B008  (bound once, on purpose)
            t = time.perf_counter()
            r = client.post(url + "/api/match", files={"image": (image.name, payload, "image/jpeg")},
                            data={"caption": captions[:n]}, timeout=120)
            r.raise_for_status()
            return time.perf_counter() - t

        with httpx.Client() as client:
            one(client)  # warm-up: the first call loads and traces
            single = [one(client, 1 + k % len(captions)) for k in range(args.requests)]

        burst, burst_failed = [], []
        barrier = threading.Barrier(args.burst)

        def burst_client():
            with httpx.Client() as client:
                barrier.wait()
                try:
                    burst.append(one(client))
                except httpx.HTTPError as e:
                    burst_failed.append(repr(e))

        threads = [threading.Thread(target=burst_client) for _ in range(args.burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

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
    log.seek(0)
    retraced = log.read().count("triggered tf.function retracing")

    print(json.dumps({
        "run": str(args.run), "served_by": str(args.root), "image": image.name,
        "captions_per_request": f"1 to {len(captions)}", "single_requests": len(single),
        "latency_ms_median": round(1000 * statistics.median(single), 1),
        "latency_ms_p95": round(1000 * percentile(single, 95), 1),
        "retracing_warnings": retraced,
        "burst_requests": args.burst, "burst_succeeded": len(burst), "burst_failed": len(burst_failed),
        "burst_latency_ms_median": round(1000 * statistics.median(burst), 1) if burst else None,
        "burst_latency_ms_p95": round(1000 * percentile(burst, 95), 1) if burst else None,
        "concurrent_clients": args.concurrency, "concurrent_requests": len(done),
        "concurrent_failed": len(failed), "concurrent_seconds": round(elapsed, 2),
        "requests_per_second": round(len(done) / elapsed, 1),
        "cpu_cores": os.cpu_count(), "machine": platform.machine(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
