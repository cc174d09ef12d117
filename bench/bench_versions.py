#!/usr/bin/env python
"""The pipeline benchmark on two versions of streamrec, run alternately: a before/after on the same machine.

Usage::

    python bench/bench_versions.py --base REV [--batches 500,5] [--rounds 2] [--output versions.json]

``REV`` (a commit, tag or branch) is checked out into a temporary git worktree; ``bench/bench_pipeline.py`` of the
working tree then runs ``--rounds`` times on each version in turn (base, current, base, current, ...), one repeat per
run, the base version loaded in place of the installed one through ``PYTHONPATH``. Alternating keeps slow drifts of
the machine (other load, temperature) from favouring one version. Printed per version and batch size: the best and
every run's events/s, recommendations/s and CPU ms per event. The worktree is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _measure import write_report

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PACKAGES = ("stream", "model", "index")


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """A directory that, put first on ``PYTHONPATH``, makes ``import streamrec`` load ``revision`` (a temporary git
    worktree of it, removed afterwards)."""
    with tempfile.TemporaryDirectory() as work:
        tree, shim = Path(work) / "tree", Path(work) / "shim"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), revision], cwd=REPO, check=True, capture_output=True
        )
        try:
            (shim / "streamrec").mkdir(parents=True)
            for package in PACKAGES:
                (shim / "streamrec" / package).symlink_to(tree / package)
            yield shim
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)


def environment(shim: Path | None) -> dict[str, str]:
    """This process's environment, loading streamrec from ``shim`` (see :func:`checkout`) when given."""
    env = dict(os.environ)
    if shim is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(shim), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def short_revision(revision: str) -> str:
    found = subprocess.run(["git", "rev-parse", "--short", revision], cwd=REPO, capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"no such revision: {revision}")
    return found.stdout.strip()


def current_version() -> str:
    """The checked-out commit, marked when the working tree has changes on top."""
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return short_revision("HEAD") + ("+changes" if dirty else "")


def run_pipeline_bench(batches: str, output: Path, shim: Path | None) -> dict[str, Any]:
    env = environment(shim)
    command = [
        *(sys.executable, str(REPO / "bench" / "bench_pipeline.py")),
        *("--batches", batches, "--repeats", "1", "--output", str(output)),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"bench_pipeline.py failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(output.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the version to compare against (commit, tag or branch)")
    parser.add_argument("--batches", default="500,5", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each version, alternating")
    parser.add_argument("--output", type=Path, default=RESULTS / "versions.json", help="JSON results file")
    args = parser.parse_args(argv)
    names = {"base": short_revision(args.base), "current": current_version()}
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "current": []}
    with checkout(args.base) as shim, tempfile.TemporaryDirectory() as work:
        for round_number in range(args.rounds):
            for version in ("base", "current"):
                output = Path(work) / f"{version}-{round_number}.json"
                result = run_pipeline_bench(args.batches, output, shim if version == "base" else None)
                runs[version].append(result)
                rates = {size: entry["best"]["events_per_s"] for size, entry in result["batch_sizes"].items()}
                print(f"round {round_number + 1}, {version} ({names[version]}): events/s {rates}")
    summary: dict[str, Any] = {}
    print(f"\n{'version':<22} | {'batch':>5} | {'best events/s':>13} | {'recs/s':>7} | {'CPU ms/event':>12} | runs")
    for version in ("base", "current"):
        summary[version] = {}
        for size in args.batches.split(","):
            entries = [run["batch_sizes"][size]["best"] for run in runs[version]]
            best = max(entries, key=lambda entry: entry["events_per_s"])
            summary[version][size] = {"best": best, "events_per_s_runs": [e["events_per_s"] for e in entries]}
            every = ", ".join(f"{entry['events_per_s']:,.0f}" for entry in entries)
            print(
                f"{names[version]:<22} | {size:>5} | {best['events_per_s']:>13,.0f} | "
                f"{best['recommendations_per_s']:>7,.0f} | {best['cpu_ms_per_event']:>12.3f} | "
                f"{every}"
            )
    for version in ("base", "current"):
        sizes = args.batches.split(",")
        if len(sizes) >= 2:
            large, small = summary[version][sizes[0]]["best"], summary[version][sizes[-1]]["best"]
            print(
                f"{names[version]}: {sizes[-1]}-event batches keep {small['events_per_s'] / large['events_per_s']:.2f} "
                f"of the events/s and {small['recommendations_per_s'] / large['recommendations_per_s']:.2f} of the "
                f"recommendations/s of {sizes[0]}-event batches"
            )
    report = {"versions": names, "summary": summary, "runs": runs}
    write_report(args.output, report)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
