#!/usr/bin/env python
"""Query latency of the retrieval index (``itm.index.VectorIndex``) at growing collection sizes, the
re-ranking by a real match head included; prints one JSON line per size.

Per size (default 10,000, 100,000 and 1,000,000 images): synthetic clustered unit vectors of the
embedding's width (256, the ``pretrained`` preset's projection_dim) are added to a fresh index (build
time, and the memory per image: resident memory grown by the index, ids included, and the saved file's
bytes); then --queries single caption queries, one after another, each one shortlist of --candidates
images (``VectorIndex.search``) re-ranked by the ``pretrained`` preset's match head (untrained weights:
the cost is the same) through ``itm.models.scorer.Scorer.pairs``, the path ``itm search`` takes.
Latency p50/p95 (wall clock) of shortlist alone and of shortlist + re-ranking, the p50 of the CPU time
a query took (all threads; less disturbed by other jobs on a shared machine), the shortlist's recall@10
against exact search, and (up to --exact-up-to) the CPU time of exact numpy search for comparison.
``--threads`` caps the threads of the index and of TensorFlow (the target is 2 cores).

    nice .venv/bin/python scripts/bench_search.py [--sizes 10000 100000 1000000] [--threads 2]
"""
import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CENTRES = 1000  # clusters of the synthetic collections: shared by the data and the queries


def clustered(n: int, dim: int, seed: int, noise: float = 0.75, centres: int = CENTRES) -> np.ndarray:
    """n synthetic unit vectors around ``centres`` fixed random centres (the same for every seed): photos of
    similar scenes lie near each other, as in a trained embedding; float32 [n, dim]. With few centres and
    many points, each cluster is a ball of near-equidistant points (top 10 within ~0.02 of cosine at
    1,000 points a cluster): the hardest case for a graph, harder than real features."""
    means = np.random.default_rng(12345).standard_normal((centres, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        x = means[rng.integers(0, centres, hi - lo)] + noise * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        out[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest inner products per query, best first (the ground truth)."""
    out = np.empty((len(queries), k), np.int64)
    for lo in range(0, len(queries), 256):
        s = queries[lo:lo + 256] @ data.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
        out[lo:lo + 256] = np.take_along_axis(top, order, 1)
    return out


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top k (``truth``'s rows) found in its row of ``found``."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def percentiles(seconds) -> tuple[float, float]:
    return float(np.percentile(seconds, 50)), float(np.percentile(seconds, 95))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def match_head(dim: int):
    """The serving path's Scorer around the ``pretrained`` preset's model (the head is what re-ranks)."""
    from itm.models.scorer import Scorer
    from itm.models.classifier import build_model
    from itm.options import resolve_config

    kwargs = resolve_config("pretrained").model_kwargs()
    kwargs.update(image_weights="none", projection_dim=dim)  # no weights file needed; the head's cost is the same
    return Scorer(build_model(**kwargs))


def bench_size(n: int, args, scorer, text_queries) -> dict:
    from itm.index import VectorIndex

    data = clustered(n, args.dim, seed=0, centres=args.centres)
    ids = [f"photos/{i:07d}.jpg" for i in range(n)]
    gc.collect()
    before, start, cpu = rss_bytes(), time.perf_counter(), time.process_time()
    index = VectorIndex(args.dim) if args.exact_below is None else VectorIndex(args.dim, exact_below=args.exact_below)
    for lo in range(0, n, args.add_batch):  # in batches, as new photos arrive
        index.add(ids[lo:lo + args.add_batch], data[lo:lo + args.add_batch])
    build_s, build_cpu, grown = time.perf_counter() - start, time.process_time() - cpu, rss_bytes() - before
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.npz"
        start = time.perf_counter()
        index.save(path)
        save_s, file_bytes = time.perf_counter() - start, path.stat().st_size
    queries = text_queries  # caption vectors near the collection's clusters
    truth = exact_top(data, queries, 10)
    exact_t = []
    if n <= args.exact_up_to:
        for q in queries[:50]:
            t = time.process_time()
            exact_top(data, q[None], args.candidates)
            exact_t.append(time.process_time() - t)
    built = dict(size=n, dim=args.dim, backend=index.backend, build_s=round(build_s, 1),
                 build_cpu_s=round(build_cpu, 1), save_s=round(save_s, 1),
                 bytes_per_image_rss=round(grown / n), bytes_per_image_file=round(file_bytes / n))
    if exact_t:
        built["exact_numpy_cpu_p50_ms"] = round(1e3 * percentiles(exact_t)[0], 2)
    rows_out = []
    for ef in args.expansion_search or [index.expansion_search]:  # one build, several search widths
        index.expansion_search = ef
        rows_out.append(dict(built, expansion_search=max(ef, 2 * args.candidates),
                             **query_loop(index, ids, data, queries, truth, scorer, args)))
    del index, data
    gc.collect()
    return rows_out


def query_loop(index, ids, data, queries, truth, scorer, args) -> dict:
    """Single queries one after another: shortlist, candidates' vectors, re-ranking; latency and recall."""
    row = {name: i for i, name in enumerate(ids)}
    shortlist_t, total_t, total_cpu, found = [], [], [], []
    text_features = scorer.encode_texts(np.zeros((1, 384), np.float32))  # warm the text tower
    scorer.pairs(data[:args.candidates], text_features, np.arange(args.candidates), np.zeros(args.candidates, int))
    for q in queries:
        c0, t0 = time.process_time(), time.perf_counter()
        top, _ = index.search(q, k=args.candidates)
        t1 = time.perf_counter()
        rows = np.array([row[i] for i in top[0] if i is not None])
        candidates = index.vectors([ids[r] for r in rows])
        p = scorer.pairs(candidates, q[None], np.arange(len(rows)), np.zeros(len(rows), int))[:, 0]
        rows[np.argsort(-p, kind="stable")]  # the re-ranked result (its cost is what is timed)
        t2, c2 = time.perf_counter(), time.process_time()
        total_cpu.append(c2 - c0)
        shortlist_t.append(t1 - t0)
        total_t.append(t2 - t0)
        found.append(np.pad(rows, (0, args.candidates - len(rows)), constant_values=-1))
    s50, s95 = percentiles(shortlist_t)
    t50, t95 = percentiles(total_t)
    found = np.array(found)
    return dict(shortlist_recall_at_10=round(recall_at(found[:, :10], truth), 4),
                true_top10_in_shortlist=round(recall_at(found, truth), 4),  # what the re-ranker gets to see
                shortlist_p50_ms=round(1e3 * s50, 2), shortlist_p95_ms=round(1e3 * s95, 2),
                with_rerank_p50_ms=round(1e3 * t50, 2), with_rerank_p95_ms=round(1e3 * t95, 2),
                with_rerank_cpu_p50_ms=round(1e3 * percentiles(total_cpu)[0], 2),
                candidates=args.candidates, queries=len(queries))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=256, help="the embedding's width (pretrained preset: 256)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--candidates", type=int, default=100, help="shortlist length the head re-ranks")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--add-batch", type=int, default=100_000, help="images per add() call")
    p.add_argument("--exact-below", type=int, default=None, help="override itm.index.EXACT_BELOW")
    p.add_argument("--expansion-add", type=int, default=None,
                   help="override itm.index.EXPANSION_ADD (efConstruction): a cheaper build on a busy machine")
    p.add_argument("--expansion-search", type=int, nargs="+", default=None,
                   help="efSearch values to query each built index with (default itm.index.EXPANSION_SEARCH; "
                        "max(ef, 2 x candidates) is used)")
    p.add_argument("--connectivity", type=int, default=None, help="override itm.index.CONNECTIVITY (M)")
    p.add_argument("--graph-dtype", default=None, choices=["f16", "f32"], help="override itm.index.GRAPH_DTYPE")
    p.add_argument("--centres", type=int, default=CENTRES,
                   help="clusters of the synthetic vectors (more: smaller, less degenerate neighbourhoods)")
    p.add_argument("--exact-up-to", type=int, default=100_000, help="also time exact numpy search up to this size")
    args = p.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import itm.index

    for name, value in (("EXPANSION_ADD", args.expansion_add), ("CONNECTIVITY", args.connectivity),
                        ("GRAPH_DTYPE", args.graph_dtype)):
        if value:
            setattr(itm.index, name, value)
    scorer = match_head(args.dim)
    queries = clustered(args.queries, args.dim, seed=1, centres=args.centres)
    from itm import index as settings

    print(json.dumps(dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                          threads=args.threads, exact_below=args.exact_below or settings.EXACT_BELOW,
                          connectivity=settings.CONNECTIVITY, expansion_add=settings.EXPANSION_ADD,
                          expansion_search=settings.EXPANSION_SEARCH, graph_dtype=settings.GRAPH_DTYPE,
                          centres=args.centres,
                          note="shared machine: figures are noisy")), flush=True)
    for n in args.sizes:
        for out in bench_size(n, args, scorer, queries):
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
