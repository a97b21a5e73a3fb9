#!/usr/bin/env python
"""How cost grows with the work: seconds, items per second and peak memory per phase, from 10,000 triples up.

For each N of ``--sizes`` it builds a synthetic data folder of N training triples (``itm.data.synthetic``:
one image name per 5 triples, hard links to a pool of at most ``--pool`` generated JPEGs, 0.4 N distinct
captions with their own vectors; dev and test 500 triples each) and runs each phase as its own fresh
process through the public commands, so that the peak resident memory (``wait4``'s ``ru_maxrss``) is that
phase's alone:

* ``load``: checking and loading the data folder (``itm.data.folder.load_data_dir``, what every command
  does first): items = triples of the three splits;
* ``shard``: ``itm shard --data-dir DIR``: items = train triples;
* ``pretrained_features`` and ``pretrained_epoch``: ``itm train --preset pretrained --epochs 1`` with an
  empty feature cache: the frozen MobileNetV2's features of every image (items = images), then one epoch
  on the cached features (items = train triples; seconds from the run's "model trained in" line: the
  epoch and its dev scoring). Same process, so the same peak memory;
* ``faithful_shards_epoch`` (N up to ``--shards-max``): ``itm train --pipeline shards --fast --epochs 1``,
  the faithful model streaming the shards (the train command's "model trained in" seconds);
* ``evaluate``: ``itm evaluate --run RUN --data-dir EVAL --split test --no-retrieval`` of the pretrained
  run on a folder whose test split is the N training triples (items = triples scored).

The photos are ``--image-size`` pixels (64 by default, and the models read them at that size): the point
is how cost grows with N, and 224 px would make the million-triple run take hours on 2 cores.
``--multiworker N`` also measures ``--strategy multiworker`` on loopback (see ``multiworker``).

Prints one JSON object per (N, phase) per line; ``--figure`` draws time and memory against N (log-log).

    nice -n 10 .venv/bin/python scripts/bench_scale.py --sizes 10000,100000,1000000 \\
        [--work /tmp/itm-scale] [--figure docs/scale.png] [--multiworker 20000] [--jsonl out.jsonl]
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAINED = re.compile(r"model trained in ([0-9.]+) s")
PHASES = ("load", "shard", "pretrained", "faithful", "evaluate")
FEATURES = re.compile(r"Backbone features of (\d+) images .* in ([0-9.]+) s")


# A process's peak RSS (ru_maxrss) starts at its parent's RSS when it was forked: Linux keeps the high-water
# mark across exec. So each phase is started by this small middle process, whose own RSS (about 10 MiB) is the
# floor, rather than by the benchmark, which holds the big data folder it has just built.
MEASURED = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)")


def measured(args, rss_file: Path) -> list:
    """The command line that runs ``python args`` and writes its peak RSS (KiB) into ``rss_file``."""
    return [sys.executable, "-c", MEASURED, str(rss_file), sys.executable, *args]


def run_phase(args, env=None, log=None) -> tuple[float, float, str]:
    """Run ``python args`` as a fresh process: (wall seconds, its peak RSS in MiB, its output)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT), **(env or {})}
    rss_file = Path(log).with_suffix(".rss")
    start = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(measured(args, rss_file), cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        out = []
        for line in proc.stdout:
            out.append(line)
            sink.write(line)
        code = proc.wait()
    seconds = time.perf_counter() - start
    text = "".join(out)
    if code != 0:
        raise SystemExit(f"phase failed (exit {code}): {' '.join(map(str, args))}\n{text[-3000:]}")
    return seconds, int(rss_file.read_text()) / 1024, text  # ru_maxrss is in KiB on Linux


def record(n, phase, seconds, items, rss, **extra) -> dict:
    row = {"n": n, "phase": phase, "seconds": round(seconds, 2), "items": items,
           "items_per_second": round(items / seconds, 1) if seconds > 0 else None, "peak_rss_mib": round(rss, 1),
           **extra}
    print(json.dumps(row), flush=True)
    return row


def eval_folder(data: Path) -> Path:
    """A folder whose test split is ``data``'s train split, sharing its photos and embeddings."""
    from itm.data.folder import EMBEDDINGS_NPZ, IMAGES_SUBDIR, SPLIT_FILES

    out = data / "eval"
    out.mkdir(exist_ok=True)
    for name in (IMAGES_SUBDIR, EMBEDDINGS_NPZ):
        if not (out / name).exists():
            (out / name).symlink_to(data / name)
    shutil.copyfile(data / SPLIT_FILES["train"], out / SPLIT_FILES["test"])
    return out


def measure(n: int, work: Path, opts) -> list[dict]:
    from itm.data.synthetic import images_needed

    data = work / f"n{n}"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    s, rss, _ = run_phase(["-c", "import sys; from itm.data.synthetic import build; "
                                 "build(sys.argv[1], *map(int, sys.argv[2:]))",
                           str(data), str(n), "500", "500", str(opts.pool), str(opts.image_size)],
                          log=logs / f"build-{n}.log")
    n_images = images_needed(n)
    total = n + 1000
    rows.append(record(n, "build", s, n, rss))
    size = ["--image-size", str(opts.image_size)]

    if "load" in opts.phases:
        s, rss, _ = run_phase(["-c", "import sys; from itm.data.folder import load_data_dir; "
                                     "load_data_dir(sys.argv[1])", str(data)], log=logs / f"load-{n}.log")
        rows.append(record(n, "load", s, total, rss))

    if "shard" in opts.phases or ("faithful" in opts.phases and n <= opts.shards_max):
        s, rss, _ = run_phase(["-m", "itm", "shard", "--data-dir", str(data)], log=logs / f"shard-{n}.log")
        shard_bytes = sum(p.stat().st_size for p in (data / "shards").glob("train-*.tfrecord"))
        rows.append(record(n, "shard", s, n, rss, train_shards_mib=round(shard_bytes / 2**20, 1)))

    run = work / f"run-pretrained-{n}"
    cache = work / f"cache-{n}"
    if {"pretrained", "evaluate"} & set(opts.phases):
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)  # an empty feature cache: extraction is measured too
        s, rss, out = run_phase(["-m", "itm", "train", "--preset", "pretrained", "--data-dir", str(data), "--epochs",
                                 "1", *size, "--seed", "0", "--output-dir", str(run)],
                                env={"ITM_CACHE_DIR": str(cache)}, log=logs / f"pretrained-{n}.log")
        images, extract = FEATURES.search(out).groups()
        epoch = float(TRAINED.search(out)[1])
        rows.append(record(n, "pretrained_features", float(extract), int(images), rss, process_seconds=round(s, 1)))
        rows.append(record(n, "pretrained_epoch", epoch, n, rss, process_seconds=round(s, 1)))
        shutil.rmtree(cache, ignore_errors=True)

    if "faithful" in opts.phases and n <= opts.shards_max:
        run_f = work / f"run-faithful-shards-{n}"
        shutil.rmtree(run_f, ignore_errors=True)
        s, rss, out = run_phase(["-m", "itm", "train", "--data-dir", str(data), "--pipeline", "shards", "--fast",
                                 "--epochs", "1", *size, "--seed", "0", "--output-dir", str(run_f)],
                                log=logs / f"faithful-shards-{n}.log")
        rows.append(record(n, "faithful_shards_epoch", float(TRAINED.search(out)[1]), n, rss,
                           process_seconds=round(s, 1)))
        shutil.rmtree(run_f, ignore_errors=True)

    if "evaluate" in opts.phases:
        evaluation = eval_folder(data)
        s, rss, _ = run_phase(["-m", "itm", "evaluate", "--run", str(run), "--data-dir", str(evaluation), "--split",
                               "test", "--no-retrieval", "--name", "scale"], log=logs / f"evaluate-{n}.log")
        rows.append(record(n, "evaluate", s, n, rss, images=n_images))
    if not opts.keep:
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    return rows


# ---------------------------------------------------------------- several workers, on loopback

def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _cluster_run(data: Path, workers: int, batch: int, out: Path, logs: Path, extra=()) -> list[tuple]:
    """``itm train --strategy multiworker`` on ``workers`` local processes: per worker (training seconds,
    process seconds, peak RSS MiB)."""
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(workers)]
    shutil.rmtree(out, ignore_errors=True)
    procs = []
    start = time.perf_counter()
    for i in range(workers):
        tf_config = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT), "TF_CONFIG": tf_config}
        log = open(logs / f"{out.name}-worker{i}.log", "w")
        args = ["-m", "itm", "train", "--data-dir", str(data), "--strategy", "multiworker", "--batch-size", str(batch),
                "--epochs", "1", "--seed", "0", "--output-dir", str(out if i == 0 else f"{out}-w{i}"), *extra]
        procs.append((subprocess.Popen(measured(args, logs / f"{out.name}-worker{i}.rss"), cwd=ROOT, env=env,
                                       stdout=log, stderr=subprocess.STDOUT), log))
    results = []
    for i, (proc, log) in enumerate(procs):
        code = proc.wait()
        log.close()
        text = (logs / f"{out.name}-worker{i}.log").read_text()
        if code != 0:
            raise SystemExit(f"worker {i} failed:\n{text[-3000:]}")
        rss = int((logs / f"{out.name}-worker{i}.rss").read_text()) / 1024
        results.append((float(TRAINED.search(text)[1]), time.perf_counter() - start, rss))
    for i in range(1, workers):
        shutil.rmtree(f"{out}-w{i}", ignore_errors=True)
    return results


def multiworker(n: int, work: Path, opts) -> list[dict]:
    """One worker against two on 127.0.0.1, the same global batch, the faithful model, one epoch of n triples.

    A third run, one worker on half the triples at half the batch, is what each of the two does without
    the other: the two-worker epoch's excess over it is the time the workers spend waiting on each other
    (all-reduce, and here also sharing the same 2 cores). Items = the epoch's triples.
    """
    data = work / f"mw{n}"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_phase(["-c", "import sys; from itm.data.synthetic import build; build(sys.argv[1], *map(int, sys.argv[2:]))",
               str(data), str(n), "500", "500", str(opts.pool), str(opts.image_size)], log=logs / f"build-mw{n}.log")
    size = ["--image-size", str(opts.image_size)]
    batch = opts.mw_batch
    rows = []
    (one,) = _cluster_run(data, 1, batch, work / "mw-one", logs, size)
    rows.append(record(n, "multiworker_1", one[0], n, one[2], workers=1, global_batch=batch,
                       process_seconds=round(one[1], 1)))
    (half,) = _cluster_run(data, 1, batch // 2, work / "mw-half", logs, [*size, "--limit", str(n // 2)])
    rows.append(record(n // 2, "multiworker_1_half", half[0], n // 2, half[2], workers=1, global_batch=batch // 2,
                       process_seconds=round(half[1], 1), note="what one of two workers computes, alone"))
    two = _cluster_run(data, 2, batch, work / "mw-two", logs, size)
    seconds = max(t for t, _, _ in two)
    rows.append(record(n, "multiworker_2_loopback", seconds, n, max(r for _, _, r in two), workers=2,
                       global_batch=batch, process_seconds=round(max(p for _, p, _ in two), 1),
                       waiting_seconds=round(seconds - half[0], 1)))
    for name in ("mw-one", "mw-half", "mw-two"):
        shutil.rmtree(work / name, ignore_errors=True)
    if not opts.keep:
        shutil.rmtree(data, ignore_errors=True)
    return rows


# ---------------------------------------------------------------- the figure

def draw(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in dict.fromkeys(r["phase"] for r in rows) if not p.startswith(("multiworker", "build"))]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for phase in phases:
        mine = sorted((r for r in rows if r["phase"] == phase), key=lambda r: r["n"])
        ns = [r["n"] for r in mine]
        ax_t.plot(ns, [r["seconds"] for r in mine], "o-", label=phase)
        ax_m.plot(ns, [r["peak_rss_mib"] for r in mine], "o-", label=phase)
    ns = sorted({r["n"] for r in rows if r["phase"] in phases})
    if len(ns) > 1:  # a line of slope 1: linear growth
        t0 = min(r["seconds"] for r in rows if r["n"] == ns[0] and r["phase"] in phases)
        ax_t.plot(ns, [t0 * n / ns[0] for n in ns], "k:", label="linear")
    ax_m.axhline(8192, color="r", ls="--", lw=1, label="8 GiB")
    for ax, label in ((ax_t, "seconds"), (ax_m, "peak resident memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training triples N")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7, loc="lower right")
    ax_m.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path}", file=sys.stderr)


def markdown(rows: list[dict]) -> str:
    """The rows as a table: one line per phase, seconds / items per second / peak MiB per N."""
    ns = sorted({r["n"] for r in rows if not r["phase"].startswith("multiworker")})
    lines = ["| phase | " + " | ".join(f"N = {n:,}" for n in ns) + " |", "| --- |" + " --- |" * len(ns)]
    for phase in dict.fromkeys(r["phase"] for r in rows if not r["phase"].startswith("multiworker")):
        cells = []
        for n in ns:
            r = next((r for r in rows if r["n"] == n and r["phase"] == phase), None)
            cells.append(f"{r['seconds']:,.0f} s, {r['items_per_second']:,.0f}/s, {r['peak_rss_mib']:,.0f} MiB"
                         if r else "not run")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_kind() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.+)", out)[1].strip()
        flags = re.search(r"Flags:\s*(.+)", out)
        bf16 = "AVX512_BF16" if flags and "avx512_bf16" in flags[1] else ("AVX-512" if flags and "avx512f" in flags[1]
                                                                          else "no AVX-512")
        return f"{model}, {os.cpu_count()} cores, {bf16}"
    except (OSError, TypeError):
        return "unknown CPU"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="training triples, comma-separated")
    p.add_argument("--work", default="/tmp/itm-scale", help="where the data folders and runs go (removed after)")
    p.add_argument("--pool", type=int, default=20000, help="generated photos at most (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=64, help="photo and model size in pixels (default: %(default)s)")
    p.add_argument("--shards-max", type=int, default=100000, help="faithful over shards up to this N")
    p.add_argument("--phases", default=",".join(PHASES), type=lambda s: s.split(","),
                   help="which of %(default)s to run (default: all; 'pretrained' is the features and the epoch)")
    p.add_argument("--multiworker", type=int, metavar="N", help="also one worker against two on loopback, N triples")
    p.add_argument("--mw-batch", type=int, default=32, help="the multiworker runs' global batch (default: 32)")
    p.add_argument("--jsonl", help="also append the JSON lines to this file")
    p.add_argument("--figure", help="draw time and memory against N into this PNG (with --from: only draw)")
    p.add_argument("--from", dest="source", help="read the rows from this JSON-lines file instead of measuring")
    p.add_argument("--markdown", action="store_true", help="also print the rows as a Markdown table")
    p.add_argument("--keep", action="store_true", help="keep the data folders and runs")
    opts = p.parse_args()
    work = Path(opts.work)
    rows = []
    if opts.source:
        rows = [json.loads(line) for line in open(opts.source) if line.strip().startswith("{")]
        rows = [r for r in rows if "phase" in r]  # the printed output's first line names the CPU
    else:
        print(json.dumps({"cpu": cpu_kind(), "image_size": opts.image_size, "pool": opts.pool}), flush=True)
        for n in (int(x) for x in opts.sizes.split(",") if x):
            new = measure(n, work, opts)
            rows += new
            if opts.jsonl:
                with open(opts.jsonl, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in new)
        if opts.multiworker:
            new = multiworker(opts.multiworker, work, opts)
            rows += new
            if opts.jsonl:
                with open(opts.jsonl, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in new)
    if opts.markdown:
        print(markdown(rows))
    if opts.figure:
        draw(rows, Path(opts.figure), f"itm cost against data size ({cpu_kind()}; shared machine, noisy)")


if __name__ == "__main__":
    main()
