#!/usr/bin/env python
"""End-to-end benchmark of a streamrec worker on the embedded broker, against a bare aiokafka loop.

Usage::

    python bench/bench_end_to_end.py [--events N] [--rate R] [--duration S] [--runtimes kafka,faust]
                                     [--output results.json]

For the bare loop and each runtime, on fresh topics (8 partitions) of one embedded broker:

1. *throughput*: N events are preloaded, then the worker process is started. Sustained throughput is read
   from the worker's own counter ``streamrec_messages_consumed_total`` (polled every 0.25 s): events counted
   between the first poll that sees it above 0 and the first that sees it reach N, over the time between
   the two polls. Process start, model load and group join are excluded.
2. *latency*: events are produced at a fixed rate (ts = send time) while the bench consumes the output
   topic; latency = time the bench received the output - ``trigger.ts``.

See ``bench/README.md``. Everything binds to 127.0.0.1; every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]

RESULTS = REPO / "bench" / "results"
CACHE = RESULTS / "cache"
SHOP_USERS, SHOP_ITEMS, SHOP_EVENTS, SHOP_SEED = 2_000, 1_000, 100_000, 7
PARTITIONS = 8
POLL_S = 0.25
BASELINE = "bare-aiokafka"
STAGES = ("decode", "validate", "state", "retrieve", "rank", "filter", "publish", "produce", "commit")
# Test-friendly group timing on the embedded broker (it holds a JoinGroup for half the session timeout).
SESSION_TIMEOUT_S, HEARTBEAT_INTERVAL_S = 2.0, 0.5


def client_security() -> dict[str, Any]:
    """TLS/SASL options for the bench's own aiokafka clients, from the same ``STREAMREC_*`` settings the workers it
    starts read, so a bench against a secured cluster secures every client alike."""
    from streamrec.stream.runtime.security import aiokafka_options
    from streamrec.stream.settings import Settings

    return aiokafka_options(Settings())


# --- model and data (one-off, cached) -------------------------------------------------------------------------


def prepare(cache: Path = CACHE, train_budget_s: float = 150.0) -> tuple[Path, list[tuple[str, str, str]]]:
    """Simulated shop events (user, item, type) and a trained artifact root, both cached under ``cache``."""
    from streamrec.stream.settings import Settings

    key = f"shop-u{SHOP_USERS}-i{SHOP_ITEMS}-e{SHOP_EVENTS}-s{SHOP_SEED}"
    directory = cache / key
    directory.mkdir(parents=True, exist_ok=True)
    events_path, artifacts = directory / "events.json", directory / "artifacts"
    if events_path.exists():
        rows = [tuple(row) for row in orjson.loads(events_path.read_bytes())]
        events = None
    else:
        from streamrec.stream.app.simulate import simulate_shop

        print(f"simulating the shop ({SHOP_USERS} users, {SHOP_ITEMS} items, {SHOP_EVENTS} events, seed {SHOP_SEED})")
        events, _catalog = simulate_shop(SHOP_USERS, SHOP_ITEMS, SHOP_EVENTS, SHOP_SEED)
        rows = [(e.user_id, e.item_id, e.event_type.value) for e in events]
    if not (artifacts / "LATEST").exists():
        from streamrec.model.config import TrainConfig
        from streamrec.model.event_log import EventLog
        from streamrec.model.train import train_artifacts
        from streamrec.stream.app.simulate import simulate_shop

        if events is None:
            events, _catalog = simulate_shop(SHOP_USERS, SHOP_ITEMS, SHOP_EVENTS, SHOP_SEED)
        settings = Settings()
        config = TrainConfig(
            max_len=settings.max_recent_items,
            event_weights=dict(settings.event_weights),
            half_life_s=settings.interest_half_life_s,
            ef_search=settings.hnsw_ef_search,
            n_candidates=settings.n_candidates,
            seed=SHOP_SEED,
            max_epochs=30,
            patience=5,
            time_budget_s=train_budget_s,
        )
        print(f"training the model once (budget {train_budget_s:.0f} s; cached in {artifacts}) ...")
        started = time.monotonic()
        train_artifacts(EventLog.from_events(events, name="bench-shop"), artifacts, config, progress=False)
        print(f"trained in {time.monotonic() - started:.0f} s")
    if not events_path.exists():  # written last: its presence means the cache is complete
        events_path.write_bytes(orjson.dumps(rows))
    return artifacts, rows


def event_values(
    rows: list[tuple[str, str, str]], start: int, count: int, prefix: str
) -> list[tuple[str, str, str, str]]:
    """``count`` shop events from ``start`` (cycling): (event_id, user, item, type), no timestamp yet."""
    return [(f"{prefix}{i}", *rows[(start + i) % len(rows)]) for i in range(count)]


def encode_event(event_id: str, user: str, item: str, kind: str, ts: float) -> bytes:
    return orjson.dumps({"event_id": event_id, "user_id": user, "item_id": item, "event_type": kind, "ts": ts})


# --- Kafka helpers -------------------------------------------------------------------------------------------


@dataclass
class Topics:
    events: str
    outputs: str
    dead_letters: str
    state: str
    group: str
    aggregates: str

    @classmethod
    def fresh(cls, name: str) -> Topics:
        suffix = f"{name}-{uuid.uuid4().hex[:8]}"
        return cls(
            f"events-{suffix}",
            f"recs-{suffix}",
            f"dlq-{suffix}",
            f"state-{suffix}",
            f"group-{suffix}",
            f"aggr-{suffix}",
        )

    def env(self) -> dict[str, str]:
        return {
            "STREAMREC_EVENTS_TOPIC": self.events,
            "STREAMREC_RECOMMENDATIONS_TOPIC": self.outputs,
            "STREAMREC_DEAD_LETTER_TOPIC": self.dead_letters,
            "STREAMREC_STATE_TOPIC": self.state,
            "STREAMREC_CONSUMER_GROUP": self.group,
            "STREAMREC_AGGREGATES_TOPIC": self.aggregates,
        }

    def create(self, bootstrap: str) -> None:
        from streamrec.stream.runtime.topics import ensure_topics
        from streamrec.stream.settings import Settings

        settings = Settings(
            bootstrap_servers=bootstrap,
            events_topic=self.events,
            recommendations_topic=self.outputs,
            dead_letter_topic=self.dead_letters,
            state_topic=self.state,
            consumer_group=self.group,
            aggregates_topic=self.aggregates,
            topic_partitions=PARTITIONS,
        )
        counts = ensure_topics(settings, timeout_s=30)
        if counts.get(self.events) != PARTITIONS:
            raise RuntimeError(f"topic {self.events} has {counts.get(self.events)} partitions, not {PARTITIONS}")


async def preload(bootstrap: str, topic: str, events: list[tuple[str, str, str, str]], timeout_s: float = 120) -> float:
    """Produce the events keyed by user id, fresh timestamps, batched; returns events/s of the producer."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        request_timeout_ms=30_000,
        **client_security(),
    )
    await producer.start()
    started = time.perf_counter()
    try:

        async def send_all() -> None:
            pending = []
            now = time.time()
            for n, (event_id, user, item, kind) in enumerate(events):
                value = encode_event(event_id, user, item, kind, round(now + n * 1e-5, 6))
                pending.append(await producer.send(topic, value=value, key=user.encode()))
                if len(pending) >= 5_000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)

        await asyncio.wait_for(send_all(), timeout=timeout_s)
    finally:
        await producer.stop()
    return len(events) / (time.perf_counter() - started)


async def latency_phase(
    bootstrap: str,
    topics: Topics,
    events: list[tuple[str, str, str, str]],
    rate: float,
    drain_s: float = 15.0,
) -> dict[str, Any]:
    """Send ``events`` at ``rate``/s (ts = send time) and time their outputs as the bench receives them."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    prefix = events[0][0].rsplit("-", 1)[0] + "-"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        # The embedded broker parks a fetch that finds no data for about half of fetch_max_wait_ms without
        # waking it when data arrives (default 500 ms: up to +250 ms); keep the measuring consumer's short.
        fetch_max_wait_ms=10,
        **client_security(),
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, **client_security())
    await consumer.start()
    await producer.start()
    latencies: list[float] = []
    sent_at: list[float] = []
    sent_done = asyncio.Event()
    receiver: asyncio.Task | None = None
    try:
        partitions = set()
        deadline = time.monotonic() + 30
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topics.outputs) or set()
            if not partitions:
                await consumer.topics()  # refreshes the metadata
                await asyncio.sleep(0.1)
        if not partitions:
            raise TimeoutError(f"topic {topics.outputs} never appeared")
        tps = [TopicPartition(topics.outputs, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)  # older outputs may still show up (broker end offsets): filtered by id
        for tp in tps:
            await consumer.position(tp)

        async def send() -> int:
            started = time.monotonic()
            sent = 0
            pending = []
            while sent < len(events):
                due = min(len(events), int((time.monotonic() - started) * rate) + 1)
                while sent < due:
                    event_id, user, item, kind = events[sent]
                    value = encode_event(event_id, user, item, kind, time.time())
                    pending.append(await producer.send(topics.events, value=value, key=user.encode()))
                    sent += 1
                await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
            await asyncio.wait_for(asyncio.gather(*pending), timeout=30)
            sent_done.set()
            return sent

        async def receive() -> None:
            last_new = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=50, max_records=2_000)
                received_at = time.time()
                for messages in batches.values():
                    for message in messages:
                        trigger = orjson.loads(message.value)["trigger"]
                        if str(trigger.get("event_id", "")).startswith(prefix):
                            latencies.append(received_at - float(trigger["ts"]))
                            sent_at.append(float(trigger["ts"]))
                            last_new = time.monotonic()
                if sent_done.is_set() and time.monotonic() - last_new > 2.0:
                    return

        receiver = asyncio.create_task(receive())
        sent = await send()
        send_seconds = len(events) / rate
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiver), timeout=drain_s)
    finally:
        if receiver is not None:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
        await producer.stop()
        await consumer.stop()
    ms = np.array(latencies) * 1000
    out: dict[str, Any] = {"sent": sent, "rate": rate, "seconds": send_seconds, "received": len(latencies)}
    if len(ms):
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        out.update(
            p50_ms=round(float(p50), 1),
            p95_ms=round(float(p95), 1),
            p99_ms=round(float(p99), 1),
            max_ms=round(float(ms.max()), 1),
            mean_ms=round(float(ms.mean()), 1),
        )
        # A worker that keeps up answers the last events as fast as the first; one that falls behind, ever slower.
        quarter = (max(sent_at) - min(sent_at)) / 4
        first = ms[np.array(sent_at) <= min(sent_at) + quarter]
        last = ms[np.array(sent_at) >= max(sent_at) - quarter]
        out.update(
            p50_first_quarter_ms=round(float(np.median(first)), 1) if len(first) else None,
            p50_last_quarter_ms=round(float(np.median(last)), 1) if len(last) else None,
        )
    return out


# --- metrics ---------------------------------------------------------------------------------------------------


def scrape(port: int, timeout_s: float = 2.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One /metrics scrape: {(sample name, sorted labels): value}; raises ``OSError`` when unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def histogram_quantiles(before: dict, after: dict, name: str, qs: tuple[float, ...], **labels: str) -> dict[str, Any]:
    """Quantiles (ms) of the observations made between two scrapes, interpolated within buckets like
    PromQL's ``histogram_quantile``."""
    buckets = []
    for (sample, sample_labels), count in after.items():
        if sample != f"{name}_bucket":
            continue
        label_map = dict(sample_labels)
        le = label_map.pop("le")
        if label_map != labels:
            continue
        buckets.append((float(le), count - before.get((sample, sample_labels), 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    out: dict[str, Any] = {"count": int(total)}
    if total <= 0:
        return out
    for q in qs:
        rank, lower, below = q * total, 0.0, 0.0
        for upper, cumulative in buckets:
            if cumulative >= rank:
                if upper == float("inf"):
                    estimate = lower
                else:
                    inside = cumulative - below
                    estimate = lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
                out[f"p{round(q * 100)}_ms"] = round(estimate * 1000, 1)
                break
            lower, below = upper, cumulative
    return out


def stage_breakdown(samples: dict) -> dict[str, Any]:
    """Mean seconds per batch of each stage (``_sum / _count``) and the batch size, from one scrape."""
    stages = {}
    for stage in STAGES:
        count = value(samples, "streamrec_stage_seconds_count", stage=stage)
        total = value(samples, "streamrec_stage_seconds_sum", stage=stage)
        stages[stage] = {
            "batches": int(count),
            "mean_ms": round(1000 * total / count, 3) if count else None,
            "total_s": round(total, 3),
        }
    batches = value(samples, "streamrec_batch_messages_count")
    messages = value(samples, "streamrec_batch_messages_sum")
    return {
        "stages": stages,
        "batches": int(batches),
        "mean_batch_messages": round(messages / batches, 1) if batches else None,
    }


def measure_throughput(
    port: int, target: int, process: subprocess.Popen, timeout_s: float, poll_s: float = POLL_S
) -> dict[str, Any]:
    """Poll the consumed counter every ``poll_s``; rate between the first poll above 0 and the first at target."""
    deadline = time.monotonic() + timeout_s
    first: tuple[float, float] | None = None
    last: tuple[float, float] = (time.monotonic(), 0.0)
    samples: list[tuple[float, float]] = []
    cpu_at: dict[float, float] = {}  # poll time -> the process's CPU seconds (all threads), where it exports them
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} during the throughput phase")
        now = time.monotonic()
        try:
            metrics = scrape(port)
            consumed = value(metrics, "streamrec_messages_consumed_total")
            cpu = value(metrics, "process_cpu_seconds_total")
        except OSError:
            consumed = cpu = None
        if consumed is not None:
            samples.append((now, consumed))
            if cpu is not None:
                cpu_at[now] = cpu
            last = (now, consumed)
            if first is None and consumed > 0:
                first = (now, consumed)
            if consumed >= target:
                break
        time.sleep(max(0.0, now + poll_s - time.monotonic()))
    complete = last[1] >= target
    result: dict[str, Any] = {"target": target, "consumed": int(last[1]), "complete": complete}
    if first is not None and last[0] > first[0]:
        seconds = last[0] - first[0]
        result.update(
            seconds=round(seconds, 3),
            events_per_s=round((last[1] - first[1]) / seconds, 1),
            first_poll_count=int(first[1]),
            first_poll_at=first[0],
        )
        cpu_s = cpu_at[last[0]] - cpu_at[first[0]] if first[0] in cpu_at and last[0] in cpu_at else 0.0
        if cpu_s > 0 and last[1] > first[1]:  # none in a window shorter than the counter's clock tick
            # CPU time per event: unlike events/s, barely moved by other load on a shared machine.
            result.update(
                cpu_s=round(cpu_s, 3),
                cpu_ms_per_event=round(1000 * cpu_s / (last[1] - first[1]), 4),
                events_per_cpu_s=round((last[1] - first[1]) / cpu_s, 1),
            )
        # Cross-check that does not depend on when N was reached between two polls: the rate between the first
        # and the last poll that both saw the worker mid-way (0 < count < N); exact up to one batch.
        busy = [(t, c) for t, c in samples if 0 < c < target]
        if len(busy) >= 2 and busy[-1][0] > busy[0][0]:
            result["busy_events_per_s"] = round((busy[-1][1] - busy[0][1]) / (busy[-1][0] - busy[0][0]), 1)
            result["busy_polls"] = len(busy)
    elif first is not None:
        result["note"] = f"all {target} events were processed within one poll interval: use more --events"
    result["polls"] = [(round(t - samples[0][0], 3), int(c)) for t, c in samples if c > 0][:400] if samples else []
    return result


# --- processes ---------------------------------------------------------------------------------------------------


def wait_for_metrics(port: int, process: subprocess.Popen, log_path: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early ({process.returncode}):\n{tail(log_path)}")
        try:
            scrape(port, timeout_s=1)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no /metrics on 127.0.0.1:{port} after {timeout_s} s:\n{tail(log_path)}")


def tail(path: Path, chars: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""


def stop_process(process: subprocess.Popen, timeout_s: float = 15.0) -> dict[str, Any]:
    """SIGTERM, then SIGKILL after ``timeout_s``."""
    if process.poll() is not None:
        return {"returncode": process.returncode, "killed": False, "stop_s": 0.0}
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    killed = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        killed = True
    return {"returncode": process.returncode, "killed": killed, "stop_s": round(time.monotonic() - started, 2)}


def start_process(name: str, command: list[str], env: dict[str, str], log_dir: Path) -> tuple[subprocess.Popen, Path]:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return process, log_path


# --- one run ----------------------------------------------------------------------------------------------------


WORKER_COMMAND = [sys.executable, "-m", "streamrec.stream.app.cli", "worker", "--log-level", "INFO"]


def worker_env(topics: Topics, bootstrap: str, artifacts: Path, port: int) -> dict[str, str]:
    """A bench worker's settings: the run's topics, metrics on 127.0.0.1:``port``, a quick group join."""
    return {
        **topics.env(),
        "STREAMREC_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMREC_ARTIFACTS_DIR": str(artifacts),
        "STREAMREC_METRICS_HOST": "127.0.0.1",
        "STREAMREC_METRICS_PORT": str(port),
        "STREAMREC_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
        "STREAMREC_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_INTERVAL_S),
        "STREAMREC_TOPIC_PARTITIONS": str(PARTITIONS),
    }


def run_one(
    name: str,
    bootstrap: str,
    artifacts: Path,
    rows: list[tuple[str, str, str]],
    args: argparse.Namespace,
    log_dir: Path,
) -> dict[str, Any]:
    topics = Topics.fresh(name)
    topics.create(bootstrap)
    n = args.events
    first = len(rows) - n - int(args.rate * args.duration) if len(rows) > n + args.rate * args.duration else 0
    run_id = uuid.uuid4().hex[:6]
    preload_events = event_values(rows, first, n, f"pre{run_id}-")
    latency_events = event_values(rows, first + n, int(args.rate * args.duration), f"lat{run_id}-")
    producer_rate = asyncio.run(preload(bootstrap, topics.events, preload_events))
    print(f"[{name}] preloaded {n} events to {topics.events} at {producer_rate:,.0f}/s")

    result: dict[str, Any] = {"runtime": name, "topics": topics.__dict__, "preload_events_per_s": round(producer_rate)}
    started = time.monotonic()
    process, port, log_path = launch(name, topics, bootstrap, artifacts, n, log_dir / f"{name}-{run_id}.log")
    result["log"] = str(log_path)
    try:
        wait_for_metrics(port, process, log_path)
        result["throughput"] = measure_throughput(
            port, n, process, timeout_s=args.throughput_timeout, poll_s=args.poll_interval
        )
        first_at = result["throughput"].pop("first_poll_at", None)
        result["start_to_first_event_s"] = round(first_at - started, 2) if first_at else None
        after_throughput = scrape(port)
        if name != BASELINE:
            result["stage_breakdown"] = stage_breakdown(after_throughput)
        else:
            seconds = value(after_throughput, "bench_window_seconds")
            if seconds > 0:
                exact = value(after_throughput, "bench_window_events") / seconds
                result["throughput"]["exact_events_per_s"] = round(exact, 1)
                result["throughput"]["exact_seconds"] = round(seconds, 4)
        tp = result["throughput"]
        cpu = f"; {tp['cpu_ms_per_event']} ms CPU per event" if "cpu_ms_per_event" in tp else ""
        print(
            f"[{name}] throughput: {tp.get('events_per_s', 0):,.0f} events/s "
            f"({tp['consumed']}/{n} consumed{'' if tp['complete'] else ', INCOMPLETE'}){cpu}"
        )
        if not tp["complete"]:
            print(f"[{name}] worker log tail:\n{tail(log_path, 2000)}")
            result["latency"] = {"skipped": "throughput phase incomplete: a backlog would distort latency"}
            return result

        before = scrape(port)
        result["latency"] = asyncio.run(latency_phase(bootstrap, topics, latency_events, args.rate))
        time.sleep(0.5)
        after = scrape(port)
        if name != BASELINE:
            result["worker_histogram"] = {
                clock: histogram_quantiles(
                    before, after, "streamrec_event_to_recommendation_seconds", (0.5, 0.95, 0.99), clock=clock
                )
                for clock in ("event_time", "consume_time")
            }
            result["latency_stage_breakdown"] = stage_delta(before, after)
            result["dead_letters"] = {
                dict(labels)["reason"]: int(v)
                for (sample, labels), v in after.items()
                if sample == "streamrec_events_invalid_total" and v
            }
        lat = result["latency"]
        print(
            f"[{name}] latency at {args.rate:.0f}/s: {lat['received']}/{lat['sent']} outputs, "
            f"p50 {lat.get('p50_ms')} ms, p95 {lat.get('p95_ms')} ms, p99 {lat.get('p99_ms')} ms"
        )
    finally:
        result["stop"] = stop_process(process)
        result["wall_s"] = round(time.monotonic() - started, 1)
        if result["stop"]["killed"] or result["stop"]["returncode"] not in (0, -signal.SIGTERM):
            print(f"[{name}] stopped with {result['stop']}; log tail:\n{tail(log_path, 1500)}")
    return result


def launch(
    name: str, topics: Topics, bootstrap: str, artifacts: Path, events: int, log_path: Path
) -> tuple[subprocess.Popen, int, Path]:
    """Start the bare loop (``name`` = :data:`BASELINE`) or a worker of runtime ``name`` on ``topics``; returns the
    process, its metrics port and its log."""
    from streamrec.stream.runtime.network import free_port

    port = free_port()
    if name == BASELINE:
        command = [
            *(sys.executable, str(Path(__file__).resolve()), "--bare-loop", "--bootstrap", bootstrap),
            *("--events-topic", topics.events, "--outputs-topic", topics.outputs, "--group", topics.group),
            *("--metrics-port", str(port), "--events", str(events)),
        ]
        env: dict[str, str] = {}
    else:
        command = WORKER_COMMAND
        env = worker_env(topics, bootstrap, artifacts, port) | {"STREAMREC_RUNTIME": name}
    process, log = start_process(log_path.stem, command, env, log_path.parent)
    return process, port, log


def stage_delta(before: dict, after: dict) -> dict[str, Any]:
    """Stage breakdown of the batches between two scrapes."""
    diff = {key: after[key] - before.get(key, 0.0) for key in after}
    return stage_breakdown(diff)


# --- the bare loop baseline (run as its own process) -----------------------------------------------------------


async def bare_loop(
    bootstrap: str, events_topic: str, outputs_topic: str, group: str, metrics_port: int, target: int
) -> None:
    """Consume in batches of ≤500, decode each with orjson, produce one small JSON per input keyed by user,
    await the acknowledgements, commit. Exposes ``streamrec_messages_consumed_total`` like a worker."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import OffsetAndMetadata
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    registry = CollectorRegistry()
    consumed = Counter("streamrec_messages_consumed_total", "Input messages read.", registry=registry)
    # Exact timing of the same window the bench polls for (first count > 0 -> count >= target), to check the
    # polled figure, which is coarse when the whole window lasts only a few polls.
    window_seconds = Gauge("bench_window_seconds", "First batch counted -> target counted.", registry=registry)
    window_events = Gauge("bench_window_events", "Events counted after the first batch.", registry=registry)
    start_http_server(metrics_port, addr="127.0.0.1", registry=registry)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Same client settings as the worker's kafka runtime.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024, **client_security()
    )
    consumer = AIOKafkaConsumer(
        events_topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(SESSION_TIMEOUT_S * 1000),
        heartbeat_interval_ms=int(HEARTBEAT_INTERVAL_S * 1000),
        max_poll_records=500,
        # As the worker (fetch_max_wait_ms = its batch wait): the embedded broker parks an empty fetch for about
        # half of it even when data arrives, so the default 500 ms would put a 250 ms step into the floor's tail.
        fetch_max_wait_ms=20,
        **client_security(),
    )
    await producer.start()
    await consumer.start()
    total, first_at, first_count = 0, 0.0, 0
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=20, max_records=500)
            if not fetched:
                continue
            outputs = []
            offsets = {}
            for tp, messages in fetched.items():
                for message in messages:
                    event = orjson.loads(message.value)
                    outputs.append(
                        (
                            message.key,
                            orjson.dumps(
                                {
                                    "user_id": event["user_id"],
                                    "trigger": {"event_id": event["event_id"], "ts": event["ts"]},
                                    "generated_at": time.time(),
                                }
                            ),
                        )
                    )
                offsets[tp] = OffsetAndMetadata(messages[-1].offset + 1, "")
            batch = sum(len(m) for m in fetched.values())
            consumed.inc(batch)
            total += batch
            if first_count == 0:
                first_at, first_count = time.perf_counter(), total
            elif total >= target > total - batch:
                window_seconds.set(time.perf_counter() - first_at)
                window_events.set(total - first_count)
            pending = [await producer.send(outputs_topic, value=v, key=k) for k, v in outputs]
            await asyncio.gather(*pending)
            await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()


# --- report -----------------------------------------------------------------------------------------------------


def headline_rate(result: dict[str, Any]) -> float | None:
    """Events/s of a run: the polled window for workers; for the bare loop its exact in-process timing of the
    same window when present (its whole window lasts only a few polls at the default sizes)."""
    tp = result.get("throughput", {})
    return tp.get("exact_events_per_s") or tp.get("events_per_s")


def print_table(results: list[dict[str, Any]]) -> None:
    base = next((r for r in results if r["runtime"] == BASELINE), {})
    base_rate = headline_rate(base)
    header = (
        f"{'runtime':<15}| {'events/s':>9} | {'p50 ms':>7} | {'p95 ms':>7} | {'p99 ms':>7} | {'ratio to bare loop':>18}"
    )
    print("\n" + header)
    print("-" * len(header))
    for r in results:
        rate = headline_rate(r)
        lat = r.get("latency", {})
        ratio = f"{rate / base_rate:.3f}" if rate and base_rate else "-"
        rate_s = f"{rate:,.0f}" if rate else "-"
        if rate and not r["throughput"]["complete"]:
            rate_s += "*"
        print(
            f"{r['runtime']:<15}| {rate_s:>9} | {lat.get('p50_ms', '-'):>7} | {lat.get('p95_ms', '-'):>7} | "
            f"{lat.get('p99_ms', '-'):>7} | {ratio:>18}"
        )
    if base.get("throughput", {}).get("exact_events_per_s"):
        tp = base["throughput"]
        print(
            f"bare loop events/s: exact in-process timing of the window ({tp['exact_seconds']} s); polled every "
            f"{POLL_S} s it read {tp.get('events_per_s', '-')} events/s"
        )
    print("\nthroughput window (first poll with count > 0 -> first poll at N) and the mid-way cross-check:")
    for r in results:
        tp = r.get("throughput", {})
        if not tp:
            print(f"  {r['runtime']}: {r.get('error', 'no result')}")
            continue
        polls = sum(1 for _t, c in tp.get("polls", []) if c > 0)
        warn = "  (short window: few polls, use more --events)" if tp.get("seconds", 0) < 2.0 else ""
        print(
            f"  {r['runtime']}: {tp.get('seconds')} s over {polls} polls; mid-way rate "
            f"{tp.get('busy_events_per_s', '-')} events/s; start to first event {r.get('start_to_first_event_s')} s"
            f"{warn}"
        )
    for r in results:
        if "stage_breakdown" not in r:
            continue
        sb = r["stage_breakdown"]
        print(
            f"\n{r['runtime']}: mean ms per batch, throughput phase ({sb['batches']} batches, "
            f"{sb['mean_batch_messages']} messages/batch)"
        )
        print("  " + "  ".join(f"{s}={v['mean_ms']}" for s, v in sb["stages"].items()))
        hist = r.get("worker_histogram", {})
        for clock, h in hist.items():
            print(
                f"  worker histogram {clock}: n={h.get('count')} p50={h.get('p50_ms')} p95={h.get('p95_ms')} "
                f"p99={h.get('p99_ms')} ms"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events preloaded for the throughput phase")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s of the latency phase")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the latency phase")
    parser.add_argument("--runtimes", default="kafka,faust", help="worker runtimes to measure, comma separated")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare aiokafka loop")
    parser.add_argument("--output", type=Path, default=RESULTS / "end_to_end.json", help="JSON results file")
    parser.add_argument("--poll-interval", type=float, default=POLL_S, help="seconds between /metrics polls")
    parser.add_argument("--throughput-timeout", type=float, default=120.0, help="most seconds of a throughput phase")
    # internal: the bare-loop baseline process
    parser.add_argument("--bare-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--events-topic", help=argparse.SUPPRESS)
    parser.add_argument("--outputs-topic", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.bare_loop:
        asyncio.run(
            bare_loop(args.bootstrap, args.events_topic, args.outputs_topic, args.group, args.metrics_port, args.events)
        )
        return 0

    from streamrec.stream.app.broker import EmbeddedBroker

    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = set(runtimes) - {"kafka", "faust"}
    if unknown:
        parser.error(f"unknown runtimes {sorted(unknown)}")
    started = time.monotonic()
    artifacts, rows = prepare()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    names = ([] if args.no_baseline else [BASELINE]) + runtimes
    with EmbeddedBroker(log_path=log_dir / "broker.log") as broker:
        print(f"broker on {broker.bootstrap}; logs in {log_dir}")
        for name in names:
            try:
                results.append(run_one(name, broker.bootstrap, artifacts, rows, args, log_dir))
            except Exception as exc:  # report the others even if one runtime fails
                print(f"[{name}] FAILED: {exc!r}")
                results.append({"runtime": name, "error": repr(exc)})
    print_table(results)
    report = {
        "when": stamp,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "parameters": {
            "events": args.events,
            "rate": args.rate,
            "duration_s": args.duration,
            "partitions": PARTITIONS,
            "shop": {"users": SHOP_USERS, "items": SHOP_ITEMS, "events": SHOP_EVENTS, "seed": SHOP_SEED},
            "session_timeout_s": SESSION_TIMEOUT_S,
            "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
            "artifacts": str(artifacts),
        },
        "results": results,
        "total_s": round(time.monotonic() - started, 1),
    }
    base = next((r for r in results if r["runtime"] == BASELINE), {})
    base_rate, base_polled = headline_rate(base), base.get("throughput", {}).get("events_per_s")
    for r in results:
        rate = headline_rate(r)
        r["events_per_s"] = rate
        r["ratio_to_bare_loop"] = round(rate / base_rate, 4) if rate and base_rate else None
        polled = r.get("throughput", {}).get("events_per_s")
        r["ratio_to_bare_loop_polled"] = round(polled / base_polled, 4) if polled and base_polled else None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.output} (total {report['total_s']:.0f} s)")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
