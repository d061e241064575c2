"""Collection search at scale: 1M synthetic 512-d image embeddings, exact (numpy) vs the FAISS IVF-Flat index that
`gtloc search` builds above 100K photos: build time, memory, query latency, recall@10 against exact.

Usage: OMP_NUM_THREADS=2 .venv/bin/python bench/bench_search.py [--n 1000000] [--dim 512] [--queries 100]

The embeddings are clustered like photo collections (many photos per place): unit vectors around 5,000 random
centres. Queries are fresh (not rows of the index): half near a centre, half between two centres (as fused
place + time queries fall). Latencies are wall-clock medians on the given threads; memory is the process's
resident set (VmRSS) growth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from gtloc_engine.inference.search import AnnIndex, SearchConfig, exact_top_k, exact_top_k_batch, recall_at_k


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def clustered(n: int, dim: int, clusters: int, seed: int, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = centres[rng.integers(clusters, size=m)] + 0.7 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, centres


def fresh_queries(centres: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = centres[rng.integers(len(centres), size=n)]
    b = centres[rng.integers(len(centres), size=n)]
    half = n // 2
    q = np.concatenate([a[:half] + rng.standard_normal(a[:half].shape, dtype=np.float32), a[half:] + b[half:]])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def median_ms(fn, queries) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=5000)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--window-vectors", type=int, default=48, help="grid size of a time-window query (1 month "
                   "at 0.5-month steps x 24 hours = 48)")
    p.add_argument("--out", help="write the numbers as JSON here too")
    args = p.parse_args()

    import faiss

    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count()
    faiss.omp_set_num_threads(threads)
    base = rss_mb()
    t = time.perf_counter()
    emb, centres = clustered(args.n, args.dim, args.clusters, seed=0)
    gen_s = time.perf_counter() - t
    exact_mb = rss_mb() - base
    queries = fresh_queries(centres, args.queries, seed=1)
    windows = [fresh_queries(centres, args.window_vectors, seed=100 + i) for i in range(5)]

    exact_1 = median_ms(lambda q: exact_top_k(emb, q, 10), queries[:20])
    exact_w = median_ms(lambda q: exact_top_k(emb, q, 10), windows)
    t = time.perf_counter()
    truth = exact_top_k_batch(emb, queries, 10)
    exact_batch_ms = 1000.0 * (time.perf_counter() - t) / len(queries)

    before = rss_mb()
    t = time.perf_counter()
    index = AnnIndex.build(emb, SearchConfig())
    build_s = time.perf_counter() - t
    index_mb = rss_mb() - before
    ann_1 = median_ms(lambda q: index.search(q, 10), queries)
    ann_w = median_ms(lambda q: index.search(q, 10), windows)
    found = np.stack([index.search(q, 10)[0] for q in queries])
    recall = recall_at_k(truth, found)
    window_recall = float(np.mean([len(set(exact_top_k(emb, w, 10)[0].tolist())
                                       & set(index.search(w, 10)[0].tolist())) / 10 for w in windows]))
    serialized_mb = faiss.serialize_index(index.index).nbytes / 2**20

    numbers = {
        "n": args.n, "dim": args.dim, "clusters": args.clusters, "queries": args.queries, "threads": threads,
        "cpu": platform.processor() or platform.machine(), "faiss": faiss.__version__,
        "generate_s": round(gen_s, 1), "exact_matrix_mb": round(exact_mb), "exact_query_ms": round(exact_1, 1),
        "exact_window_query_ms": round(exact_w, 1), "exact_batched_ms_per_query": round(exact_batch_ms, 2),
        "faiss_build_s": round(build_s, 1), "faiss_index_rss_mb": round(index_mb),
        "faiss_sidecar_mb": round(serialized_mb), "nlist": index.key["nlist"], "nprobe": index.nprobe,
        "calibrated_recall_at_10": index.key["calibrated_recall_at_10"], "faiss_query_ms": round(ann_1, 2),
        "faiss_window_query_ms": round(ann_w, 1), "recall_at_10": round(recall, 4),
        "window_recall_at_10": round(window_recall, 4),
    }
    print(json.dumps(numbers, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(numbers, f, indent=2)


if __name__ == "__main__":
    main()
