#!/usr/bin/env python
"""A directed transition score next to the item-kNN in the served blend: chosen on validation, read on held-out items.

Usage::

    python bench/bench_model_choices.py --dataset beauty --without-test --variant defaults --set refit=false
    python bench/bench_transition_blend.py --dataset beauty --source defaults

The item-kNN blended into the served score is symmetric: how often two items share a user. A transition score is
directed: how often item ``j`` comes right after item ``i`` in a user's sequence (1, 2 or 3 steps later, weighted
1, 0.5 and 0.25, normalised by the square roots of ``i``'s outgoing and ``j``'s incoming counts), read from the user's
last 3 items decayed by 0.6 per step back. Each stage's scores are fit on every event before that stage's target,
as the item-kNN is. This scores ``ranker + λ · item_knn + ν · transitions`` over a grid, ranked as served, on the
source model's validation split and on its held-out items (the original validation items: the source is trained by
``bench_model_choices.py --without-test``), and prints both, the validation's choice marked. The item-kNN keeps the
memory the source's training chose. A refit source's validation figures are meaningless (it trained on those items);
its held-out figures at the first fit's choice still read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_model_choices import DATASETS, RESULTS

from streamrec.model.artifacts import load_artifacts
from streamrec.model.baselines import Histories, ItemKNNModel, blend_scores
from streamrec.model.datasets import load_beauty
from streamrec.model.evaluate import RankerScorer
from streamrec.model.metrics import summarize, target_ranks
from streamrec.model.splits import LeaveOneOutSplit, Stage, leave_one_out

STEPS = ((1, 1.0), (2, 0.5), (3, 0.25))  # (steps later, weight) of the transitions counted
MEMORY, DECAY = 3, 0.6  # the user's last items read, and the weight per step back
BATCH = 512


class Transitions:
    """Directed, normalised transition counts between item rows, as CSR rows (``i`` -> the items after it)."""

    def __init__(self, split: LeaveOneOutSplit, n_items: int, stage: Stage) -> None:
        starts, ends = split.offsets[:-1], split.history_end(stage)
        sources, targets, weights = [], [], []
        for gap, weight in STEPS:
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                if end - start > gap:
                    sources.append(split.items[start : end - gap])
                    targets.append(split.items[start + gap : end])
                    weights.append(np.full(end - start - gap, weight))
        source, target, weight = (np.concatenate(parts) for parts in (sources, targets, weights))
        pairs, which = np.unique(source.astype(np.int64) * n_items + target, return_inverse=True)
        counts = np.bincount(which, weights=weight)
        rows, columns = pairs // n_items, pairs % n_items
        outgoing = np.bincount(rows, weights=counts, minlength=n_items)
        incoming = np.bincount(columns, weights=counts, minlength=n_items)
        self.values = (counts / np.sqrt(np.maximum(outgoing[rows], 1) * np.maximum(incoming[columns], 1))).astype(
            np.float32
        )
        self.columns = columns
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_items))])
        self.n_items = n_items

    def score_users(self, histories: Histories) -> np.ndarray:
        """``[users, items]``: the transitions out of each user's last ``MEMORY`` items, decayed per step back."""
        scores = np.zeros((len(histories), self.n_items), dtype=np.float32)
        items = histories.split.items
        for user, (start, end) in enumerate(zip(histories.starts.tolist(), histories.ends.tolist(), strict=True)):
            for back in range(min(MEMORY, end - start)):
                item = items[end - 1 - back]
                begin, stop = self.indptr[item], self.indptr[item + 1]
                scores[user, self.columns[begin:stop]] += DECAY**back * self.values[begin:stop]
        return scores


def measure(
    artifact_root: Path, events: Path, blend_weights: list[float], transition_weights: list[float]
) -> dict[str, dict[tuple[float, float], dict[str, float]]]:
    """NDCG@10 / HR@10 of every (λ, ν) on the validation split and on the held-out items."""
    artifacts = load_artifacts(artifact_root)  # its LATEST version
    split = leave_one_out(load_beauty(events), artifacts.row_of)
    n_items = len(artifacts.item_ids)
    ranker = RankerScorer(artifacts.ranker, artifacts.ranker.config.max_len)
    memory = artifacts.manifest["item_knn"]
    results: dict[str, dict[tuple[float, float], dict[str, float]]] = {}
    stages: tuple[Stage, Stage] = ("valid", "test")
    for stage in stages:
        item_knn = ItemKNNModel.fit(split, n_items, stage).with_memory(memory["n_recent"], memory["decay"])
        transitions = Transitions(split, n_items, stage)
        targets = split.targets(stage)
        rng = np.random.default_rng(0)
        ranks: dict[tuple[float, float], list[np.ndarray]] = {
            (lam, nu): [] for lam in blend_weights for nu in transition_weights
        }
        for begin in range(0, split.n_users, BATCH):
            users = np.arange(begin, min(begin + BATCH, split.n_users))
            histories = Histories.of_users(split, users, stage)
            exclude = histories.served_exclusions()
            ranker_scores = ranker.score_users(histories)
            knn_scores = item_knn.score_users(histories).astype(np.float32)
            transition_scores = transitions.score_users(histories)
            for lam in blend_weights:
                blended = blend_scores(ranker_scores, knn_scores, lam)
                for nu in transition_weights:
                    scores = blended + np.float32(nu) * transition_scores
                    ranks[lam, nu].append(target_ranks(scores, targets[users], exclude, rng))
        results[stage] = {key: summarize(np.concatenate(parts)) for key, parts in ranks.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--source", required=True, help="variant of bench_model_choices.py --without-test to read")
    parser.add_argument("--blend-weights", type=float, nargs="+", default=[0.0, 8.0, 16.0])
    parser.add_argument("--transition-weights", type=float, nargs="+", default=[0.0, 16.0, 32.0, 64.0, 128.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    directory = RESULTS / f"{args.dataset}-without-test"
    events = next(directory.glob("*-without-test.txt"))
    results = measure(directory / f"{args.source}.artifacts", events, args.blend_weights, args.transition_weights)
    validation, held_out = results["valid"], results["test"]
    chosen = max(validation, key=lambda key: (validation[key]["NDCG@10"], -key[1], -key[0]))
    print(f"{args.dataset}, {args.source}: validation NDCG@10 / HR@10 | held-out NDCG@10 / HR@10")
    print("| λ | ν | validation NDCG@10 | validation HR@10 | held-out NDCG@10 | held-out HR@10 |")
    print("|---|---|---|---|---|---|")
    for key in validation:
        mark = " (chosen)" if key == chosen else ""
        v, h = validation[key], held_out[key]
        print(
            f"| {key[0]:g} | {key[1]:g}{mark} | {v['NDCG@10']:.4f} | {v['HR@10']:.4f} | {h['NDCG@10']:.4f} "
            f"| {h['HR@10']:.4f} |"
        )


if __name__ == "__main__":
    main()
