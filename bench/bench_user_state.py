#!/usr/bin/env python
"""What a worker's user state costs at a million users: memory per user, restore time, eviction sweep.

Usage::

    python bench/bench_user_state.py [--users 1000000] [--events-per-user 10] [--dim 64] [--output results.json]

Users are built the way the worker builds them (``InterestModel.apply`` on events of a catalogue of 100,000
items, so each holds an interest vector, its recent items and purchases, and the ``top_k``-item list last shown to
them, as the worker keeps it for the online evaluation and the read path) and kept in a ``UserStateStore``.
Reported: resident memory per user (process RSS before and after, divided by the users), the size of a user's
changelog record, the time to decode and restore a partition's records (what a rebalance costs per live user),
and the time of an eviction sweep that drops half the users, and of one that drops none.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import numpy as np
from _measure import rss_mib, write_report

from streamrec.model.events import Event, EventType
from streamrec.stream.metrics import REASON_KINDS, SOURCES
from streamrec.stream.settings import Settings
from streamrec.stream.user_state import InterestModel, ShownList, UserStateStore, decode_state, encode_state

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PARTITIONS = 8
KINDS = (EventType.VIEW, EventType.VIEW, EventType.VIEW, EventType.CLICK, EventType.CART, EventType.BUY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events-per-user", type=int, default=10)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--output", type=Path, default=RESULTS / "user_state.json")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((args.items, args.dim)).astype(np.float32)
    item_ids = [f"item-{n}" for n in range(args.items)]
    interest = InterestModel.from_settings(Settings(), embeddings, {item: n for n, item in enumerate(item_ids)}, "v1")
    picks = rng.integers(0, args.items, size=(args.users, args.events_per_user)).tolist()
    top_k = Settings().top_k
    shown = rng.integers(0, args.items, size=(args.users, top_k)).tolist()
    kinds = rng.integers(0, len(KINDS), size=(args.users, args.events_per_user)).tolist()
    gc.collect()
    before = rss_mib()
    store = UserStateStore()
    started = time.perf_counter()
    now = time.time()
    for user in range(args.users):
        state = interest.new_state(f"user-{user}")
        for step, (item, kind) in enumerate(zip(picks[user], kinds[user], strict=True)):
            interest.apply(state, Event(state.user_id, item_ids[item], KINDS[kind], now - 3_600 + step * 60))
        state.updated_at = now - (user % 2) * 86_400  # half the users idle for a day
        state.last_list = ShownList.of(
            [item_ids[item] for item in shown[user]],
            [SOURCES[(user + n) % len(SOURCES)] for n in range(top_k)],
            [REASON_KINDS[(user + n) % len(REASON_KINDS)] for n in range(top_k)],
            "default",
            now,
        )
        store.put(user % PARTITIONS, state)
    build_s = time.perf_counter() - started
    del picks, kinds, shown
    gc.collect()
    per_user_bytes = (rss_mib() - before) * 1024 * 1024 / args.users

    partition = [store.get(0, f"user-{u}") for u in range(0, args.users, PARTITIONS)]
    records = [encode_state(state) for state in partition if state is not None]
    max_recent = Settings().max_recent_items
    started = time.perf_counter()
    restored = UserStateStore()
    for record in records:
        restored.put(0, decode_state(record, max_recent))
    restore_s = time.perf_counter() - started

    started = time.perf_counter()
    none = store.evict_idle(now - 2 * 86_400)
    sweep_none_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    evicted = store.evict_idle(now - 3_600)
    sweep_half_s = time.perf_counter() - started

    report = {
        "users": args.users,
        "events_per_user": args.events_per_user,
        "dim": args.dim,
        "bytes_per_user": round(per_user_bytes),
        "store_mib": round(per_user_bytes * args.users / 2**20),
        "build_s": round(build_s, 1),
        "changelog_record_bytes": round(float(np.mean([len(r) for r in records]))),
        "restore_users": len(records),
        "restore_us_per_user": round(restore_s / len(records) * 1e6, 1),
        "sweep_evicting_none_ms": round(sweep_none_ms, 3),
        "sweep_evicting_half": {"users": len(evicted), "seconds": round(sweep_half_s, 2)},
    }
    assert not none and len(evicted) == args.users // 2
    for key, value in report.items():
        print(f"{key:>24}: {value}")
    write_report(args.output, report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
