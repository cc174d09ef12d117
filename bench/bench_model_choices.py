#!/usr/bin/env python
"""Model choices measured one change at a time on the validation split of the shared benchmark datasets.

Usage::

    python bench/bench_model_choices.py --dataset beauty --variant dropout-0.5 --set dropout=0.5 [--threads 1]
    python bench/bench_model_choices.py --report

A variant is a name and the ``STREAMREC_TRAIN__*`` fields it changes (``--set FIELD=VALUE``, repeatable; a variant
without ``--set`` is today's defaults). Each run is what a user would do: ``streamrec train`` on the dataset in its
own process, everything else at its default; the run's manifest gives the validation figures its choices are made
on (the ranker's NDCG@10 / HR@10 at the best epoch, and the served blend's NDCG@10 at the weight validation picked),
the epochs and the training time. Test figures are kept in the results but the report leaves them out: nothing is
chosen on the test split. Each run's result is kept in ``bench/results/model_choices/<dataset>/<variant>.json``, so
variants can run one at a time (or two at once with ``--threads 1`` on a 2-core machine) and be reported together.

``--without-test`` trains on the dataset with every user's last item (the test item) removed, so that the run's own
test split is the original validation split: choices that change what the model learns from (``refit``, which
trains on the validation items) are compared there, on data the original test split never informs. Such runs are
reported under ``<dataset>-without-test`` by their test figures, which are validation figures of the original split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from _measure import run, streamrec

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "model_choices"
DATA = REPO.parent / "shared" / "data"
DATASETS = {
    "beauty": DATA / "amazon-beauty" / "Beauty.txt",
    "sports": DATA / "amazon-sports" / "Sports_and_Outdoors.txt",
    "yelp": DATA / "yelp" / "Yelp.txt",
}


def without_test(events: Path, directory: Path) -> Path:
    """A copy of a one-user-per-line dataset with each user's last item removed (kept with the results)."""
    copy = directory / f"{events.stem}-without-test.txt"
    if not copy.exists():
        directory.mkdir(parents=True, exist_ok=True)
        lines = (line.split() for line in events.read_text().splitlines() if line.strip())
        partial = copy.with_name(f"{copy.name}.{os.getpid()}.partial")  # two runs may start together
        partial.write_text("".join(" ".join(fields[:-1]) + "\n" for fields in lines if len(fields) > 2))
        partial.replace(copy)
    return copy


def train(
    dataset: str, variant: str, settings: dict[str, str], threads: int | None, drop_test: bool = False
) -> dict[str, Any]:
    events = DATASETS[dataset]
    if not events.exists():
        raise SystemExit(f"{events} not found: the datasets live in ../shared/data beside the repository")
    if drop_test:
        events = without_test(events, RESULTS / f"{dataset}-without-test")
        dataset = f"{dataset}-without-test"
    out = RESULTS / dataset / f"{variant}.artifacts"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env |= {f"STREAMREC_TRAIN__{field.upper()}": value for field, value in settings.items()}
    if threads:
        env["STREAMREC_TRAIN__TORCH_THREADS"] = str(threads)
    log = RESULTS / dataset / f"{variant}.log"
    wall = run(streamrec("train", "--events", str(events), "--out", str(out)), log, env)
    return summary(dataset, variant, settings, out, wall)


def summary(dataset: str, variant: str, settings: dict[str, str], out: Path, wall: float | None) -> dict[str, Any]:
    """The result of a finished run, from the manifest of the version it wrote under ``out``."""
    version = (out / "LATEST").read_text().strip()
    manifest = json.loads((out / version / "manifest.json").read_text())
    training = manifest["training"]
    best = {key.lower(): value for key, value in training["history"][training["best_epoch"] - 1].items()}
    blend = manifest.get("blend_validation", {}).get("NDCG@10", {})
    return {
        "dataset": dataset,
        "variant": variant,
        "settings": settings,
        "date": time.strftime("%Y-%m-%d"),
        "threads": training["torch_threads"],
        "epochs": training["epochs"],
        "best_epoch": training["best_epoch"],
        "train_seconds": training["seconds"],
        "wall_seconds": wall,
        "softmax_precision": training.get("softmax_precision", "float32"),
        "val_ranker_ndcg@10": best["val_ranker_ndcg@10"],
        "val_ranker_hr@10": best["val_ranker_hr@10"],
        "val_retrieval_ndcg@10": best["val_retrieval_ndcg@10"],
        "blend_weight": manifest.get("blend_weight"),
        "val_blend_ndcg@10": max(blend.values()) if blend else None,
        "test": manifest["metrics"]["test"],
        "artifacts": str(out / version),
    }


def best_epoch_with_patience(scores: dict[int, float], patience: int) -> int:
    """The epoch early stopping with ``patience`` keeps, given the validation score of every epoch it scored (a
    sampled warm-up's epochs are not)."""
    best = min(scores)
    for epoch, score in sorted(scores.items()):
        if score > scores[best]:
            best = epoch
        elif epoch - best >= patience:
            break
    return best


def patience_report(runs: list[dict[str, Any]], patience: int = 3) -> str:
    """Whether a smaller patience would have kept the same best epoch in every recorded run (validation only)."""
    same, checked = 0, 0
    for result in runs:
        manifest_path = Path(result["artifacts"]) / "manifest.json"
        if not manifest_path.exists():
            continue
        manifest = json.loads(manifest_path.read_text())
        if manifest["train_config"]["patience"] <= patience:
            continue  # it stopped with this patience or less: nothing to compare
        # Older manifests spell the keys in lower case.
        records = [{k.lower(): v for k, v in epoch.items()} for epoch in manifest["training"]["history"]]
        scores = {record["epoch"]: record["val_ranker_ndcg@10"] for record in records if "val_ranker_ndcg@10" in record}
        checked += 1
        same += best_epoch_with_patience(scores, patience) == result["best_epoch"]
    return f"patience {patience} keeps the best epoch of {same} of {checked} runs trained with a larger patience"


def report() -> None:
    for directory in sorted(RESULTS.glob("*")):
        rows = [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]
        if not rows:
            continue
        if directory.name.endswith("-without-test"):
            print(f"\n{directory.name} (its test split = the original validation split)")
            print("| variant | changes | ranker NDCG@10 | ranker HR@10 | retrieval NDCG@10 | epochs (best) | s |")
            print("|---|---|---|---|---|---|---|")
            for r in sorted(rows, key=lambda r: r["test"]["ranker"]["NDCG@10"]):
                changes = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults"
                ranker, retrieval = r["test"]["ranker"], r["test"]["retrieval"]
                print(
                    f"| {r['variant']} | {changes} | {ranker['NDCG@10']:.4f} | {ranker['HR@10']:.4f} | "
                    f"{retrieval['NDCG@10']:.4f} | {r['epochs']} ({r['best_epoch']}) | {r['train_seconds']:.0f} |"
                )
            continue
        print(f"\n{directory.name} (validation split)")
        print(
            "| variant | changes | val ranker NDCG@10 | val ranker HR@10 | val blend NDCG@10 (λ) | epochs (best) | s |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: r["val_ranker_ndcg@10"]):
            changes = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults"
            blend = "—" if r["val_blend_ndcg@10"] is None else f"{r['val_blend_ndcg@10']:.4f} ({r['blend_weight']:g})"
            print(
                f"| {r['variant']} | {changes} | {r['val_ranker_ndcg@10']:.4f} | {r['val_ranker_hr@10']:.4f} | "
                f"{blend} | {r['epochs']} ({r['best_epoch']}) | {r['train_seconds']:.0f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS))
    parser.add_argument("--variant", help="name of the run (its result file)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a TrainConfig field")
    parser.add_argument("--threads", type=int, help="torch threads of the run (default: the training default)")
    parser.add_argument("--report", action="store_true", help="print the table of every recorded run")
    parser.add_argument(
        "--without-test", action="store_true", help="train without each user's test item (see the module doc)"
    )
    parser.add_argument(
        "--collect", action="store_true", help="record a run whose training finished but was not recorded"
    )
    args = parser.parse_args()
    if args.report:
        report()
        print("\n" + patience_report([json.loads(p.read_text()) for p in sorted(RESULTS.glob("*/*.json"))]))
        return
    if not args.dataset or not args.variant:
        raise SystemExit("--dataset and --variant are needed (or --report)")
    settings = {}
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE")
        settings[field.strip()] = value.strip()
    if args.collect:
        dataset = f"{args.dataset}-without-test" if args.without_test else args.dataset
        recorded = RESULTS / dataset / f"{args.variant}.json"
        # A run recorded before keeps its settings and wall time; the rest is read again from its manifest.
        earlier = json.loads(recorded.read_text()) if recorded.exists() else {}
        settings = earlier.get("settings", settings)
        out = RESULTS / dataset / f"{args.variant}.artifacts"
        result = summary(dataset, args.variant, settings, out, earlier.get("wall_seconds"))
    else:
        result = train(args.dataset, args.variant, settings, args.threads, args.without_test)
    path = RESULTS / result["dataset"] / f"{args.variant}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "test"}, indent=2))


if __name__ == "__main__":
    main()
