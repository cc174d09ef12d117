#!/usr/bin/env python
"""One worker against two on the same topic: events/s of each and together, and how stale the shared view is.

Usage::

    python bench/bench_scale_out.py [--events 40000] [--broker embedded|kafka] [--output results.json]

The shop and model of ``bench_end_to_end.py`` (cached). For 1 and then 2 workers, on fresh topics of 8 partitions:
the workers are started and, once every partition is owned (two workers: split between them), ``--events`` events
are produced at once; throughput is the events consumed by all workers between the first poll that saw any and
the poll that saw them all, with each worker's share. With two workers the bench also follows how far each lags
behind the other's aggregate records (``streamrec_shared_events_applied_total`` against the other's consumed
events) and reports how long after the last event both held the whole shop's counts. ``--broker kafka`` uses a
local Apache Kafka 4 (``bash .ci/fetch-kafka.sh``), the default the embedded broker. Both brokers run on this
machine, which also hosts the workers: on 2 cores the workers compete with the broker for the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _measure import write_report
from bench_end_to_end import (
    PARTITIONS,
    WORKER_COMMAND,
    Topics,
    event_values,
    preload,
    prepare,
    scrape,
    start_process,
    stop_process,
    value,
    wait_for_metrics,
    worker_env,
)

from streamrec.stream.runtime.network import free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
POLL_S = 0.25


def run(n_workers: int, bootstrap: str, artifacts: Path, rows: list, events: int, log_dir: Path) -> dict[str, Any]:
    topics = Topics.fresh(f"scale{n_workers}")
    topics.create(bootstrap)
    workers = []
    for n in range(n_workers):
        port = free_port()
        env = worker_env(topics, bootstrap, artifacts, port)
        process, log_path = start_process(f"scale{n_workers}-{n}", WORKER_COMMAND, env, log_dir)
        workers.append((process, port, log_path))
    try:
        for process, port, log_path in workers:
            wait_for_metrics(port, process, log_path)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            owned = [value(scrape(port), "streamrec_assigned_partitions") for _, port, _ in workers]
            if sum(owned) == PARTITIONS and all(owned):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"partitions never split over {n_workers} workers: {owned}")
        asyncio.run(preload(bootstrap, topics.events, event_values(rows, 0, events, f"s{n_workers}-")))
        return follow(workers, events)
    finally:
        for process, _, _ in workers:
            stop_process(process)


def follow(workers: list, events: int, timeout_s: float = 300.0) -> dict[str, Any]:
    """Poll every worker until all events are consumed and (two workers) each holds the other's counts."""
    start: tuple[float, list[float]] | None = None
    done: tuple[float, list[float]] | None = None
    lags: list[float] = []
    synced_at = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = time.monotonic()
        samples = [scrape(port) for _, port, _ in workers]
        consumed = [value(s, "streamrec_messages_consumed_total") for s in samples]
        applied = [value(s, "streamrec_shared_events_applied_total") for s in samples]
        if start is None and sum(consumed) > 0:
            start = (now, consumed)
        if done is None and sum(consumed) >= events:
            done = (now, consumed)
        if len(workers) == 2 and start is not None:
            # Events a worker counted that the other has not applied yet (consumed ≈ counted: the shop's events
            # are all valid and new).
            lag = max(consumed[1] - applied[0], consumed[0] - applied[1], 0.0)
            lags.append(lag)
            if done is not None and lag == 0:
                synced_at = now
        if done is not None and (len(workers) == 1 or synced_at is not None):
            break
        time.sleep(max(0.0, now + POLL_S - time.monotonic()))
    if start is None or done is None:
        raise RuntimeError("the workers did not consume every event in time")
    seconds = done[0] - start[0]
    result: dict[str, Any] = {
        "workers": len(workers),
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_s": round((sum(done[1]) - sum(start[1])) / seconds, 1) if seconds > 0 else None,
        "per_worker_events_per_s": [round((d - s) / seconds, 1) for d, s in zip(done[1], start[1], strict=True)],
    }
    if len(workers) == 2:
        result["shared_lag_events_max"] = max(lags) if lags else 0
        result["shared_synced_after_last_event_s"] = round(synced_at - done[0], 2) if synced_at else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale_out.json")
    args = parser.parse_args()
    artifacts, rows = prepare()
    log_dir = RESULTS / "logs" / f"scale-out-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with ExitStack() as stack:
        if args.broker == "kafka":
            from streamrec.stream.app.apache_kafka import ApacheKafka, kafka_unavailable_reason

            reason = kafka_unavailable_reason()
            if reason:
                raise SystemExit(reason)
            broker = stack.enter_context(ApacheKafka(log_dir / "kafka"))
        else:
            from streamrec.stream.app.broker import EmbeddedBroker

            broker = stack.enter_context(EmbeddedBroker(log_path=log_dir / "broker.log"))
        for n_workers in (1, 2):
            result = run(n_workers, broker.bootstrap, artifacts, rows, args.events, log_dir)
            results.append(result)
            print(json.dumps(result))
    one, two = results
    print(
        f"1 worker: {one['events_per_s']:,.0f} events/s; 2 workers: {two['events_per_s']:,.0f} events/s together "
        f"({' + '.join(f'{r:,.0f}' for r in two['per_worker_events_per_s'])}), "
        f"shared view complete {two['shared_synced_after_last_event_s']} s after the last event"
    )
    report = {
        "broker": args.broker,
        "results": results,
    }
    write_report(args.output, report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
