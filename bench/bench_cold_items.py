#!/usr/bin/env python
"""The cold-start item protocol on a dataset, with the commands a user would run.

Usage::

    python bench/bench_cold_items.py --dataset beauty|shop|shop-validation|taobao [--share 0.1] [--threads 2]
        [--set FIELD=VALUE]

1. The dataset's events and a catalogue of its items are written to ``bench/results/cold_items/<dataset>/``:
   Amazon Beauty with each item's attribute ids (category and brand, ``Beauty_item2attributes.json``; the file has
   no titles), the simulated shop (``streamrec simulate``: titles, categories, attributes; seed 7, and seed 8 for
   ``shop-validation``, where serving settings of new items are chosen), the Taobao head log
   with each item's category id.
2. ``streamrec train --hold-out-items SHARE --catalog ...`` keeps a seeded share of the items out of training (every
   event on them removed) and fits the content projection on the trained items' catalogue records.
3. ``streamrec eval --catalog ... --no-served`` ranks every later interaction on a held-out item under the
   content placement (what a worker serves), a random placement and popularity among the new items
   (``model/cold_items.py``); the report goes to ``docs/eval/<dataset>-cold-items[-<variant>].json``.

``--set FIELD=VALUE`` passes ``STREAMREC_TRAIN__FIELD`` to the training (e.g. ``content_encoder=hashed``) and names
the report after it. ``--recontent VARIANT`` trains nothing: it copies that variant's trained model (``defaults``
for the one without ``--set``) and fits only its content projection again with the ``--set`` fields (``streamrec
recontent``; results named ``recontent[-<fields>]``), so content features are compared on one and the same item
table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from _measure import run, streamrec

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "cold_items"
DOCS = REPO / "docs" / "eval"
DATA = REPO.parent / "shared" / "data"
SHOP = {"users": 2000, "items": 1000, "events": 100_000}
# The shop reported, and another one on which serving settings of new items are chosen (never on the reported one).
SHOP_SEEDS = {"shop": 7, "shop-validation": 8}
# The Taobao head log is sparse: most items occur once (README, Quality).
TAOBAO_TRAINING = {"MIN_ITEM_COUNT": "2", "BATCH_SIZE": "128", "TIME_BUDGET_S": "480"}


def beauty_inputs(directory: Path) -> tuple[Path, Path]:
    """Beauty.txt, and a catalogue whose records carry each item's attribute ids."""
    from streamrec.model.datasets import load_item_attributes

    events = DATA / "amazon-beauty" / "Beauty.txt"
    attributes = load_item_attributes(DATA / "amazon-beauty" / "Beauty_item2attributes.json")
    records = [
        {"item_id": item, "title": "", "attributes": [f"attr{a}" for a in values]}
        for item, values in attributes.items()
    ]
    return events, write_catalog(directory, records)


def taobao_inputs(directory: Path) -> tuple[Path, Path]:
    """The Taobao head log, and a catalogue whose records carry each item's category id."""
    from streamrec.model.datasets import load_taobao_categories

    events = DATA / "taobao" / "UserBehavior_head.csv"
    categories = load_taobao_categories(events)
    records = [{"item_id": item, "title": "", "category": f"cat{category}"} for item, category in categories.items()]
    return events, write_catalog(directory, records)


def shop_inputs(directory: Path) -> tuple[Path, Path]:
    """The simulated shop's events and catalogue, as ``streamrec simulate`` writes them (its seed by directory)."""
    events = directory / "shop.jsonl"
    if not events.exists():
        options = [f"--{key}={value}" for key, value in (SHOP | {"seed": SHOP_SEEDS[directory.name]}).items()]
        run(streamrec("simulate", "--out", str(events), *options), directory / "simulate.log", dict(os.environ))
    return events, directory / "shop.items.jsonl"


def write_catalog(directory: Path, records: list[dict[str, Any]]) -> Path:
    path = directory / "catalog.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


INPUTS = {"beauty": beauty_inputs, "shop": shop_inputs, "shop-validation": shop_inputs, "taobao": taobao_inputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(INPUTS), required=True)
    parser.add_argument("--share", type=float, default=0.1, help="share of the items held out")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the training")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a TrainConfig field")
    parser.add_argument(
        "--recontent", metavar="VARIANT", help="refit only the content projection of this variant's trained model"
    )
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found: the datasets live in ../shared/data beside the repository")
    variant = "-".join(f"{field}-{value}" for field, value in settings.items())
    if args.recontent:
        variant = f"recontent-{variant}" if variant else "recontent"  # never the trained model's own directory
    directory = RESULTS / args.dataset
    directory.mkdir(parents=True, exist_ok=True)
    events, catalog = INPUTS[args.dataset](directory)

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    if args.dataset == "taobao":
        env |= {f"STREAMREC_TRAIN__{field}": value for field, value in TAOBAO_TRAINING.items()}
    env |= {f"STREAMREC_TRAIN__{field.upper()}": value for field, value in settings.items()}
    if args.threads:
        env["STREAMREC_TRAIN__TORCH_THREADS"] = str(args.threads)
    artifacts = directory / f"{variant or 'defaults'}.artifacts"
    shutil.rmtree(artifacts, ignore_errors=True)
    if args.recontent:
        trained = directory / f"{args.recontent}.artifacts"
        if not trained.is_dir():
            raise SystemExit(f"{trained} not found: run this dataset's {args.recontent} variant first")
        shutil.copytree(trained, artifacts)
        refit = ["recontent", "--artifacts", str(artifacts), "--catalog", str(catalog)]
        seconds = run(streamrec(*refit), artifacts.with_suffix(".recontent.log"), env)
        print(f"content projection of {args.recontent}'s model fitted again in {seconds:.0f} s")
    else:
        training = ["train", "--events", str(events), "--out", str(artifacts), "--catalog", str(catalog)]
        log = artifacts.with_suffix(".train.log")
        seconds = run(streamrec(*training, "--hold-out-items", str(args.share)), log, env)
        print(f"trained in {seconds:.0f} s")
    report = DOCS / f"{args.dataset}-cold-items{'-' + variant if variant else ''}.json"
    evaluation = ["eval", "--events", str(events), "--artifacts", str(artifacts), "--catalog", str(catalog)]
    log = artifacts.with_suffix(".eval.log")
    run(streamrec(*evaluation, "--no-served", "--output", str(report)), log, env)
    table = log.read_text().split("cold-start items:", 1)[-1].split("\nwrote ", 1)[0]
    print(f"cold-start items:{table}\nwrote {report}")


if __name__ == "__main__":
    main()
