#!/usr/bin/env python
"""Content features for new items, compared on validation: which text encoder, with or without exact field columns,
ridge or a small MLP.

Usage::

    python bench/bench_content_features.py --dataset beauty|shop|shop-validation|taobao [--without-minilm]

It reads the model that ``python bench/bench_cold_items.py --dataset D`` trained (its held-out items never reached
it) and the dataset's catalogue, and fits each candidate map from an item's content to its learned row on the
trained items. Each candidate is scored the way the training chooses between them: on a seeded held-out tenth of
the trained items (validation; the cold-start protocol's held-out items are never read), by the mean cosine of
the predicted row to the learned one and by how often the learned row is among the prediction's 10 nearest trained
rows. Candidates:

* ``hashed-512`` / ``hashed-4096`` / ``all-MiniLM-L6-v2``: the text alone (title, category and attributes as one
  text), ridge map;
* ``... + fields``: the text and one exact column per category and attribute value (``FieldVocabulary``, at most
  ``content_field_values``), ridge map;
* ``MLP on hashed-512 + fields``: the same features through a two-layer MLP (256 hidden units, dropout 0.2,
  AdamW, cosine loss, 60 epochs), trained on the same nine tenths.

The report goes to ``docs/eval/<dataset>-content-features.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _measure import write_report

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "cold_items"
DOCS = REPO / "docs" / "eval"
MLP_EPOCHS, MLP_HIDDEN, MLP_BATCH = 60, 256, 256


def trained_items(dataset: str) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The catalogue records of the items the dataset's cold-item model was trained on, and their learned rows."""
    from streamrec.model.artifacts import load_artifacts

    directory = RESULTS / dataset
    artifacts_dir = directory / "defaults.artifacts"
    if not artifacts_dir.is_dir():
        raise SystemExit(f"{artifacts_dir} not found: run python bench/bench_cold_items.py --dataset {dataset} first")
    catalog = directory / "catalog.jsonl"
    if not catalog.exists():
        catalog = directory / "shop.items.jsonl"
    records = {str(record["item_id"]): record for record in map(json.loads, catalog.read_text().splitlines())}
    artifacts = load_artifacts(artifacts_dir)
    described = [item for item in artifacts.item_ids if item in records]
    rows = artifacts.item_embeddings[[artifacts.row_of[item] for item in described]]
    return [records[item] for item in described], rows.astype(np.float64)


def mlp_quality(features: np.ndarray, targets: np.ndarray, seed: int) -> dict[str, float]:
    """The held-out quality of a two-layer MLP from ``features`` to ``targets`` (the ridge candidates' split)."""
    import torch

    from streamrec.model.content import holdout_split, prediction_quality

    held, kept = holdout_split(len(features), 0.1, seed)
    torch.manual_seed(seed)
    x, y = torch.tensor(features, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], MLP_HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(MLP_HIDDEN, y.shape[1]),
    )
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    train_rows = torch.as_tensor(kept)
    for _ in range(MLP_EPOCHS):
        net.train()
        for batch in train_rows[torch.randperm(len(train_rows))].split(MLP_BATCH):
            loss = (1 - torch.nn.functional.cosine_similarity(net(x[batch]), y[batch])).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        predictions = net(x[torch.as_tensor(held)]).numpy().astype(np.float64)
    return prediction_quality(targets, held, kept, predictions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["beauty", "shop", "shop-validation", "taobao"], required=True)
    parser.add_argument("--without-minilm", action="store_true", help="leave out the pretrained text model")
    args = parser.parse_args()

    import torch

    from streamrec.model.config import TrainConfig
    from streamrec.model.content import ContentProjection, HashedTextEncoder, MiniLMEncoder, item_text

    torch.set_num_threads(1)
    config = TrainConfig()
    records, rows = trained_items(args.dataset)
    texts = [item_text(record) for record in records]
    encoders: list[Any] = [HashedTextEncoder(512), HashedTextEncoder(4096)]
    if not args.without_minilm:
        encoders.append(MiniLMEncoder())
    results: list[dict[str, Any]] = []

    def record(name: str, quality: dict[str, float], seconds: float) -> None:
        results.append({"candidate": name, **quality, "seconds": round(seconds, 1)})
        print(f"{name:34s} cosine {quality['holdout_cosine']:.3f}  hit rate@10 {quality['holdout_hit_rate@10']:.3f}")

    for encoder in encoders:
        started = time.perf_counter()
        text = encoder.encode(texts)
        encoded = time.perf_counter() - started
        for field_values in (0, config.content_field_values):
            if field_values and encoder.dim > 512:
                continue  # one wide hashing is enough to show what collisions cost
            started = time.perf_counter()
            projection = ContentProjection.fit(
                text, rows, encoder.name, config.content_ridge, seed=config.seed, records=records,
                max_field_values=field_values,
            )  # fmt: skip
            name = encoder.name + (f" + fields ({len(projection.fields)})" if field_values else "")
            record(name, projection.quality, encoded + time.perf_counter() - started)
            if field_values and encoder.name == "hashed-512":
                started = time.perf_counter()
                features = projection.features(text, records)
                record(
                    "MLP on hashed-512 + fields",
                    mlp_quality(features, rows, config.seed),
                    time.perf_counter() - started,
                )

    report = write_report(
        DOCS / f"{args.dataset}-content-features.json",
        {
            "dataset": args.dataset,
            "items": len(records),
            "protocol": "a seeded held-out tenth of the trained items (validation): mean cosine of the predicted row "
            "to the learned one, and the share whose learned row is among the prediction's 10 nearest trained rows",
            "ridge": config.content_ridge,
            "candidates": results,
        },
    )
    print(f"wrote {DOCS / f'{args.dataset}-content-features.json'} ({report['when']})")


if __name__ == "__main__":
    main()
