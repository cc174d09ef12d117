#!/usr/bin/env python
"""Latency of the read path: ``GET /recommendations/<user id>`` on a worker's HTTP server.

Usage::

    python bench/bench_read_path.py [--users 100000] [--requests 5000] [--concurrency 1,8]

Fills a worker's user state with ``--users`` users, each holding a 20-item list as a worker keeps it, starts the
worker's own HTTP server (the one that serves ``/metrics``) on 127.0.0.1 and requests random users' lists: one
client at a time for the latency (each request on a new connection, as the server speaks HTTP/1.0), then several
at once for the throughput. A quarter of the requests ask for users this worker does not own (the 421 answer)
or does not know (404). Prints p50/p99/max in ms and requests/s, and writes JSON.
"""

from __future__ import annotations

import argparse
import http.client
import random
import threading
import time
import urllib.parse
from collections import deque
from pathlib import Path

import numpy as np
from _measure import rss_mib, write_report
from prometheus_client import CollectorRegistry

from streamrec.stream.health import Health, start_http_server
from streamrec.stream.read_path import ReadPath, partition_of
from streamrec.stream.runtime.network import free_port
from streamrec.stream.user_state import ShownList, UserState, UserStateStore

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 24
OWNED = set(range(18))  # this worker owns three quarters of the partitions


def filled_store(n_users: int, seed: int = 0) -> tuple[UserStateStore, list[str]]:
    rng = random.Random(seed)
    store = UserStateStore()
    users = [f"user-{n}" for n in range(n_users)]
    sources, reasons = ("ann", "covisitation", "trending"), ("similar_to_recent", "bought_together", "trending")
    for user in users:
        partition = partition_of(user, PARTITIONS)
        if partition not in OWNED:
            continue
        state = UserState(user, deque())
        items = tuple(f"item-{rng.randrange(1_000_000)}" for _ in range(20))
        state.last_list = ShownList.of(items, tuple(rng.choice(sources) for _ in items),
                                    tuple(rng.choice(reasons) for _ in items), "default", time.time())  # fmt: skip
        store.put(partition, state)
    return store, users


def request(port: int, user: str) -> tuple[int, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/recommendations/" + urllib.parse.quote(user, safe=""))
        response = connection.getresponse()
        response.read()
        return response.status, (time.perf_counter() - started) * 1000
    finally:
        connection.close()


def run(port: int, users: list[str], n_requests: int, concurrency: int, seed: int) -> dict:
    rng = random.Random(seed)
    asked = [rng.choice(users) if rng.random() > 0.05 else f"unknown-{n}" for n in range(n_requests)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    work = iter(asked)

    def client() -> None:
        while True:
            with lock:
                user = next(work, None)
            if user is None:
                return
            status, ms = request(port, user)
            with lock:
                latencies.append(ms)
                statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99])
    return {
        "concurrency": concurrency,
        "requests": n_requests,
        "requests_per_s": round(n_requests / seconds, 1),
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(max(latencies), 3),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts")
    parser.add_argument("--output", type=Path, default=RESULTS / "read_path.json")
    args = parser.parse_args()
    store, users = filled_store(args.users)
    read_path = ReadPath(store, lambda item: None, PARTITIONS, lambda: OWNED, lambda p: f"10.0.0.{p}:9400")
    health = Health()
    health.read_path = read_path
    port = free_port()
    server = start_http_server("127.0.0.1", port, health, CollectorRegistry())
    try:
        request(port, users[0])  # warm up
        runs = [run(port, users, args.requests, int(c), seed=n) for n, c in enumerate(args.concurrency.split(","))]
    finally:
        server.shutdown()
    print(f"{len(store)} users held ({rss_mib():.0f} MiB resident); answers: 200 owned, 421 elsewhere, 404 unknown")
    print(f"{'clients':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  statuses")
    for result in runs:
        print(
            f"{result['concurrency']:>8} {result['requests_per_s']:>9.1f} {result['p50_ms']:>8.3f} "
            f"{result['p99_ms']:>8.3f} {result['max_ms']:>8.3f}  {result['statuses']}"
        )
    write_report(args.output, {"users": len(store), "partitions": PARTITIONS, "runs": runs})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
