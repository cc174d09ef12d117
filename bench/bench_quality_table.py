"""The README's quality table: published rows, our baselines and streamrec (offline and served), per dataset.

Reads what the measuring commands wrote, computes nothing itself:

* ``docs/eval/<dataset>.json``: ``streamrec eval --events FILE --artifacts DIR --output docs/eval/<dataset>.json`` on
  a model trained with default settings (popularity, item-kNN, the ranker, the blend and the served lists, and the
  version's training time from its manifest);
* ``docs/eval/<dataset>-sasrec-ce.json``: the SASRec baseline trained by this project with full-softmax
  cross-entropy and nothing else (``python bench/bench_model_choices.py --dataset <dataset> --variant
  no-retrieval-loss --set retrieval_loss_weight=0``, its result file copied there) for its training time, and
  ``docs/eval/<dataset>-sasrec-ce-eval.json`` (``streamrec eval --no-served`` of that run's artifacts) for its
  figures ranked as served, as every other row is; without the evaluation, the run's own test figures.

Published rows are the papers' (``../shared/README.md`` names each source). Run:
``python bench/bench_quality_table.py [--reports docs/eval]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CUTOFFS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")

# Full ranking, leave-one-out, the S3-Rec files: (HR@10, NDCG@10, HR@20, NDCG@20), None where not published.
PUBLISHED: dict[str, dict[str, tuple[float | None, ...]]] = {
    "beauty": {
        "SASRec": (0.0605, 0.0318, 0.0902, 0.0394),
        "S3-Rec": (0.0647, 0.0327, 0.0994, 0.0414),
        "ICLRec": (0.0744, 0.0403, None, None),
        "BSARec": (0.1008, 0.0611, 0.1373, 0.0703),
        "TV-Rec": (0.1017, 0.0608, 0.1403, 0.0705),
        "WEARec": (0.1041, 0.0614, 0.1391, 0.0703),
    },
    "sports": {
        "SASRec": (0.0350, 0.0192, None, None),
        "S3-Rec": (0.0385, 0.0204, None, None),
        "ICLRec": (0.0437, 0.0238, None, None),
        "BSARec": (0.0612, 0.0360, 0.0858, 0.0422),
        "TV-Rec": (0.0635, 0.0363, 0.0880, 0.0425),
        "WEARec": (0.0631, 0.0367, 0.0895, 0.0433),
    },
    "yelp": {
        "SASRec": (0.0274, 0.0136, None, None),
        "S3-Rec": (0.0341, 0.0168, None, None),
        "ICLRec": (0.0409, 0.0207, None, None),
        "TV-Rec": (0.0474, 0.0245, 0.0777, 0.0321),
    },
}
NAMES = {"beauty": "Beauty", "sports": "Sports", "yelp": "Yelp"}
# The quality issue's targets for the served lists: (HR@10, NDCG@10).
TARGETS = {"beauty": (0.105, 0.062), "sports": (0.064, 0.037), "yelp": (0.048, 0.025)}
OFFLINE_ROWS = (
    ("popularity", "popularity (ours)"),
    ("item_knn", "item-kNN, last 3 items decayed (ours)"),
    ("ranker", "streamrec ranker alone (offline)"),
    ("model", "streamrec ranker + λ·item-kNN (offline)"),
)


def _cells(values: tuple[float | None, ...], bold: bool = False) -> str:
    text = ["—" if value is None else f"{value:.4f}" for value in values]
    return " | ".join(f"**{cell}**" if bold and cell != "—" else cell for cell in text)


def _seconds(seconds: float | None, threads: int | None) -> str:
    return "—" if seconds is None else f"{seconds:,.0f} s, {threads} thread{'s' if threads != 1 else ''}"


def as_served(results: dict[str, Any]) -> dict[str, Any]:
    """A model's full-ranking figures ranked as served: what the lists leave out is excluded and a target among it
    is a miss. In these datasets every event is a purchase, so that is the user's whole history, as in the published
    protocol; the "full" protocol would hand the model every re-visited target (Yelp has some). Reports written
    before the protocol existed have only "full"."""
    return results.get("full_as_served") or results["full"]


def table(
    dataset: str, report: dict[str, Any], baseline: dict[str, Any] | None, baseline_eval: dict[str, Any] | None
) -> list[str]:
    """The markdown lines of one dataset's table."""
    lines = [
        f"| {NAMES[dataset]} ({report['n_users']:,} users, {report['n_items']:,} items) | "
        + " | ".join(CUTOFFS)
        + " | training |",
        "|---" * (len(CUTOFFS) + 2) + "|",
    ]
    for name, values in PUBLISHED[dataset].items():
        lines.append(f"| {name} (published) | {_cells(values)} | — |")
    if baseline is not None:
        ranker = baseline["test"]["ranker"]
        if baseline_eval is not None:
            ranker = as_served(baseline_eval["results"]["ranker"])
        time = _seconds(baseline["train_seconds"], baseline["threads"])
        lines.append(f"| SASRec, full-softmax CE (ours) | {_cells(tuple(ranker[c] for c in CUTOFFS))} | {time} |")
    training = report.get("training") or {}
    time = _seconds(training.get("seconds"), training.get("torch_threads"))
    for key, label in OFFLINE_ROWS:
        full = as_served(report["results"][key])
        lines.append(f"| {label} | {_cells(tuple(full[c] for c in CUTOFFS))} | {time if key == 'model' else ''} |")
    served = report["served"]
    lines.append(f"| **streamrec, served** (top-20 lists) | {_cells(tuple(served[c] for c in CUTOFFS), bold=True)} | |")
    return lines


def verdict(dataset: str, report: dict[str, Any]) -> str:
    """Served against the targets, the best published row and the offline model."""
    served, offline = report["served"], as_served(report["results"]["model"])
    hr, ndcg = TARGETS[dataset]
    best = max(PUBLISHED[dataset].items(), key=lambda row: row[1][1] or 0.0)
    met = served["HR@10"] >= hr and served["NDCG@10"] >= ndcg
    gap = {cutoff: served[cutoff] / offline[cutoff] - 1 for cutoff in ("HR@10", "NDCG@10")}
    return (
        f"served HR@10 {served['HR@10']:.4f} / NDCG@10 {served['NDCG@10']:.4f}: target {hr} / {ndcg} "
        f"{'met' if met else 'NOT met'}; best published NDCG@10 {best[0]} {best[1][1]:.4f}; served / offline "
        f"HR@10 {gap['HR@10']:+.1%}, NDCG@10 {gap['NDCG@10']:+.1%}"
    )


def blend_choice(report: dict[str, Any]) -> str:
    """The served item-kNN's memory, transition weight and blend weight, with the validation NDCG@10 that chose them:
    per transition weight, its best blend weight (reports written before the transitions existed: the weight alone)."""
    training = report.get("training") or {}
    knn, by_transition = training.get("item_knn") or {}, training.get("blend_validation_ndcg@10")
    if not knn or not by_transition:
        return f"blend weight {training.get('blend_weight')}"
    best = {rho: max(row.items(), key=lambda cell: cell[1]) for rho, row in by_transition.items()}
    return (
        f"item-kNN: last {knn['n_recent']} · {knn['decay']:g}, transition weight {knn['transition_weight']:g}, "
        f"λ = {training['blend_weight']:g}; validation NDCG@10 by transition weight (best λ): "
        + ", ".join(f"{float(rho):g}: {value:.4f} ({float(weight):g})" for rho, (weight, value) in best.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=Path, default=ROOT / "docs" / "eval", help="where the reports are")
    args = parser.parse_args()
    found = False
    for dataset in PUBLISHED:
        path = args.reports / f"{dataset}.json"
        if not path.exists():
            print(f"{dataset}: no report at {path}")
            continue
        found = True
        report = json.loads(path.read_text())
        baseline_path = args.reports / f"{dataset}-sasrec-ce.json"
        baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else None
        baseline_eval_path = args.reports / f"{dataset}-sasrec-ce-eval.json"
        baseline_eval = json.loads(baseline_eval_path.read_text()) if baseline_eval_path.exists() else None
        lines = ["", *table(dataset, report, baseline, baseline_eval), "", verdict(dataset, report)]
        print("\n".join([*lines, blend_choice(report)]))
    if not found:
        raise SystemExit(f"no report in {args.reports}")


if __name__ == "__main__":
    main()
