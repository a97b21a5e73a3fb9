#!/usr/bin/env python
"""Which approximate-nearest-neighbour library backs ``itm.index``: each candidate measured on the same
synthetic clustered unit vectors (``bench_search.clustered``), printed as JSON lines.

Per library and setting: build time (--threads threads), single-query latency p50/p95 (one thread, one
query at a time, as a search request meets it), recall@10 against exact search, the memory per vector
(the process's resident memory grown by the build, and the saved index's bytes), all at --size vectors.
A library that is not installed is reported as such and skipped. ``--features`` measures on real vectors
instead (a feature-cache file's rows, e.g. MobileNetV2's pooled features of the Flickr8k photos).

    nice .venv/bin/python scripts/compare_ann.py --size 100000 --dim 256
"""
import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import clustered, exact_top, percentiles, recall_at, rss_bytes  # noqa: E402


def timed_queries(search, queries):
    """Per-query seconds and the ids found, one query at a time."""
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(search(q[None]))
        times.append(time.perf_counter() - t)
    return times, np.concatenate(found)


def faiss_hnsw(data, queries, args, tmp):
    import faiss

    faiss.omp_set_num_threads(args.threads)
    before, t, cpu = rss_bytes(), time.perf_counter(), time.process_time()
    index = faiss.IndexHNSWFlat(data.shape[1], args.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = args.ef_construction
    index.add(data)
    build, grown = (time.perf_counter() - t, time.process_time() - cpu), rss_bytes() - before
    faiss.write_index(index, str(tmp / "faiss.index"))
    size = (tmp / "faiss.index").stat().st_size
    faiss.omp_set_num_threads(1)
    for ef in args.ef:
        index.hnsw.efSearch = ef
        yield dict(ef=ef), build, grown, size, timed_queries(lambda q: index.search(q, 10)[1], queries)


def hnswlib_hnsw(data, queries, args, tmp):
    import hnswlib

    before, t, cpu = rss_bytes(), time.perf_counter(), time.process_time()
    index = hnswlib.Index(space="ip", dim=data.shape[1])
    index.init_index(max_elements=len(data), M=args.m, ef_construction=args.ef_construction)
    index.set_num_threads(args.threads)
    index.add_items(data, np.arange(len(data)))
    build, grown = (time.perf_counter() - t, time.process_time() - cpu), rss_bytes() - before
    index.save_index(str(tmp / "hnswlib.bin"))
    size = (tmp / "hnswlib.bin").stat().st_size
    index.set_num_threads(1)
    for ef in args.ef:
        index.set_ef(ef)
        yield dict(ef=ef), build, grown, size, timed_queries(lambda q: index.knn_query(q, k=10)[0], queries)


def usearch_hnsw(data, queries, args, tmp, dtype="f32"):
    from usearch.index import Index

    before, t, cpu = rss_bytes(), time.perf_counter(), time.process_time()
    index = Index(ndim=data.shape[1], metric="ip", dtype=dtype, connectivity=args.m,
                  expansion_add=args.ef_construction)
    index.add(np.arange(len(data)), data, threads=args.threads)
    build, grown = (time.perf_counter() - t, time.process_time() - cpu), rss_bytes() - before
    index.save(str(tmp / "usearch.bin"))
    size = (tmp / "usearch.bin").stat().st_size
    for ef in args.ef:
        index.expansion_search = ef
        yield (dict(ef=ef, dtype=dtype), build, grown, size,
               timed_queries(lambda q: index.search(q, 10, threads=1).keys.reshape(1, -1), queries))


def usearch_f16(data, queries, args, tmp):
    yield from usearch_hnsw(data, queries, args, tmp, "f16")


def faiss_ivf(data, queries, args, tmp):
    import faiss

    faiss.omp_set_num_threads(args.threads)
    lists = int(4 * np.sqrt(len(data)))
    before, t, cpu = rss_bytes(), time.perf_counter(), time.process_time()
    quantizer = faiss.IndexFlatIP(data.shape[1])
    index = faiss.IndexIVFFlat(quantizer, data.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
    index.train(data[np.random.default_rng(0).choice(len(data), min(len(data), 40 * lists), replace=False)])
    index.add(data)
    build, grown = (time.perf_counter() - t, time.process_time() - cpu), rss_bytes() - before
    faiss.write_index(index, str(tmp / "ivf.index"))
    size = (tmp / "ivf.index").stat().st_size
    faiss.omp_set_num_threads(1)
    for probe in args.nprobe:
        index.nprobe = probe
        yield (dict(lists=lists, nprobe=probe), build, grown, size,
               timed_queries(lambda q: index.search(q, 10)[1], queries))


def numpy_exact(data, queries, args, tmp):
    yield dict(), (0.0, 0.0), data.nbytes, data.nbytes, timed_queries(lambda q: exact_top(data, q, 10), queries)


CANDIDATES = {"numpy-exact": numpy_exact, "faiss-hnsw": faiss_hnsw, "hnswlib": hnswlib_hnsw,
              "usearch-f32": usearch_hnsw, "usearch-f16": usearch_f16, "faiss-ivf": faiss_ivf}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--threads", type=int, default=2, help="threads for building (queries use one)")
    p.add_argument("--m", type=int, default=32, help="HNSW links per node")
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--features", type=Path, default=None,
                   help="real vectors instead: a feature-cache npz (its 'features'); the last --queries rows query the rest")
    p.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.features:
        with np.load(args.features) as z:
            real = z["features"].reshape(len(z["features"]), -1).astype(np.float32)
        real /= np.linalg.norm(real, axis=1, keepdims=True)
        data, queries = np.ascontiguousarray(real[:-args.queries]), np.ascontiguousarray(real[-args.queries:])
        args.size, args.dim = data.shape
    else:
        data, queries = clustered(args.size, args.dim, seed=0), clustered(args.queries, args.dim, seed=1)
    truth = exact_top(data, queries, 10)
    print(json.dumps(dict(size=args.size, dim=args.dim, queries=args.queries, threads=args.threads,
                          m=args.m, ef_construction=args.ef_construction, cpus=os.cpu_count())), flush=True)
    for name in args.only:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for setting, build, grown, size, (times, found) in CANDIDATES[name](data, queries, args, Path(tmp)):
                    p50, p95 = percentiles(times)
                    print(json.dumps(dict(library=name, **setting, build_s=round(build[0], 2), build_cpu_s=round(build[1], 2),
                                          recall_at_10=round(recall_at(found, truth), 4),
                                          p50_ms=round(1e3 * p50, 3), p95_ms=round(1e3 * p95, 3),
                                          rss_bytes_per_vector=round(grown / len(data)),
                                          file_bytes_per_vector=round(size / len(data)))), flush=True)
        except ImportError as e:
            print(json.dumps(dict(library=name, skipped=f"not installed ({e})")), flush=True)
        gc.collect()


if __name__ == "__main__":
    main()
