#!/usr/bin/env python
"""Directed transitions in the item-kNN's similarity, chosen on validation: does the choice hold on held-out items?

Usage::

    python bench/bench_model_choices.py --dataset beauty --without-test --variant defaults --set refit=false
    python bench/bench_transition_blend.py --dataset beauty --source defaults

The item-kNN blended into the served score is the cosine of two items' shoppers, plus ``ρ`` times how often one
followed the other (``ItemKNNModel``; training picks ``ρ`` from ``item_knn_transition_weights`` with the memory and
the blend weight, on validation). The source is an early-stopped model trained by ``bench_model_choices.py
--without-test`` (every user's test item removed, so its own test split is the original validation split; without a
refit, so its blend can be chosen again). This blends the source twice with the blend choice training makes today,
once with the transition grid ``(0,)`` (the cosine alone) and once with the default grid, both on the source's own
validation split, and evaluates both versions with ``streamrec eval --no-served``: the blended model's HR@10 /
NDCG@10 on the held-out items, ranked as served (``full_as_served``). Results in
``bench/results/model_choices/<dataset>-without-test/transitions-*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from bench_knn_memory import blend_row, copy_version, source_run
from bench_model_choices import DATASETS

from streamrec.model.artifacts import load_artifacts
from streamrec.model.config import TrainConfig
from streamrec.model.datasets import load_beauty
from streamrec.model.train import attach_item_knn, recorded_train_config

GRIDS = {"cosine": (0.0,), "transitions": TrainConfig.model_fields["item_knn_transition_weights"].default}


def measure(dataset: str, source: str) -> dict[str, Any]:
    directory, before, events = source_run(dataset, source)
    log = load_beauty(events)  # the one-user-per-line format of all three datasets
    config = recorded_train_config(load_artifacts(before).manifest)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    row: dict[str, Any] = {"dataset": dataset, "source": str(before)}
    for name, grid in GRIDS.items():
        copy = copy_version(before, directory / f"transitions-{name}.artifacts")
        version = attach_item_knn(copy, log, config.model_copy(update={"item_knn_transition_weights": grid}))
        row[name] = {"grid": list(grid), **blend_row(version, events, directory / f"transitions-{name}.json", env)}
    (directory / "transitions.json").write_text(json.dumps(row, indent=2))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), action="append", help="repeatable; default: all")
    parser.add_argument("--source", default="defaults", help="the bench_model_choices.py variant to start from")
    args = parser.parse_args()
    print("| dataset | grid | memory, ρ (λ) | validation blend NDCG@10 | held-out HR@10 | held-out NDCG@10 |")
    print("|---|---|---|---|---|---|")
    for dataset in args.dataset or sorted(DATASETS):
        row = measure(dataset, args.source)
        for name in GRIDS:
            cell = row[name]
            held = cell["held_out"]
            print(
                f"| {dataset} | {name} | {cell['memory']}, {cell['transition_weight']:g} ({cell['blend_weight']:g}) | "
                f"{cell['validation_blend_ndcg@10']:.4f} | {held['HR@10']:.4f} | {held['NDCG@10']:.4f} |"
            )


if __name__ == "__main__":
    main()
