#!/usr/bin/env python
"""The retrieval index at a million items: build time, memory, recall@100 against exact search, queries/s.

Usage::

    python bench/bench_index_scale.py [--items 1000000] [--dim 64] [--queries 2000] [--batch 500]
                                      [--artifacts DIR [--reindex]] [--sample N] [--output results.json]

Embeddings come from ``--artifacts`` (a trained model's item table, e.g. the one ``bench_training_scale.py``
trains on a million-item shop) or, without it, are drawn with the structure trained tables have: items around
category centres, with norms spread like a popularity prior. Queries are built the way the worker builds its
interest vectors: a decayed, weighted sum of a few items, mostly from one category.

Each index kind (exact flat, HNSW, IVF) is built once, in a fresh process so its memory can be read alone, then
searched in batches of ``--batch`` queries (a micro-batch's one search) at several search breadths: recall@100 of
each breadth against the exact top 100, queries per second, and speed-up over the exact scan. ``ivfpq`` is searched
at several shares of its cells and re-scoring factors; its defaults (``index_kind`` auto = ``ivfpq`` from 100,000
items, about sqrt(n)/4 cells, 5/8 of them probed, re-scoring 4 × k) are the rows with breadth = ``params.nprobe``
and rerank 4. With ``--artifacts``, the worker's start-up (artifact load with checksums, and the pipeline) and a
hot swap (a second copy loaded while the first serves) are timed, with peak memory; ``--reindex`` first rebuilds
that model's index with today's defaults. ``--sample`` indexes a random subset of the table (the curve between
the datasets' sizes and a million).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _measure import peak_rss_mib, rss_mib, write_report

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
RECALL_K = 100
HNSW_EF = (32, 64, 128, 256)
IVF_NPROBE = (8, 16, 32, 64, 128)
IVFPQ_PROBE_SHARES = (0.25, 0.5, 0.625, 0.75, 1.0)  # of the cells; 0.625 is the default
IVFPQ_RERANK = (2, 8)  # re-scoring factors tried at the default nprobe, beside the default 4


def synthetic_table(n_items: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Item embeddings around ``sqrt(n)/2`` category centres, norms lognormal; and each item's category."""
    rng = np.random.default_rng(seed)
    n_categories = max(8, int(np.sqrt(n_items) / 2))
    centres = rng.standard_normal((n_categories, dim)).astype(np.float32)
    category = rng.integers(0, n_categories, size=n_items)
    table = centres[category] + 0.8 * rng.standard_normal((n_items, dim)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    table *= rng.lognormal(0.0, 0.25, size=(n_items, 1)).astype(np.float32)
    return np.ascontiguousarray(table, dtype=np.float32), category


def interest_queries(table: np.ndarray, category: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Interest vectors: 3 to 12 items, 80 % from one category, weights decaying with age."""
    rng = np.random.default_rng(seed + 1)
    by_category = np.argsort(category, kind="stable")
    starts = np.searchsorted(category[by_category], np.arange(category.max() + 2))
    queries = np.zeros((n, table.shape[1]), dtype=np.float32)
    for q in range(n):
        home = rng.integers(0, category.max() + 1)
        members = by_category[starts[home] : starts[home + 1]]
        for age in range(int(rng.integers(3, 13))):
            pool = members if len(members) and rng.random() < 0.8 else None
            item = rng.choice(pool) if pool is not None else rng.integers(0, len(table))
            queries[q] += 0.7**age * table[item]
    return queries


def measure_kind(kind: str, table_path: Path, queries_path: Path, batch: int) -> dict[str, Any]:
    """Build one index kind and search it at each breadth (run in its own process)."""
    import faiss

    from streamrec.index.item_index import ItemIndex, exact_top_k

    table = np.load(table_path)
    queries = np.load(queries_path)
    before = rss_mib()
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # the build may use the machine
    started = time.perf_counter()
    index = ItemIndex.build(table, kind)
    build_s = time.perf_counter() - started
    index_mib = rss_mib() - before  # what the index holds beside the table (a flat index copies it)
    build_peak = peak_rss_mib()
    faiss.omp_set_num_threads(1)  # a worker searches from one thread
    # In slices: the exact scores of 2,000 queries against a million items would take 8 GB at once.
    truth = np.concatenate([exact_top_k(table, queries[i : i + 100], RECALL_K) for i in range(0, len(queries), 100)])
    default = index.search_params
    # (ef_search, nprobe, rerank_factor) per measured breadth; the first value that changes names the row.
    breadths: list[tuple[int, int | None, int | None]]
    if kind == "hnsw":
        breadths = [(ef, None, None) for ef in HNSW_EF]
    elif kind == "ivf":
        breadths = [(1, nprobe, None) for nprobe in IVF_NPROBE]
    elif kind == "ivfpq":
        nlist, nprobe, factor = default["nlist"], default["nprobe"], default["rerank_factor"]
        breadths = [(1, max(1, math.ceil(share * nlist)), factor) for share in IVFPQ_PROBE_SHARES]
        breadths += [(1, nprobe, other) for other in IVFPQ_RERANK]
    else:
        breadths = [(1, None, None)]
    rows = []
    for ef_search, nprobe, rerank_factor in breadths:
        index.set_search_params(ef_search, nprobe, rerank_factor)
        started = time.perf_counter()
        found = np.concatenate(
            [index.search(queries[i : i + batch], RECALL_K)[1] for i in range(0, len(queries), batch)]
        )
        seconds = time.perf_counter() - started
        hits = sum(len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found, strict=True))
        breadth = {"hnsw": ef_search, "ivf": nprobe, "ivfpq": nprobe}.get(kind, 0)
        row = {"breadth": breadth, "recall@100": round(hits / truth.size, 4), "qps": round(len(queries) / seconds, 1)}
        if kind == "ivfpq":
            row["rerank_factor"] = rerank_factor
        rows.append(row)
    return {
        "kind": kind,
        "params": default,
        "build_s": round(build_s, 1),
        "index_mib": round(index_mib, 1),
        "build_peak_mib": round(build_peak, 1),
        "searches": rows,
    }


def measure_worker(artifacts: Path) -> dict[str, Any]:
    """Start-up (load + pipeline) and a hot swap (a second load while the first is held), in this process."""
    from streamrec.model.artifacts import load_artifacts
    from streamrec.stream.pipeline import Pipeline
    from streamrec.stream.settings import Settings

    settings = Settings()
    started = time.perf_counter()
    first = load_artifacts(artifacts)
    loaded_s = time.perf_counter() - started
    pipeline = Pipeline(settings, first)
    startup_s = time.perf_counter() - started
    startup_rss = peak_rss_mib()
    started = time.perf_counter()
    second = load_artifacts(artifacts)
    pipeline.use_model(second)
    swap_s = time.perf_counter() - started
    return {
        "items": len(first.item_ids),
        "load_s": round(loaded_s, 1),
        "startup_s": round(startup_s, 1),
        "startup_peak_mib": round(startup_rss, 1),
        "swap_s": round(swap_s, 1),
        "swap_peak_mib": round(peak_rss_mib(), 1),
    }


def in_child(function: str, *args: str) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", function, *args], capture_output=True, text=True, check=False
    )
    if output.returncode != 0:
        last = output.stderr.strip().splitlines()[-1:] or [f"exit code {output.returncode} (killed for memory?)"]
        raise SystemExit(f"{function} {args[0]} failed: {last[0]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="items of the synthetic table")
    parser.add_argument("--dim", type=int, default=64, help="embedding dimension of the synthetic table")
    parser.add_argument("--queries", type=int, default=2_000, help="interest-vector queries")
    parser.add_argument("--batch", type=int, default=500, help="queries per search call (a micro-batch)")
    parser.add_argument("--kinds", default="flat,hnsw,ivf,ivfpq", help="index kinds to measure")
    parser.add_argument("--artifacts", type=Path, help="a trained model: its item table, start-up and hot swap")
    parser.add_argument(
        "--reindex",
        action="store_true",
        help="first rebuild --artifacts' index with today's defaults (a new version beside it, LATEST switched), "
        "so start-up and hot swap are timed with the index a new training would build",
    )
    parser.add_argument("--sample", type=int, help="index only this many rows of the table, drawn at random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "index_scale.json", help="JSON results file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, *rest = args.child
        if name == "kind":
            print(json.dumps(measure_kind(rest[0], Path(rest[1]), Path(rest[2]), int(rest[3]))))
        else:
            print(json.dumps(measure_worker(Path(rest[0]))))
        return

    work = RESULTS / "cache" / "index_scale"
    work.mkdir(parents=True, exist_ok=True)
    if args.artifacts is not None:
        from streamrec.model.artifacts import load_artifacts

        if args.reindex:  # what `streamrec reindex --artifacts DIR` does
            from streamrec.stream.app.training import reindex_from_settings
            from streamrec.stream.settings import Settings

            started = time.perf_counter()
            print(f"reindexed with the defaults: {reindex_from_settings(args.artifacts, Settings())} "
                  f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
        loaded = load_artifacts(args.artifacts)
        table, category = loaded.item_embeddings, (loaded.segments.item_cluster if loaded.segments else None)
        if category is None:
            category = np.zeros(len(table), dtype=np.int64)
        source = f"item table of {args.artifacts}"
    else:
        table, category = synthetic_table(args.items, args.dim, args.seed)
        source = "synthetic: items around category centres"
    if args.sample is not None and args.sample < len(table):
        rows = np.sort(np.random.default_rng(args.seed).choice(len(table), args.sample, replace=False))
        table, category = np.ascontiguousarray(table[rows]), category[rows]
        source += f", {args.sample:,} rows drawn at random"
    queries = interest_queries(table, category, args.queries, args.seed)
    table_path, queries_path = work / "table.npy", work / "queries.npy"
    np.save(table_path, table)
    np.save(queries_path, queries)
    print(f"{len(table):,} items × {table.shape[1]} ({source}); {len(queries):,} queries in batches of {args.batch}")

    results = [
        in_child("kind", kind, str(table_path), str(queries_path), str(args.batch)) for kind in args.kinds.split(",")
    ]
    exact_qps = next((r["searches"][0]["qps"] for r in results if r["kind"] == "flat"), None)
    print(f"{'kind':<6} {'build s':>8} {'MiB':>7} {'breadth':>8} {'rerank':>7} {'recall@100':>11} {'q/s':>9} "
          f"{'× exact':>8}")  # fmt: skip
    for result in results:
        for row in result["searches"]:
            row["speedup"] = round(row["qps"] / exact_qps, 1) if exact_qps else None
            print(
                f"{result['kind']:<6} {result['build_s']:>8} {result['index_mib']:>7} {row['breadth']:>8} "
                f"{row.get('rerank_factor') or '':>7} {row['recall@100']:>11.4f} {row['qps']:>9,.0f} "
                f"{row['speedup'] or '':>8}"
            )
    # A sample's start-up would still load the whole model: it is timed only on the whole table.
    worker = in_child("worker", str(args.artifacts)) if args.artifacts is not None and args.sample is None else None
    if worker:
        print(f"worker: start-up {worker['startup_s']} s ({worker['startup_peak_mib']} MiB peak), "
              f"hot swap {worker['swap_s']} s ({worker['swap_peak_mib']} MiB peak)")  # fmt: skip
    report = {
        "table": {"items": len(table), "dim": int(table.shape[1]), "source": source},
        "queries": len(queries),
        "batch": args.batch,
        "kinds": results,
        "worker": worker,
    }
    write_report(args.output, report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
