#!/usr/bin/env python
"""Where the time of an event goes: a sampling profile (py-spy) of ``Pipeline.process`` on the simulated shop.

Usage::

    python bench/bench_profile.py [--batches 500,5] [--events 10000] [--rate 250] [--base REV] [--output profile.json]

For each batch size a child process runs the loop of ``bench_pipeline.py`` (same shop, model, warm-up and settled
heap) under ``py-spy record`` at ``--rate`` samples per second. Only samples taken inside the measured loop count:
start-up, model load and warm-up are left out. Each sample is charged to

* the **stage** whose call inside ``Pipeline.process`` it was taken in (intake = decode and validate, state,
  retrieve, rank, lists = filter and diversify, publish, metrics, other), and
* the **component** of the list builder it was in (trending lists, blend, rules, diversify, explore, explain),
  when it was taken in list building;

and the functions with the most samples of their own (self time) are listed. Shares are of the loop's samples;
``ms_per_event`` converts them with the loop's measured CPU time. ``--base`` profiles another version, checked
out as ``bench_versions.py`` does (a before/after with the same script). Needs ``py-spy`` (``pip install py-spy``) and a
kernel that lets a parent read its child's memory (ptrace); both hold on an ordinary Linux machine or container.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _measure import write_report
from bench_versions import checkout, current_version, environment, short_revision

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
LOOP_FUNCTION = "measured_loop"

#: ``Pipeline.process`` calls these (file, function) pairs; a sample below one belongs to that stage.
STAGE_CALLS = {
    ("intake.py", "admit"): "intake",
    ("update_state.py", "apply"): "state",
    ("user_state.py", "evict_idle"): "state",
    ("publish.py", "state_updates"): "state",
    ("retrieve.py", "retrieve"): "retrieve",
    ("retrieve.py", "query"): "retrieve",
    ("pipeline.py", "use_search_params"): "retrieve",
    ("rank.py", "rank"): "rank",
    ("pipeline.py", "_choose"): "lists",
    ("publish.py", "recommendations"): "publish",
    ("pipeline.py", "_observe_lists"): "metrics",
}
#: Modules of the list builder, by component.
LIST_COMPONENTS = {
    "cold_start.py": "trending and blend",
    "trending.py": "trending and blend",
    "filters.py": "rules",
    "rules.py": "rules",
    "diversify.py": "diversify",
    "explore.py": "explore",
    "explain.py": "explain",
    "covisitation.py": "explain",
    "baselines.py": "explain",
}


def frame_parts(frame: str) -> tuple[str, str]:
    """(file name, function) of a py-spy frame ``Class.function (path/file.py:line)``."""
    function, _, where = frame.partition(" (")
    return where.rsplit(":", 1)[0].rsplit("/", 1)[-1], function.strip().rsplit(".", 1)[-1]


def classify(stack: list[str]) -> tuple[str, str | None]:
    """The stage of one sample (outermost frame first) and, in list building, its component."""
    stage = "other"
    component = None
    for index, frame in enumerate(stack):
        file, function = frame_parts(frame)
        if stage == "other" and (file, function) in STAGE_CALLS:
            stage = STAGE_CALLS[(file, function)]
            if stage == "lists":
                component = "list assembly"
                for inner in stack[index + 1 :]:
                    found = LIST_COMPONENTS.get(frame_parts(inner)[0])
                    if found is not None:
                        component = found
                        break
            break
    return stage, component


def summarise(raw: str) -> dict[str, Any]:
    """Stage, component and self-time shares of the samples taken inside the measured loop."""
    stages: Counter[str] = Counter()
    components: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or LOOP_FUNCTION not in stack_text:
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        stack = stack[next(i for i, frame in enumerate(stack) if frame_parts(frame)[1] == LOOP_FUNCTION) + 1 :]
        if not stack:
            continue
        total += count
        stage, component = classify(stack)
        stages[stage] += count
        if component is not None:
            components[component] += count
        file = frame_parts(stack[-1])[0]
        own[f"{stack[-1].partition(' (')[0]} ({file})"] += count
    return {
        "samples": total,
        "stages": {name: count / total for name, count in stages.most_common()} if total else {},
        "list_components": {name: count / total for name, count in components.most_common()} if total else {},
        "top_self": {name: count / total for name, count in own.most_common(15)} if total else {},
    }


def child(batch: int, events: int, warmup: int, marker: Path) -> int:
    """The profiled process: the loop of ``bench_pipeline.py`` with its measured part in :func:`measured_loop`."""
    import torch
    from bench_end_to_end import prepare
    from bench_pipeline import WARMUP_BATCH, records

    from streamrec.model.artifacts import load_artifacts
    from streamrec.stream.pipeline import Pipeline
    from streamrec.stream.runtime.worker import settle_heap
    from streamrec.stream.settings import Settings

    torch.set_num_threads(1)
    artifact_root, rows = prepare()
    pipeline = Pipeline(Settings(torch_threads=1), load_artifacts(artifact_root))
    now = time.time()
    warm = records(rows, 0, warmup, now)
    for begin in range(0, len(warm), WARMUP_BATCH):
        pipeline.process(warm[begin : begin + WARMUP_BATCH], now=now)
    measured = records(rows, warmup, events, now)
    settle_heap()

    def measured_loop() -> tuple[float, int]:
        cpu, recommendations = time.process_time(), 0
        for begin in range(0, len(measured), batch):
            recommendations += len(pipeline.process(measured[begin : begin + batch], now=now).recommendations)
        return time.process_time() - cpu, recommendations

    cpu_s, recommendations = measured_loop()
    marker.write_text(json.dumps({"cpu_s": cpu_s, "recommendations": recommendations}))
    return 0


def py_spy() -> Path | None:
    """py-spy beside this interpreter (a virtual environment not activated), else on the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = beside if beside.exists() else shutil.which("py-spy")
    return Path(found) if found else None


def profile(batch: int, events: int, warmup: int, rate: int, work: Path, shim: Path | None) -> dict[str, Any]:
    raw, marker = work / f"raw-{batch}.txt", work / f"loop-{batch}.json"
    command = [
        *(str(py_spy()), "record", "--format", "raw", "--rate", str(rate), "--output", str(raw), "--"),
        *(sys.executable, __file__, "--child", "--batches", str(batch)),
        *("--events", str(events), "--warmup", str(warmup), "--marker", str(marker)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment(shim))
    if done.returncode != 0 or not marker.exists():
        raise SystemExit(f"profiling batch {batch} failed: {done.stderr.strip().splitlines()[-1:]}")
    loop = json.loads(marker.read_text())
    summary = summarise(raw.read_text())
    ms_per_event = 1000 * loop["cpu_s"] / events
    summary |= {
        "events": events,
        "recommendations": loop["recommendations"],
        "cpu_ms_per_event": round(ms_per_event, 4),
        "stage_ms_per_event": {name: round(share * ms_per_event, 4) for name, share in summary["stages"].items()},
    }
    return summary


def print_profile(batch: int, summary: dict[str, Any]) -> None:
    print(
        f"\nbatch {batch}: {summary['samples']} samples, {summary['cpu_ms_per_event']:.3f} CPU ms per event, "
        f"{summary['recommendations']} lists for {summary['events']} events"
    )
    for title, key in (("stage", "stages"), ("list building", "list_components"), ("self time", "top_self")):
        print(f"  {title}:")
        for name, share in summary[key].items():
            print(f"    {100 * share:5.1f} %  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="500,5", help="comma-separated batch sizes")
    parser.add_argument("--events", type=int, default=10_000, help="events in the profiled loop")
    parser.add_argument("--warmup", type=int, default=20_000, help="events processed before the loop")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--output", type=Path, default=RESULTS / "profile.json", help="JSON results file")
    parser.add_argument("--base", help="profile this version (commit, tag or branch) instead of the working tree")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--marker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batches = [int(size) for size in args.batches.split(",")]
    if args.child:
        return child(batches[0], args.events, args.warmup, args.marker)
    if py_spy() is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    from bench_end_to_end import prepare

    prepare()  # train the cached model outside the profile
    results: dict[str, Any] = {"parameters": vars(args), "batches": {}}
    results["parameters"] = {key: str(value) for key, value in results["parameters"].items()}
    results["version"] = short_revision(args.base) if args.base else current_version()
    with contextlib.ExitStack() as stack:
        shim = stack.enter_context(checkout(args.base)) if args.base else None
        work = stack.enter_context(tempfile.TemporaryDirectory())
        for batch in batches:
            summary = profile(batch, args.events, args.warmup, args.rate, Path(work), shim)
            results["batches"][str(batch)] = summary
            print_profile(batch, summary)
    write_report(args.output, results)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
