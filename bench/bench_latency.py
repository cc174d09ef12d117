#!/usr/bin/env python
"""Latency at fractions of saturation, against the bare loop on the same broker, and the broker's cost in throughput.

Usage::

    python bench/bench_latency.py [--events 20000] [--levels 0.25,0.5,0.9] [--duration 10] [--output latency.json]

On one embedded broker (Tansu), with the shop and model of ``bench_end_to_end.py``:

1. **Worker saturation.** A worker (kafka runtime, default settings) consumes ``--events`` preloaded events; its
   sustained events/s is saturation (read from its own counter, as ``bench_end_to_end.py`` does).
2. **Worker latency.** On the same worker, events are then sent at each ``--levels`` fraction of that rate for
   ``--duration`` seconds (ts = send time); latency = when the bench's consumer received the recommendation −
   ``ts``: p50 and p99 per level.
3. **Bare loop.** The bare aiokafka loop of ``bench_end_to_end.py`` (consume, decode, produce one message per
   event, await acknowledgements, commit) gets the same preload and then the same absolute rates: the broker's own
   floor at each level.
4. **In-process.** A fresh pipeline processes the same preloaded events in batches of the worker's mean batch size,
   with no broker: the worker's events/s over this is the share of the pipeline's throughput the runtime keeps.

The issue's targets are printed with their verdicts: p99 at 50 % of saturation within 10 ms of the bare loop's, and
the worker keeping ≥ 80 % of the in-process rate. Everything listens on 127.0.0.1; every wait is bounded; every
process is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any

from bench_end_to_end import (
    BASELINE,
    RESULTS,
    Topics,
    event_values,
    histogram_quantiles,
    latency_phase,
    launch,
    measure_throughput,
    preload,
    prepare,
    scrape,
    stage_breakdown,
    stop_process,
    tail,
    wait_for_metrics,
)
from bench_pipeline import records

P99_GAP_TARGET_MS = 10.0
BROKER_SHARE_TARGET = 0.8
RUNTIME = "kafka"


def measure(
    name: str,
    bootstrap: str,
    artifacts: Path,
    rows: list[tuple[str, str, str]],
    preload_at: int,
    events: int,
    rates_of: Any,
    duration_s: float,
    log_dir: Path,
) -> dict[str, Any]:
    """Throughput of ``events`` preloaded events, then latency at each rate ``rates_of(saturation)`` returns."""
    topics = Topics.fresh(name)
    topics.create(bootstrap)
    run_id = uuid.uuid4().hex[:6]
    asyncio.run(preload(bootstrap, topics.events, event_values(rows, preload_at, events, f"pre{run_id}-")))
    process, port, log_path = launch(name, topics, bootstrap, artifacts, events, log_dir / f"{name}-{run_id}.log")
    result: dict[str, Any] = {"runtime": name, "log": str(log_path)}
    try:
        wait_for_metrics(port, process, log_path)
        throughput = measure_throughput(port, events, process, timeout_s=180)
        throughput.pop("polls", None)
        throughput.pop("first_poll_at", None)
        result["throughput"] = throughput
        if not throughput["complete"]:
            raise RuntimeError(f"{name} did not consume the preload in time:\n{tail(log_path, 2000)}")
        if name != BASELINE:
            result["stage_breakdown"] = stage_breakdown(scrape(port))
        rate = throughput.get("busy_events_per_s") or throughput["events_per_s"]
        print(f"[{name}] throughput {rate:,.0f} events/s")
        result["levels"] = []
        offset = preload_at + events
        for level, phase_rate in rates_of(rate):
            count = int(phase_rate * duration_s)
            phase_events = event_values(rows, offset, count, f"lat{run_id}-{level}-")
            offset += count
            before = scrape(port)
            latency = asyncio.run(latency_phase(bootstrap, topics, phase_events, phase_rate))
            time.sleep(0.5)
            latency["level"] = level
            if name != BASELINE:
                after = scrape(port)
                latency["worker_event_time"] = histogram_quantiles(
                    before, after, "streamrec_event_to_recommendation_seconds", (0.5, 0.99), clock="event_time"
                )
            result["levels"].append(latency)
            print(
                f"[{name}] {level:.0%} ({phase_rate:,.0f}/s): p50 {latency.get('p50_ms')} ms, "
                f"p99 {latency.get('p99_ms')} ms ({latency['received']}/{latency['sent']} outputs)"
            )
    finally:
        result["stop"] = stop_process(process)
    return result


def in_process(artifacts: Path, rows: list, preload_at: int, events: int, batch: int) -> dict[str, Any]:
    """The same events through a fresh pipeline in batches of ``batch``, no broker."""
    from streamrec.model.artifacts import load_artifacts
    from streamrec.stream.pipeline import Pipeline
    from streamrec.stream.settings import Settings

    pipeline = Pipeline(Settings(), load_artifacts(artifacts))
    now = time.time()
    measured = records(rows, preload_at, events, now)
    wall, cpu = time.perf_counter(), time.process_time()
    for begin in range(0, len(measured), batch):
        pipeline.process(measured[begin : begin + batch], now=now)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "batch": batch,
        "events_per_s": round(events / wall, 1),
        "cpu_ms_per_event": round(1000 * cpu / events, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events preloaded for the throughput phase")
    parser.add_argument("--levels", default="0.25,0.5,0.9", help="fractions of the worker's saturation")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each latency phase")
    parser.add_argument("--output", type=Path, default=RESULTS / "latency.json", help="JSON results file")
    args = parser.parse_args(argv)
    levels = [float(level) for level in args.levels.split(",")]

    import torch

    from streamrec.stream.app.broker import EmbeddedBroker

    torch.set_num_threads(1)
    artifacts, rows = prepare()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_path=log_dir / "broker.log") as broker:
        print(f"broker on {broker.bootstrap}; logs in {log_dir}")
        worker = measure(
            RUNTIME,
            broker.bootstrap,
            artifacts,
            rows,
            0,
            args.events,
            lambda saturation: [(level, level * saturation) for level in levels],
            args.duration,
            log_dir,
        )
        rates = [(phase["level"], phase["rate"]) for phase in worker["levels"]]
        bare = measure(
            BASELINE, broker.bootstrap, artifacts, rows, 0, args.events, lambda _: rates, args.duration, log_dir
        )
    batch = max(1, round(worker["stage_breakdown"]["mean_batch_messages"] or 1))
    alone = in_process(artifacts, rows, 0, args.events, batch)
    worker_rate = worker["throughput"].get("busy_events_per_s") or worker["throughput"]["events_per_s"]
    share = worker_rate / alone["events_per_s"]
    comparison = []
    print(
        f"\n{'level':>6} | {'rate/s':>7} | {'worker p50':>10} | {'worker p99':>10} | {'bare p50':>8} | "
        f"{'bare p99':>8} | {'p99 gap':>7}"
    )
    for ours, floor in zip(worker["levels"], bare["levels"], strict=True):
        gap = round(ours["p99_ms"] - floor["p99_ms"], 1) if "p99_ms" in ours and "p99_ms" in floor else None
        comparison.append({"level": ours["level"], "rate": ours["rate"], "p99_gap_ms": gap})
        print(
            f"{ours['level']:>6.0%} | {ours['rate']:>7,.0f} | {ours.get('p50_ms', '-'):>10} | "
            f"{ours.get('p99_ms', '-'):>10} | {floor.get('p50_ms', '-'):>8} | {floor.get('p99_ms', '-'):>8} | "
            f"{gap if gap is not None else '-':>7}"
        )
    half = next((row for row in comparison if row["level"] == 0.5), None)
    print(
        f"\nthroughput: worker {worker_rate:,.0f} events/s through the broker, in-process {alone['events_per_s']:,.0f} "
        f"on batches of {batch}: {share:.2f} (target ≥ {BROKER_SHARE_TARGET})"
    )
    if half is not None and half["p99_gap_ms"] is not None:
        verdict = "met" if half["p99_gap_ms"] <= P99_GAP_TARGET_MS else "missed"
        print(f"p99 at 50 % of saturation: {half['p99_gap_ms']} ms above the bare loop ({verdict}, target ≤ 10 ms)")
    report = {
        "when": stamp,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "parameters": {"events": args.events, "levels": levels, "duration_s": args.duration},
        "worker": worker,
        "bare_loop": bare,
        "in_process": alone,
        "broker_share_of_in_process": round(share, 3),
        "comparison": comparison,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
