#!/usr/bin/env python
"""What the sampled softmax costs in served quality, against the full softmax, on the shared benchmark datasets.

Usage::

    python bench/bench_softmax_quality.py --points yelp-sampled,yelp-full [--report-only]

A point is ``<dataset>-<softmax>``: dataset ``beauty``, ``sports`` or ``yelp`` (``../shared/data``), softmax
``full`` or ``sampled`` (``STREAMREC_TRAIN__SOFTMAX``; everything else at its default). Each point runs what a user
would: ``streamrec train`` on the file, then ``streamrec eval`` with the served replay, each in its own process,
and records the training time and epochs and the full-ranking and served HR@10 / NDCG@10 (test split). Each
point's result is kept in ``bench/results/softmax_quality/`` with its date, so the long full-softmax points can run
on their own; the table compares every dataset's sampled row with its full row.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from _measure import run, streamrec, write_report

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
POINTS_DIR = RESULTS / "softmax_quality"
DATA = REPO.parent / "shared" / "data"
DATASETS = {
    "beauty": DATA / "amazon-beauty" / "Beauty.txt",
    "sports": DATA / "amazon-sports" / "Sports_and_Outdoors.txt",
    "yelp": DATA / "yelp" / "Yelp.txt",
}


def measure(point: str, logs: Path) -> dict[str, Any]:
    dataset, _, softmax = point.rpartition("-")
    if dataset not in DATASETS or softmax not in ("full", "sampled"):
        raise SystemExit(f"unknown point {point!r}: use <{'|'.join(DATASETS)}>-<full|sampled>")
    events = DATASETS[dataset]
    if not events.exists():
        raise SystemExit(f"{events} not found: the datasets live in ../shared/data beside the repository")
    env = {**os.environ, "STREAMREC_TRAIN__SOFTMAX": softmax}
    out = logs / f"{point}-artifacts"
    train_s = run(streamrec("train", "--events", str(events), "--out", str(out), "--log-level", "WARNING"),
                  logs / f"{point}-train.log", env)  # fmt: skip
    report_path = logs / f"{point}-eval.json"
    eval_s = run(streamrec("eval", "--events", str(events), "--artifacts", str(out), "--output", str(report_path)),
                 logs / f"{point}-eval.log", env)  # fmt: skip
    report = json.loads(report_path.read_text())
    manifest = json.loads((out / (out / "LATEST").read_text().strip() / "manifest.json").read_text())
    full = report["results"]["model"]["full"]
    served = report["served"]
    return {
        "point": point,
        "dataset": dataset,
        "softmax": manifest["training"].get("softmax", softmax),
        "items": manifest["n_items"],
        "train_seconds": train_s,
        "epochs": manifest["training"]["epochs"],
        "eval_seconds": eval_s,
        "offline_HR@10": full["HR@10"],
        "offline_NDCG@10": full["NDCG@10"],
        "served_HR@10": served["HR@10"],
        "served_NDCG@10": served["NDCG@10"],
        # What `auto` is chosen on: the ranker's NDCG@10 on the validation split at the best epoch.
        "validation_NDCG@10": manifest["metrics"]["validation"]["val_ranker_NDCG@10"],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| dataset | softmax | items | training | served HR@10 | served NDCG@10 | validation NDCG@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    full = {r["dataset"]: r for r in results if r["softmax"] == "full"}
    for r in sorted(results, key=lambda r: (r["dataset"], r["softmax"])):
        base = full.get(r["dataset"])
        cells = []
        for key in ("served_HR@10", "served_NDCG@10"):
            change = "" if base is None or r is base else f" ({(r[key] / base[key] - 1) * 100:+.1f} %)"
            cells.append(f"{r[key]:.4f}{change}")
        rows.append(
            f"| {r['dataset']} | {r['softmax']} | {r['items']:,} | {r['train_seconds']:,.0f} s ({r['epochs']} epochs)"
            f" | {cells[0]} | {cells[1]} | {r.get('validation_NDCG@10', float('nan')):.4f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default="", help="comma-separated <dataset>-<full|sampled> points to measure")
    parser.add_argument("--report-only", action="store_true", help="measure nothing: report the stored points")
    parser.add_argument("--output", type=Path, default=RESULTS / "softmax_quality.json")
    args = parser.parse_args()
    logs = RESULTS / "logs" / "softmax_quality"
    logs.mkdir(parents=True, exist_ok=True)
    POINTS_DIR.mkdir(parents=True, exist_ok=True)
    points = [] if args.report_only else [p for p in args.points.split(",") if p]
    for point in points:
        result = measure(point, logs)
        (POINTS_DIR / f"{point}.json").write_text(json.dumps(result, indent=2))
        print(f"{point}: trained in {result['train_seconds']:.0f} s, served NDCG@10 {result['served_NDCG@10']:.4f}")
    results = [json.loads(path.read_text()) for path in sorted(POINTS_DIR.glob("*.json"))]
    print(table(results))
    write_report(args.output, {"points": results})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
