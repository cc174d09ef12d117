#!/usr/bin/env python
"""How training's time and peak memory grow with the catalogue and the event log.

Usage::

    python bench/bench_training_scale.py [--points taobao,items-10k,items-100k,items-1m,events-300k,events-3m]
                                         [--quick] [--output results.json]

Each point runs the commands a shop would, each in its own process, measured from outside: ``streamrec simulate``
writes a shop (or the Taobao head log is converted to the event JSONL once), then ``streamrec train`` trains it
with the default settings (``STREAMREC_TRAIN__*`` in the environment still apply). Wall time and the peak resident
memory of each process (``wait4``'s ``ru_maxrss``) are recorded with what the manifest says: the loss used
(full or sampled softmax), epochs, seconds per epoch, test HR@10 and NDCG@10.

Points: ``taobao`` (``../shared/data/taobao/UserBehavior_head.csv``), ``items-N`` (N items, N users and 10·N
events: the items curve) and ``events-N`` (100k items, N events, N/10 users: the events curve). Simulated shops
are cached in ``bench/results/cache/scale/``, and each point's result in ``bench/results/training_scale_points/``:
the JSON report and the PNG of the curves beside it cover every point measured so far, each with its date, so a
long point (a million items) can be run on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _measure import write_report

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CACHE = RESULTS / "cache" / "scale"
TAOBAO = REPO.parent / "shared" / "data" / "taobao" / "UserBehavior_head.csv"
SEED = 7
DEFAULT_POINTS = "taobao,items-10k,items-100k,events-300k,events-3m,items-1m"
QUICK_POINTS = "items-2k,events-30k"


def parse_count(text: str) -> int:
    text = text.lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def shop_of(point: str) -> tuple[int, int, int]:
    """(users, items, events) of a simulated point."""
    kind, _, size = point.partition("-")
    n = parse_count(size)
    if kind == "items":
        return n, n, 10 * n
    if kind == "events":
        return max(1, n // 10), 100_000, n
    raise SystemExit(f"unknown point {point!r}: use taobao, items-N or events-N")


def run_measured(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` to completion; its wall seconds and peak resident memory (MiB), or exit on failure."""
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"{' '.join(command[:3])} failed ({code}); see {log_path}: {' | '.join(tail)}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def streamrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamrec.stream.app.cli", *args]


def taobao_jsonl() -> Path:
    """The Taobao head log in the event contract, converted once."""
    from streamrec.model.datasets import load_dataset
    from streamrec.stream.app.event_files import write_events_jsonl

    path = CACHE / "taobao_head.jsonl"
    if not path.exists():
        if not TAOBAO.exists():
            raise SystemExit(f"{TAOBAO} not found (the shared data sets sit beside the repository)")
        CACHE.mkdir(parents=True, exist_ok=True)
        write_events_jsonl(load_dataset(TAOBAO, "taobao").events(), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
    return path


def measure(point: str, logs: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"point": point}
    catalog: Path | None = None
    if point == "taobao":
        events = taobao_jsonl()
    else:
        users, items, n_events = shop_of(point)
        events = CACHE / f"shop-{users}u-{items}i-{n_events}e-s{SEED}.jsonl"
        catalog = events.with_suffix(".items.jsonl")
        result["simulate"] = {"cached": events.exists()}
        if not events.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            command = streamrec(
                "simulate", "--out", str(events), "--users", str(users), "--items", str(items),
                "--events", str(n_events), "--seed", str(SEED),
            )  # fmt: skip
            result["simulate"] = run_measured(command, logs / f"{point}-simulate.log")
        result["shop"] = {"users": users, "items": items, "events": n_events}
    out = logs / f"{point}-artifacts"
    command = streamrec("train", "--events", str(events), "--out", str(out), "--log-level", "WARNING")
    if catalog is not None:
        command += ["--catalog", str(catalog)]
    result["train"] = run_measured(command, logs / f"{point}-train.log")
    manifest = json.loads((out / (out / "LATEST").read_text().strip() / "manifest.json").read_text())
    training = manifest["training"]
    result["model"] = {
        "events": manifest["data"]["events"],
        "users": manifest["data"]["users"],
        "items": manifest["n_items"],
        "softmax": training.get("softmax", "full"),
        "epochs": training["epochs"],
        "fit_seconds": training["seconds"],
        "seconds_per_epoch": round(training["history"][-1]["seconds"] / training["epochs"], 2),
        "test_HR@10": manifest["metrics"]["test"]["ranker"]["HR@10"],
        "test_NDCG@10": manifest["metrics"]["test"]["ranker"]["NDCG@10"],
        "evaluated_users": manifest["metrics"]["test"]["ranker"]["users"],
        "index": manifest["index"]["kind"],
    }
    if "phases" in training:  # where the peak comes from: the process's peak as each phase ended
        result["model"]["phases"] = training["phases"]
    return result


def print_row(result: dict[str, Any]) -> None:
    model, train = result["model"], result["train"]
    print(
        f"{result['point']:<14} {model['items']:>9,} {model['events']:>10,} {model['softmax']:>8} {model['epochs']:>6} "
        f"{model['seconds_per_epoch']:>8} {train['seconds']:>8} {train['peak_rss_mib']:>9} "
        f"{model['test_HR@10']:>7.4f} {model['test_NDCG@10']:>8.4f}",
        flush=True,
    )


def point_order(result: dict[str, Any]) -> tuple[str, int]:
    return result["point"].split("-")[0], result.get("shop", {}).get("events", 0)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 7))
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2)
    curves = {"items": "items", "events": "events"}
    for column, (prefix, key) in enumerate(curves.items()):
        points = sorted((r for r in results if r["point"].startswith(prefix)), key=lambda r: r["shop"][key])
        x = [r["shop"][key] for r in points]
        if not points:
            for row in range(2):
                axes[row][column].set_axis_off()
            continue
        measures = (("seconds", "training time (s)"), ("peak_rss_mib", "peak memory (MiB)"))
        for row, (metric, label) in enumerate(measures):
            ax = axes[row][column]
            ax.plot(x, [r["train"][metric] for r in points], marker="o")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"{key} ({'10 events per item and user' if key == 'items' else '100k items'})")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
    figure.suptitle("streamrec train, default settings, 2-core machine")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", help=f"comma-separated points (default {DEFAULT_POINTS})")
    parser.add_argument("--quick", action="store_true", help=f"small points only ({QUICK_POINTS}): a smoke check")
    parser.add_argument("--output", type=Path, default=RESULTS / "training_scale.json", help="JSON results file")
    parser.add_argument("--report-only", action="store_true", help="measure nothing: report the stored points")
    args = parser.parse_args()
    points = [] if args.report_only else (args.points or (QUICK_POINTS if args.quick else DEFAULT_POINTS)).split(",")
    logs = RESULTS / "logs" / "training_scale"
    logs.mkdir(parents=True, exist_ok=True)
    points_dir = RESULTS / "training_scale_points"
    points_dir.mkdir(parents=True, exist_ok=True)
    results = []
    print(f"{'point':<14} {'items':>9} {'events':>10} {'loss':>8} {'epochs':>6} {'s/epoch':>8} {'train s':>8} "
          f"{'peak MiB':>9} {'HR@10':>7} {'NDCG@10':>8}")  # fmt: skip
    for point in points:
        result = measure(point, logs) | {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (points_dir / f"{point}.json").write_text(json.dumps(result, indent=2))
        results.append(result)
        print_row(result)
    # The curves take every point measured so far (a million-item point is a run of its own), each with its date.
    measured = {r["point"]: r for r in (json.loads(f.read_text()) for f in sorted(points_dir.glob("*.json")))}
    report = {
        "points": sorted(measured.values(), key=point_order),
        "environment": {k: v for k, v in os.environ.items() if k.startswith("STREAMREC_")},
        "results": results,
    }
    if len(measured) > len(results):
        print("every point measured so far:")
        for result in report["points"]:
            print_row(result)
    write_report(args.output, report)
    if any(r["point"].startswith(("items", "events")) for r in measured.values()):
        plot(list(measured.values()), args.output.with_suffix(".png"))
        print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    else:
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
