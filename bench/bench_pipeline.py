#!/usr/bin/env python
"""Broker-free benchmark of the event path: ``Pipeline.process`` on the simulated shop, stage by stage.

Usage::

    python bench/bench_pipeline.py [--events N] [--batches 500,50,5] [--repeats 3] [--output results.json]

It uses the shop and model of ``bench_end_to_end.py`` (simulated and trained once, then cached). For each batch
size and repeat, a fresh :class:`Pipeline` is warmed on the first ``--warmup`` events (batches of 500), the heap
is settled as a worker settles it (``settle_heap`` of the worker), and the next ``--events`` events are processed
in batches of that size. Large batches are a backlog (many events per user); small ones are live traffic at a
low rate, where nearly every event gets its own recommendation.

Printed per batch size: events/s, recommendations/s, process CPU ms per event and per recommendation, and the mean
ms per batch of each stage. The best of the repeats is the one least disturbed by other load on the machine; the
median is printed beside it. No broker, no network: this isolates the pipeline's own cost from the runtime's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
from bench_end_to_end import prepare

from streamrec.model.artifacts import load_artifacts
from streamrec.stream.events import SourceRecord
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.runtime.worker import settle_heap
from streamrec.stream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PARTITIONS = 8
WARMUP_BATCH = 500


def records(rows: list[tuple[str, str, str]], start: int, count: int, now: float) -> list[SourceRecord]:
    """Shop events ``start .. start + count`` as input records, one second old, keyed and partitioned by user."""
    out = []
    for offset in range(start, start + count):
        user, item, kind = rows[offset % len(rows)]
        value = orjson.dumps({"user_id": user, "item_id": item, "event_type": kind, "ts": now - 1.0})
        out.append(SourceRecord(value, user.encode(), hash(user) % PARTITIONS, offset, received_at=now))
    return out


def run_once(artifact_root: Path, rows: list, warmup: int, events: int, batch: int) -> dict[str, Any]:
    settings = Settings(torch_threads=1)
    pipeline = Pipeline(settings, load_artifacts(artifact_root))
    now = time.time()
    warm = records(rows, 0, warmup, now)
    for begin in range(0, len(warm), WARMUP_BATCH):
        pipeline.process(warm[begin : begin + WARMUP_BATCH], now=now)
    measured = records(rows, warmup, events, now)
    del warm
    settle_heap()
    stages: dict[str, float] = {}
    recommendations = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for begin in range(0, len(measured), batch):
        result = pipeline.process(measured[begin : begin + batch], now=now)
        recommendations += len(result.recommendations)
        for stage, seconds in result.stage_seconds.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    batches = -(-events // batch)
    return {
        "events": events,
        "recommendations": recommendations,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "events_per_s": round(events / wall, 1),
        "recommendations_per_s": round(recommendations / wall, 1),
        "cpu_ms_per_event": round(1000 * cpu / events, 4),
        "cpu_ms_per_recommendation": round(1000 * cpu / max(recommendations, 1), 4),
        "stage_ms_per_batch": {stage: round(1000 * seconds / batches, 3) for stage, seconds in stages.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events measured per run")
    parser.add_argument("--warmup", type=int, default=20_000, help="events processed before measuring")
    parser.add_argument("--batches", default="500,50,5", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="runs per batch size (best and median reported)")
    parser.add_argument("--output", type=Path, default=RESULTS / "pipeline.json", help="JSON results file")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # as a worker runs by default (torch_threads)
    artifact_root, rows = prepare()
    if args.warmup + args.events > len(rows):
        raise SystemExit(f"--warmup + --events exceeds the {len(rows):,} cached shop events")
    results: dict[str, Any] = {
        "when": time.strftime("%Y%m%d-%H%M%S"),
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "parameters": vars(args) | {"output": str(args.output)},
        "batch_sizes": {},
    }
    header = (
        f"{'batch':>6} | {'events/s':>9} | {'recs/s':>8} | {'CPU ms/event':>12} | {'CPU ms/rec':>10} | "
        "stages (ms/batch)"
    )
    print(header + "\n" + "-" * len(header))
    for batch in (int(size) for size in args.batches.split(",")):
        runs = [run_once(artifact_root, rows, args.warmup, args.events, batch) for _ in range(args.repeats)]
        best = min(runs, key=lambda run: run["cpu_ms_per_event"])
        median_rate = statistics.median(run["events_per_s"] for run in runs)
        results["batch_sizes"][str(batch)] = {"best": best, "median_events_per_s": median_rate, "runs": runs}
        stages = "  ".join(f"{stage} {ms:.2f}" for stage, ms in best["stage_ms_per_batch"].items())
        print(
            f"{batch:>6} | {best['events_per_s']:>9,.0f} | {best['recommendations_per_s']:>8,.0f} | "
            f"{best['cpu_ms_per_event']:>12.3f} | {best['cpu_ms_per_recommendation']:>10.3f} | {stages}"
            f"   (median {median_rate:,.0f} events/s)"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
