#!/usr/bin/env python
"""New items in a stream replay: how soon a worker recommends them, and how often their shoppers had them shown.

Usage::

    python bench/bench_new_items_replay.py --dataset shop [--batch 64] [--optimism 0,0.5,1]

Reads what ``bench/bench_cold_items.py --dataset <d>`` left in ``bench/results/cold_items/<d>/`` (the event log, the
catalogue and the model trained with a tenth of the items held out) and replays the whole log through the real
``Pipeline`` (no broker), once per setting: exploration on (the default share) or off, and learning from shoppers on
(``new_item_learning_events``, default) or off, and learning with its rows served at their expected length
(``new_item_optimism=0``) rather than a trained row's full length. The trained items' catalogue records are
applied first; the held-out items are listed at the start of the replay, as a collection dropped into a running
shop. Events go in
time order, ``--batch`` at a time, as a worker consumes them: a user with several events in a batch is answered
once, for the latest, and each event is checked against the list the user was last shown before its batch.

Per setting it prints: how many new items were recommended at all, the replayed events until each one's first
recommendation (median and 90th percentile over those recommended), the interactions on new items whose item was
in the user's last published list before it (**shown first**: a recommendation that could have led to it), the
shares of published slots that held a new item and an exploration item, and HR@10 of every published list against
the user's next event (what the rest of the catalogue pays). Every figure is measured in this run.

``--optimism`` replays the defaults at each listed ``new_item_optimism`` instead (report
``<dataset>-new-items-optimism.json``): the choice of that setting, made on ``shop-validation``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "cold_items"
DOCS = REPO / "docs" / "eval"
SETTINGS = {
    "exploration+learning": {},
    "exploration+learning, expected length": {"new_item_optimism": 0.0},
    "exploration only": {"new_item_learning_events": 0},
    "learning only": {"exploration_share": 0.0},
    "neither": {"exploration_share": 0.0, "new_item_learning_events": 0},
}


def replay(directory: Path, overrides: dict[str, Any], batch: int) -> dict[str, Any]:
    import math

    from bench_cold_items import INPUTS

    from streamrec.model.artifacts import load_artifacts
    from streamrec.model.cold_items import HeldOutItems
    from streamrec.model.events import EVENT_TYPES
    from streamrec.stream.app.event_files import load_events
    from streamrec.stream.catalog import parse_catalog_item
    from streamrec.stream.events import SourceRecord
    from streamrec.stream.pipeline import Pipeline
    from streamrec.stream.settings import Settings

    events_path, catalog_path = INPUTS[directory.name](directory)
    log = load_events(events_path)  # sorted by time
    artifacts = load_artifacts(directory / "defaults.artifacts")
    held = HeldOutItems.recorded(log, artifacts.manifest["held_out_items"])
    new_items = set(held.items)
    users_of, items_of = log.user_ids.astype(str), log.item_ids.astype(str)
    events = [
        {"user_id": u, "item_id": i, "event_type": EVENT_TYPES[int(t)], "ts": float(ts)}
        for u, i, t, ts in zip(users_of, items_of, log.event_types, log.timestamps, strict=True)
    ]
    lines = [orjson.dumps(event) for event in events]

    # A replay of a historical log: any event time is accepted, as `streamrec eval` replays.
    base = {"top_k": 10, "random_seed": 0, "min_event_ts": -math.inf, "max_clock_skew_s": math.inf}
    settings = Settings(**(base | overrides))
    pipeline = Pipeline(settings, artifacts)
    rules, max_bytes = pipeline.intake.rules, settings.max_payload_bytes
    records = [orjson.loads(line) for line in catalog_path.read_bytes().splitlines() if line.strip()]
    items = [parse_catalog_item(orjson.dumps(r), str(r["item_id"]).encode(), rules, max_bytes) for r in records]
    trained = [item for item in items if item.item_id not in new_items]
    listed = [item for item in items if item.item_id in new_items]
    pipeline.apply_catalog(trained, pipeline.text_vectors(trained))
    pipeline.apply_catalog(listed, pipeline.text_vectors(listed))

    first_shown: dict[str, int] = {}
    previous_item: dict[str, str] = {}
    new_interactions = shown_first = 0
    slots = new_slots = explore_slots = 0
    hits = scored = 0
    last_list: dict[str, list[str]] = {}
    started = time.perf_counter()
    for begin in range(0, len(events), batch):
        chunk = range(begin, min(begin + batch, len(events)))
        position = chunk.stop
        for i in chunk:
            user, item = events[i]["user_id"], events[i]["item_id"]
            if user in last_list:
                scored += 1
                hits += item in last_list[user][:10]
            if item in new_items and previous_item.get(user) != item:  # an interaction opens
                new_interactions += 1
                shown_first += item in last_list.get(user, ())
            previous_item[user] = item
        batch_records = [
            SourceRecord(lines[i], events[i]["user_id"].encode(), 0, i, received_at=events[i]["ts"]) for i in chunk
        ]
        result = pipeline.process(batch_records, now=events[chunk[-1]]["ts"])
        for message in result.recommendations:
            rec = orjson.loads(message.value)
            listed_ids = [entry["item_id"] for entry in rec["items"]]
            last_list[rec["user_id"]] = listed_ids
            slots += len(listed_ids)
            explore_slots += sum(bool(entry.get("explore")) for entry in rec["items"])
            for item_id in listed_ids:
                if item_id in new_items:
                    new_slots += 1
                    first_shown.setdefault(item_id, position)
    waits = np.array(sorted(first_shown.values()), dtype=float)
    in_log = set(items_of.tolist()) & new_items
    return {
        "settings": overrides,
        "new_items": len(new_items),
        "new_items_in_log": len(in_log),
        "new_items_recommended": len(first_shown),
        "events_to_first_recommendation": {
            "median": float(np.median(waits)) if len(waits) else None,
            "p90": float(np.percentile(waits, 90)) if len(waits) else None,
        },
        "new_item_interactions": new_interactions,
        "shown_first": shown_first,
        "shown_first_share": round(shown_first / max(1, new_interactions), 4),
        "new_item_slot_share": round(new_slots / max(1, slots), 4),
        "explore_slot_share": round(explore_slots / max(1, slots), 4),
        "hr@10_next_event": round(hits / max(1, scored), 4),
        "lists": scored,
        "replayed_events": len(events),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="shop", help="a dataset bench_cold_items.py has run on")
    parser.add_argument("--batch", type=int, default=64, help="most events per replayed batch")
    parser.add_argument("--optimism", help="comma-separated new_item_optimism values to replay the defaults at")
    args = parser.parse_args()
    settings, report = SETTINGS, f"{args.dataset}-new-items-replay.json"
    if args.optimism:
        try:
            values = [float(value) for value in args.optimism.split(",")]
        except ValueError:
            raise SystemExit(f"--optimism takes numbers separated by commas, got {args.optimism!r}") from None
        settings = {f"optimism {value:g}": {"new_item_optimism": value} for value in values}
        report = f"{args.dataset}-new-items-optimism.json"
    directory = RESULTS / args.dataset
    if not (directory / "defaults.artifacts").exists():
        raise SystemExit(
            f"no model in {directory}: run python bench/bench_cold_items.py --dataset {args.dataset} first"
        )
    results = {}
    for name, overrides in settings.items():
        results[name] = replay(directory, overrides, args.batch)
        print(f"{name}: {results[name]['seconds']} s", flush=True)
    header = f"{'setting':<40}{'recommended':>12}{'median wait':>12}{'shown first':>12}{'new slots':>10}{'HR@10':>8}"
    print(header)
    for name, r in results.items():
        wait = r["events_to_first_recommendation"]["median"]
        print(
            f"{name:<40}{r['new_items_recommended']:>6}/{r['new_items']:<5}{wait if wait is not None else '-':>12}"
            f"{r['shown_first']:>6}/{r['new_item_interactions']:<5}{r['new_item_slot_share']:>10.4f}"
            f"{r['hr@10_next_event']:>8.4f}"
        )
    out = DOCS / report
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
