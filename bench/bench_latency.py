#!/usr/bin/env python
"""Latency at fractions of saturation, against the bare loop on the same broker, and the broker's cost in throughput.

Usage::

    python bench/bench_latency.py [--events 20000] [--levels 0.25,0.5,0.9] [--duration 10] [--output latency.json]

On one embedded broker (Tansu), with the shop and model of ``bench_end_to_end.py``:

1. **Backlog throughput.** A worker (kafka runtime, default settings) consumes ``--events`` preloaded events; its
   sustained events/s in 500-event batches (read from its own counter, as ``bench_end_to_end.py`` does).
2. **Live saturation.** Live traffic comes in smaller batches, where a user's events no longer share one list, so
   a worker saturates below its backlog rate. On the same worker, events are sent for ``--probe`` seconds at rising
   rates (``PROBE_SHARES`` of the backlog rate); the worker keeps up while the median latency of the phase's last
   quarter stays within 1.5 × that of its first quarter + 20 ms and under 1 s. Saturation is the highest rate it
   kept up with (or ``--saturation``, given).
3. **Worker latency.** A fresh worker (the probes end in overload) consumes the same preload, then events are sent
   at each ``--levels`` fraction of saturation for ``--duration`` seconds (ts = send time); latency = when the
   bench's consumer received the recommendation − ``ts``: p50 and p99.
4. **Bare loop.** The bare aiokafka loop of ``bench_end_to_end.py`` (consume, decode, produce one message per
   event, await acknowledgements, commit) gets the same preload and then the same absolute rates: the broker's own
   floor at each level.
5. **In-process.** A fresh pipeline processes the same preloaded events in batches of the worker's mean batch size,
   with no broker: the worker's events/s over this is the share of the pipeline's throughput the runtime keeps.

The issue's targets are printed with their verdicts: p99 at 50 % of saturation within 10 ms of the bare loop's, and
the worker keeping ≥ 80 % of the in-process rate. Everything listens on 127.0.0.1; every wait is bounded; every
process is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from _measure import write_report
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
#: Live rates probed, as shares of the backlog rate, rising until the worker falls behind.
PROBE_SHARES = (0.1, 0.15, 0.2, 0.27, 0.35, 0.45, 0.6, 0.8)


def drain(port: int, timeout_s: float = 60.0) -> float:
    """Wait until the worker has committed everything it was sent (its lag gauges read 0 twice in a row, a second
    apart), so that one phase's backlog never counts in the next; returns the seconds it took."""
    started = time.monotonic()
    zero_before = False
    while time.monotonic() - started < timeout_s:
        samples = scrape(port)
        lag = sum(v for (sample, _), v in samples.items() if sample == "streamrec_consumer_lag_messages")
        if lag == 0 and zero_before:
            break
        zero_before = lag == 0
        time.sleep(1.0)
    return round(time.monotonic() - started, 1)


def keeps_up(probe: dict[str, Any]) -> bool:
    """Whether the worker answered the last quarter of a phase about as fast as the first (see the module doc)."""
    first, last = probe.get("p50_first_quarter_ms"), probe.get("p50_last_quarter_ms")
    return first is not None and last is not None and last <= 1.5 * first + 20.0 and last < 1000.0


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
    probe_s: float = 0.0,
    saturation: float | None = None,
) -> dict[str, Any]:
    """Throughput of ``events`` preloaded events, the live saturation when ``probe_s`` > 0, then latency at each
    rate ``rates_of(saturation)`` returns."""
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
        print(f"[{name}] backlog throughput {rate:,.0f} events/s")
        offset = preload_at + events

        def phase(label: str, phase_rate: float, seconds: float) -> dict[str, Any]:
            nonlocal offset
            count = int(phase_rate * seconds)
            phase_events = event_values(rows, offset, count, f"lat{run_id}-{label}-")
            offset += count
            return asyncio.run(latency_phase(bootstrap, topics, phase_events, phase_rate))

        if saturation is not None:
            result["saturation_events_per_s"] = saturation
        elif probe_s:
            result["probes"] = []
            for share in PROBE_SHARES:
                probe = phase(f"probe{share}", share * rate, probe_s) | {"share_of_backlog_rate": share}
                result["probes"].append(probe)
                kept_up = keeps_up(probe)
                print(
                    f"[{name}] probe {share * rate:,.0f}/s: p50 first quarter {probe.get('p50_first_quarter_ms')} "
                    f"ms, last {probe.get('p50_last_quarter_ms')} ms: {'keeps up' if kept_up else 'falls behind'}"
                )
                if not kept_up:
                    break
                result["saturation_events_per_s"] = round(share * rate, 1)
                drain(port)
            if "saturation_events_per_s" not in result:
                raise RuntimeError(f"{name} fell behind even at {PROBE_SHARES[0] * rate:,.0f} events/s")
            print(f"[{name}] live saturation {result['saturation_events_per_s']:,.0f} events/s")
            result["drained_after_probes_s"] = drain(port)
        result["levels"] = []
        for level, phase_rate in rates_of(result.get("saturation_events_per_s", rate)):
            before = scrape(port)
            latency = phase(str(level), phase_rate, duration_s)
            latency["level"] = level
            latency["drained_after_s"] = drain(port) if name != BASELINE else None
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
    parser.add_argument("--probe", type=float, default=6.0, help="seconds of each saturation probe")
    parser.add_argument("--saturation", type=float, help="events/s to take as saturation instead of probing for it")
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
        saturation, probes = args.saturation, None
        if saturation is None:
            # Probing overloads the worker at the end; the levels are measured on a fresh one.
            probes = measure(
                RUNTIME, broker.bootstrap, artifacts, rows, 0, args.events, lambda _: [], 0, log_dir, args.probe
            )
            saturation = probes["saturation_events_per_s"]
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
            saturation=saturation,
        )
        worker["probes"] = None if probes is None else probes.get("probes")
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
        "parameters": {"events": args.events, "levels": levels, "duration_s": args.duration, "probe_s": args.probe},
        "saturation_events_per_s": saturation,
        "worker": worker,
        "bare_loop": bare,
        "in_process": alone,
        "broker_share_of_in_process": round(share, 3),
        "comparison": comparison,
    }
    write_report(args.output, report)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
