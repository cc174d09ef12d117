#!/usr/bin/env python
"""What the compressed rankers cost in quality and buy in speed and size, on a trained model (Amazon Beauty).

Usage::

    python bench/bench_compression.py [--artifacts /tmp/beauty-art] [--distilled /tmp/beauty-distill]
                                      [--forms none,int8,distilled,distilled_int8] [--timing-only | --quality-only]

For each form of ``STREAMREC_RANKER_COMPRESSION`` it records:

* **quality** on the test split, as ``STREAMREC_RANKER_COMPRESSION=<form> streamrec eval`` reports it
  (``stream/app/served_eval.py``): the served HR@10 / NDCG@10 of the replay of every user's history through the
  real pipeline (the setting applied where workers apply it), and the offline full-ranking HR@10 / NDCG@10 of the
  form's ranker alone and of its served score (ranker + item-kNN blend);
* **speed**: the worker's ranker call (``stream/rank.py``'s ``rank_candidates``) on one torch thread, for batches
  of 3 and 100 real users' histories (test split, the last ``max_len`` items) × 150 candidates each; the forms are
  timed in turns (``--calls`` calls per batch size in a turn, averaged), and the median of ``--repeats`` turns is
  kept, with the spread between the fastest and slowest turn;
* **size**: bytes of the ranker's weights as served (int8 weights at 1 byte) with and without the item table,
  which stays float32 for retrieval, and the encoder's parameter count apart from the table.

The distilled forms serve the student that ``streamrec distill`` added to ``--distilled``; when that directory has
none, the bench copies ``--artifacts`` there and runs ``streamrec distill`` on it, as a user would (its log goes to
``bench/results/logs/compression/``). ``--artifacts`` itself is never modified; the other forms are measured on the
teacher inside ``--distilled``, an unchanged copy. Results go to ``bench/results/compression.json``; with
``--timing-only`` or ``--quality-only`` the other half is kept from that file.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from _measure import write_report

from streamrec.model.artifacts import ModelArtifacts, load_artifacts
from streamrec.model.compress import RANKER_COMPRESSIONS, encoder_parameter_count, weight_bytes, with_compressed_ranker
from streamrec.model.config import RankerCompression
from streamrec.model.evaluate import last_items
from streamrec.model.event_log import EventLog
from streamrec.model.ranker import SequenceRanker
from streamrec.model.splits import LeaveOneOutSplit, leave_one_out
from streamrec.stream.app.event_files import load_events
from streamrec.stream.app.served_eval import evaluate
from streamrec.stream.rank import rank_candidates
from streamrec.stream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
EVENTS = REPO.parent / "shared" / "data" / "amazon-beauty" / "Beauty.txt"
BATCH_SIZES = (3, 100)
CANDIDATES_PER_USER = 150


def distilled_artifacts(source: Path, target: Path, events: Path) -> Path:
    """``target`` holding a student: as found, or a copy of ``source`` on which ``streamrec distill`` was run."""
    if target.exists():
        if load_artifacts(target).student is not None:
            return target
        raise SystemExit(f"{target} holds no distilled student: remove it, or run streamrec distill on it")
    shutil.copytree(source, target)
    logs = RESULTS / "logs" / "compression"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"distill-{time.strftime('%Y%m%dT%H%M%S')}.log"
    command = [sys.executable, "-m", "streamrec.stream.app.cli", "distill", "--artifacts", str(target)]
    command += ["--events", str(events)]
    print(f"running {' '.join(command[2:])} (log: {log})", flush=True)
    started = time.perf_counter()
    with log.open("wb") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise SystemExit(f"streamrec distill failed ({code}); see {log}")
    print(f"distilled in {time.perf_counter() - started:.0f} s", flush=True)
    return target


def quality(
    log: EventLog, artifacts: ModelArtifacts, form: RankerCompression, served_users: int | None, seed: int = 0
) -> dict[str, Any]:
    """What ``STREAMREC_RANKER_COMPRESSION=<form> streamrec eval`` reports: the served replay, and the offline
    full-ranking figures of the form's ranker alone and of its served score (ranker + item-kNN blend)."""
    report = evaluate(
        log, artifacts, seed=seed, settings=Settings(ranker_compression=form), served_max_users=served_users
    )
    served, results = report["served"], report["results"]
    return {
        "served_HR@10": served["HR@10"],
        "served_NDCG@10": served["NDCG@10"],
        "served_HR@20": served["HR@20"],
        "served_NDCG@20": served["NDCG@20"],
        "served_users": served["users"],
        "served_events_per_s": served["events_per_s"],
        "offline_ranker_HR@10": results["ranker"]["full"]["HR@10"],
        "offline_ranker_NDCG@10": results["ranker"]["full"]["NDCG@10"],
        "offline_model_HR@10": results["model"]["full"]["HR@10"],
        "offline_model_NDCG@10": results["model"]["full"]["NDCG@10"],
        "blend_weight": with_compressed_ranker(artifacts, form).blend_weight,
        "eval_seconds": report["seconds"]["total"],
    }


def timing_inputs(
    split: LeaveOneOutSplit, n_items: int, max_len: int, batches: int, seed: int = 0
) -> dict[int, list[tuple[list[list[int]], list[np.ndarray]]]]:
    """Per batch size, ``batches`` batches of real users' test-split histories and 150 distinct random candidates
    each (which items are candidates does not change the cost of scoring them)."""
    rng = np.random.default_rng(seed)
    inputs: dict[int, list[tuple[list[list[int]], list[np.ndarray]]]] = {}
    for size in BATCH_SIZES:
        inputs[size] = []
        for _ in range(batches):
            users = rng.choice(split.n_users, size, replace=False)
            starts, ends = split.offsets[users], split.history_end("test")[users]
            padded = last_items(split, starts, ends, max_len)
            histories = [[int(row) for row in history if row >= 0] for history in padded]
            candidates = [rng.choice(n_items, CANDIDATES_PER_USER, replace=False) for _ in users]
            inputs[size].append((histories, candidates))
    return inputs


def timings(
    rankers: dict[str, SequenceRanker],
    item_table: np.ndarray,
    inputs: dict[int, list[tuple[list[list[int]], list[np.ndarray]]]],
    repeats: int,
    calls: int,
) -> dict[str, dict[str, float]]:
    """Median ms per ranker call and µs per candidate of every form at every batch size, forms timed in turns."""
    torch.set_num_threads(1)  # as a worker runs (torch_threads = 1)
    samples: dict[tuple[str, int], list[float]] = {(form, size): [] for form in rankers for size in inputs}
    for turn in range(repeats + 1):  # the first turn warms up and is dropped
        for form, ranker in rankers.items():
            for size, batches in inputs.items():
                max_len = ranker.config.max_len
                started = time.perf_counter()
                for call in range(calls):
                    histories, candidates = batches[call % len(batches)]
                    rank_candidates(ranker, histories, candidates, max_len, item_table)
                if turn:
                    samples[form, size].append((time.perf_counter() - started) / calls)
    result: dict[str, dict[str, float]] = {form: {} for form in rankers}
    for (form, size), seconds in samples.items():
        per_call = statistics.median(seconds)
        result[form][f"ms_per_call@{size}"] = round(per_call * 1e3, 3)
        result[form][f"us_per_candidate@{size}"] = round(per_call * 1e6 / (size * CANDIDATES_PER_USER), 3)
        result[form][f"ms_per_call@{size}_spread"] = round((max(seconds) - min(seconds)) * 1e3, 3)
    return result


def sizes(ranker: SequenceRanker) -> dict[str, int]:
    return {
        "encoder_parameters": encoder_parameter_count(ranker),
        "encoder_bytes": weight_bytes(ranker, with_item_table=False),
        "ranker_bytes_with_item_table": weight_bytes(ranker),
    }


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| ranker | served HR@10 | served NDCG@10 | offline ranker HR@10 / NDCG@10 | offline model NDCG@10 | "
        "ms/call @3 | µs/cand @3 | ms/call @100 | µs/cand @100 | encoder params | encoder KB | KB with E |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = rows.get("none", {})

    def change(row: dict[str, Any], key: str) -> str:
        if key not in row:
            return "—"
        if row is base or key not in base:
            return f"{row[key]:.4f}"
        return f"{row[key]:.4f} ({(row[key] / base[key] - 1) * 100:+.1f} %)"

    for form, row in rows.items():
        offline = (
            f"{row['offline_ranker_HR@10']:.4f} / {row['offline_ranker_NDCG@10']:.4f}"
            if "offline_ranker_HR@10" in row
            else "—"
        )
        lines.append(
            f"| {form} | {change(row, 'served_HR@10')} | {change(row, 'served_NDCG@10')} | {offline} | "
            f"{change(row, 'offline_model_NDCG@10')} | {row.get('ms_per_call@3', math.nan):.3f} | "
            f"{row.get('us_per_candidate@3', math.nan):.2f} | {row.get('ms_per_call@100', math.nan):.2f} | "
            f"{row.get('us_per_candidate@100', math.nan):.2f} | {row['encoder_parameters']:,} | "
            f"{row['encoder_bytes'] / 1024:.1f} | {row['ranker_bytes_with_item_table'] / 1024:.0f} |"
        )
    return "\n".join(lines)


def checked_forms(text: str) -> list[RankerCompression]:
    forms = [form for form in text.split(",") if form]
    unknown = sorted(set(forms) - set(RANKER_COMPRESSIONS))
    if unknown:
        raise SystemExit(f"unknown forms {unknown}: use {', '.join(RANKER_COMPRESSIONS)}")
    return [cast(RankerCompression, form) for form in forms]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("/tmp/beauty-art"), help="the trained model (kept)")
    parser.add_argument(
        "--distilled", type=Path, default=Path("/tmp/beauty-distill"), help="its copy with a student (made if absent)"
    )
    parser.add_argument("--events", type=Path, default=EVENTS, help="the event log the model was trained on")
    parser.add_argument("--forms", default=",".join(RANKER_COMPRESSIONS), help="comma-separated compressions")
    parser.add_argument("--served-users", type=int, default=None, help="replay a seeded sample of users (default all)")
    parser.add_argument("--repeats", type=int, default=7, help="timing turns per form; the median is reported")
    parser.add_argument("--calls", type=int, default=40, help="ranker calls per form and batch size in a turn")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--timing-only", action="store_true", help="keep the quality figures of --output")
    group.add_argument("--quality-only", action="store_true", help="keep the timing figures of --output")
    parser.add_argument("--output", type=Path, default=RESULTS / "compression.json")
    args = parser.parse_args()
    forms = checked_forms(args.forms)
    if not args.events.exists():
        raise SystemExit(f"{args.events} not found: the datasets live in ../shared/data beside the repository")

    directory = distilled_artifacts(args.artifacts, args.distilled, args.events)
    artifacts = load_artifacts(directory)
    log = load_events(args.events)
    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    kept = previous.get("forms", {}) if previous.get("model_version") == artifacts.version else {}
    rows: dict[str, dict[str, Any]] = {form: dict(kept.get(form, {})) for form in forms}
    rankers = {form: with_compressed_ranker(artifacts, form).ranker for form in forms}
    for form in forms:
        rows[form] |= sizes(rankers[form])

    if not args.quality_only:
        split = leave_one_out(log, artifacts.row_of)
        inputs = timing_inputs(split, len(artifacts.item_ids), artifacts.ranker.config.max_len, batches=20)
        print(f"timing {len(forms)} forms x {BATCH_SIZES} users x {CANDIDATES_PER_USER} candidates ...", flush=True)
        for form, figures in timings(rankers, artifacts.item_embeddings, inputs, args.repeats, args.calls).items():
            rows[form] |= figures
    if not args.timing_only:
        torch.set_num_threads(2)
        for form in forms:
            print(f"evaluating {form} ...", flush=True)
            rows[form] |= quality(log, artifacts, form, args.served_users)
            print(f"{form}: served NDCG@10 {rows[form]['served_NDCG@10']:.4f}", flush=True)

    print(table(rows))
    write_report(
        args.output,
        {
            "model_version": artifacts.version,
            "artifacts": str(directory),
            "events": str(args.events),
            "student": {key: value for key, value in artifacts.manifest.get("student", {}).items() if key != "file"},
            "timing": {
                "function": "streamrec.stream.rank.rank_candidates (the worker's ranker call), torch threads 1",
                "batch_sizes": list(BATCH_SIZES),
                "candidates_per_user": CANDIDATES_PER_USER,
                "repeats": args.repeats,
                "calls_per_turn": args.calls,
            },
            "forms": rows,
        },
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
