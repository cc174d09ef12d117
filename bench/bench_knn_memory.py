#!/usr/bin/env python
"""The item-kNN's memory, chosen on validation with its blend weight: does the choice hold on held-out items?

Usage::

    python bench/bench_model_choices.py --dataset yelp --without-test --variant early-stopped --set refit=false
    python bench/bench_knn_memory.py --dataset yelp --source early-stopped

The source is an early-stopped model trained by ``bench_model_choices.py --without-test`` (every user's test item
removed, so that its own test split is the original validation split, which the original test split never informs;
without a refit, so its blend can be chosen again). For each dataset this copies the source version, lets ``streamrec
reblend`` choose the item-kNN's memory and weight again with today's grid (on the source's own validation split), and
evaluates both versions with ``streamrec eval --no-served``: the blended model's HR@10 / NDCG@10 on the held-out items,
ranked as served (``full_as_served``). Results in ``bench/results/model_choices/<dataset>-without-test/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from _measure import run, streamrec
from bench_model_choices import DATASETS, RESULTS, without_test


def evaluate(version: Path, events: Path, output: Path, env: dict[str, str]) -> dict[str, Any]:
    """The blended model's held-out figures ranked as served, from ``streamrec eval``'s report."""
    command = streamrec("eval", "--no-served", "--events", str(events), "--artifacts", str(version))
    run([*command, "--output", str(output)], output.with_suffix(".log"), env)
    return json.loads(output.read_text())["results"]["model"]["full_as_served"]


def blend_row(version: Path, events: Path, output: Path, env: dict[str, str]) -> dict[str, Any]:
    """A version's item-kNN blend as its manifest records it (memory, transition weight, blend weight, best validation
    NDCG@10) and its held-out figures, evaluated into ``output``."""
    manifest = json.loads((version / "manifest.json").read_text())
    knn = manifest["item_knn"]
    return {
        "memory": f"{knn['n_recent']} · {knn['decay']:g}",
        "transition_weight": knn.get("transition_weight", 0.0),  # versions from before the transitions: the cosine
        "blend_weight": manifest["blend_weight"],
        "validation_blend_ndcg@10": max(manifest["blend_validation"]["NDCG@10"].values()),
        "held_out": evaluate(version, events, output, env),
    }


def source_run(dataset: str, source: str) -> tuple[Path, Path, Path]:
    """``(results directory, source version, events without the test items)`` of a ``--without-test`` run."""
    directory = RESULTS / f"{dataset}-without-test"
    result_path = directory / f"{source}.json"
    if not result_path.exists():
        raise SystemExit(
            f"no run {result_path}: train it first with `python bench/bench_model_choices.py --dataset {dataset} "
            f"--without-test --variant {source} --set refit=false`"
        )
    return directory, Path(json.loads(result_path.read_text())["artifacts"]), without_test(DATASETS[dataset], directory)


def copy_version(version: Path, root: Path) -> Path:
    """A fresh artifact root at ``root`` holding a copy of ``version`` as its LATEST."""
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(version, root / version.name)
    (root / "LATEST").write_text(version.name)
    return root


def measure(dataset: str, source: str) -> dict[str, Any]:
    directory, before, events = source_run(dataset, source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    copy = copy_version(before, directory / "knn-memory.artifacts")
    run(streamrec("reblend", "--artifacts", str(copy), "--events", str(events)), directory / "knn-memory.log", env)
    after = copy / (copy / "LATEST").read_text().strip()
    row: dict[str, Any] = {"dataset": dataset, "source": str(before)}
    for name, version in (("before", before), ("after", after)):
        row[name] = blend_row(version, events, directory / f"knn-memory-{name}.json", env)
    (directory / "knn-memory.json").write_text(json.dumps(row, indent=2))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), action="append", help="repeatable; default: all")
    parser.add_argument("--source", default="early-stopped", help="the bench_model_choices.py variant to start from")
    args = parser.parse_args()
    print("| dataset | memory (λ) | validation blend NDCG@10 | held-out HR@10 | held-out NDCG@10 |")
    print("|---|---|---|---|---|")
    for dataset in args.dataset or sorted(DATASETS):
        row = measure(dataset, args.source)
        for name, label in (("before", "3 · 0.6 only"), ("after", "chosen")):
            cell = row[name]
            held = cell["held_out"]
            print(
                f"| {dataset} ({label}) | {cell['memory']} ({cell['blend_weight']:g}) | "
                f"{cell['validation_blend_ndcg@10']:.4f} | {held['HR@10']:.4f} | {held['NDCG@10']:.4f} |"
            )


if __name__ == "__main__":
    main()
