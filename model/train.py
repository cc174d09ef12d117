"""Training: the shared item table ``E`` and the sequence ranker, published as a versioned artifact directory.

One model serves both stages of the worker, so one training fits both:

* **ranking** — SASRec next-item prediction: at every position of a user's event sequence the encoder's hidden
  state is scored against the whole catalogue (full softmax cross-entropy, no negative sampling);
* **retrieval** — the worker's query is the user's *interest vector*, the decayed, event-type-weighted sum of
  the embeddings of every item the user touched, ``v = Σ w[type] · 2^(−(t_now − t)/half_life) · E[item]``
  (``stream/user_state.py``). The auxiliary loss uses exactly that vector, built from the same event weights,
  half-life and timestamps, as the query of a second full softmax over ``E``. Inner-product ranking does not
  depend on the length of the query, so the loss L2-normalises it and learns one temperature instead; the
  served ranking is unchanged by that.

The data is split leave-one-out per user (``model/splits.py``): the second-last interaction decides early
stopping, the last one gives the test metrics recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from safetensors.torch import save_file
from tqdm.auto import tqdm

from streamrec.index.item_index import ItemIndex, exact_recall
from streamrec.model.artifacts import (
    CONTENT_FILE,
    CURVE_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    ITEM_IDS_FILE,
    ITEM_KNN_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    SEGMENTS_FILE,
    SHOPPERS_FILE,
    ModelArtifacts,
    load_artifacts,
    save_item_knn,
    sha256_file,
    write_latest,
)
from streamrec.model.baselines import Histories, ItemKNNModel, Scorer, blend_scores, interaction_counts
from streamrec.model.cold_items import HeldOutItems
from streamrec.model.config import TrainConfig
from streamrec.model.content import ContentProjection, candidate_encoders, item_text
from streamrec.model.evaluate import RankerScorer, RetrievalScorer, retrieve_rerank_ranks
from streamrec.model.event_log import EventLog
from streamrec.model.events import EVENT_TYPES
from streamrec.model.metrics import hit_rate, ndcg, summarize, target_ranks
from streamrec.model.ranker import PAD, RankerConfig, SequenceRanker
from streamrec.model.resume_points import ResumePoints, resume_epoch
from streamrec.model.segments import Segments, fit_segments
from streamrec.model.shoppers import ShopperProjection, draw_caps, shopper_states
from streamrec.model.softmax import (
    SampledSoftmax,
    Softmax,
    retrieval_softmax_for,
    sampled_softmax_for,
    softmax_for,
)
from streamrec.model.splits import LeaveOneOutSplit, Stage, leave_one_out
from streamrec.model.weight_average import WeightAverage

logger = logging.getLogger(__name__)


EVAL_BATCH_SCORES = 1 << 24  # scores per evaluation batch (64 MiB of float32 per matrix)
RECALL_SAMPLE = 2_000  # queries used to measure the ANN index's recall against exact search


def ranker_config(config: TrainConfig, n_items: int) -> RankerConfig:
    """The sequence ranker's shape for a catalogue of ``n_items`` items."""
    return RankerConfig(
        n_items=n_items,
        dim=config.dim,
        max_len=config.max_len,
        n_layers=config.layers,
        n_heads=config.heads,
        dropout=config.dropout,
        norm=config.norm,
        ffn_factor=config.ffn_factor,
        filter_mix=config.filter_mix,
        positions=config.positions,
    )


def type_weights(config: TrainConfig) -> np.ndarray:
    """float32 [n_event_types]: the weight of each event type code."""
    return np.array([config.event_weights[name] for name in EVENT_TYPES], dtype=np.float32)


# --- entry points ------------------------------------------------------------------------------------------------


def train_artifacts(
    log: EventLog,
    out_dir: Path,
    config: TrainConfig,
    progress: bool = True,
    catalog: Sequence[Mapping[str, Any]] | None = None,
    switch_latest: bool = True,
) -> Path:
    """Train on ``log`` and write a new artifact version under ``out_dir``; returns its directory.

    ``catalog`` (records with ``item_id``, ``title``, ``category``, ``attributes``) lets the worker embed items
    added after training: a projection from their text into the item table is fitted on the trained items the
    catalog describes. ``out_dir/LATEST`` is switched to the new version only once the directory is complete, and
    not at all without ``switch_latest`` (a candidate that must first prove itself: ``streamrec retrain``).
    """
    started = time.perf_counter()
    torch.set_num_threads(config.torch_threads or 2)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    peaks = _PeakMemory()
    peaks.mark("loaded")
    held_out = HeldOutItems.choose(log, config.hold_out_items, config.seed) if config.hold_out_items > 0 else None
    if held_out is not None:
        log = held_out.remove_from(log)

    item_ids = build_vocabulary(log, config.min_item_count)
    if not item_ids:
        raise ValueError("no item has enough events to train on")
    row_of = {item: row for row, item in enumerate(item_ids)}
    split = leave_one_out(log, row_of)
    if split.n_users == 0:
        raise ValueError("no user has the 3 interactions leave-one-out needs")
    windows = first_fit_windows(split, config)
    peaks.mark("split")
    if len(windows) == 0:
        raise ValueError("no training targets: users need a 4th interaction to train on")
    logger.info(
        "training on %s: %d users, %d items, %d events, %d windows",
        log.name, split.n_users, len(item_ids), split.n_events, len(windows),
    )  # fmt: skip

    model = SequenceRanker(ranker_config(config, len(item_ids)))
    softmax = softmax_for(config, windows.target_counts(len(item_ids)), config.seed)
    valid_users = validation_sample(split.n_users, len(item_ids), config)
    refitting = config.refit and config.validation_users == 0
    resuming = refitting and config.refit_epochs is None and config.refit_resume > 0
    with ResumePoints(config.refit_resume) if resuming else contextlib.nullcontext() as resume_points:
        history, best_epoch = _fit(model, windows, split, config, rng, progress, softmax, valid_users, resume_points)
        peaks.mark("fit")
        model.eval()
        # The item-kNN's weight is chosen on the validation split, so by the model early stopping chose there.
        item_knn, blend_manifest = fit_blend(RankerScorer(model, config.max_len), split, len(item_ids), config)
        peaks.mark("blend")
        refit_manifest: dict[str, Any] = {}
        if refitting:
            model, refit_manifest = _refit_after_fit(model, split, config, best_epoch, history, resume_points, progress)
            peaks.mark("refit")
    train_seconds = time.perf_counter() - started

    test_users = evaluation_users(split.n_users, len(item_ids), config)
    test_ranks, queries = _evaluate(model, split, "test", config, with_baselines=True, users=test_users)
    test_metrics = {name: summarize(ranks) | {"users": len(ranks)} for name, ranks in test_ranks.items()}
    peaks.mark("test")
    embeddings = model.item_embeddings().detach().numpy().astype(np.float32)
    index = build_index(embeddings, config)
    sample = queries[rng.permutation(len(queries))[:RECALL_SAMPLE]]
    recall_k = min(100, len(item_ids))
    index_recall = exact_recall(index, embeddings, sample, recall_k)
    peaks.mark("index")
    logger.info("test metrics: %s", {name: m["NDCG@10"] for name, m in test_metrics.items()})
    segments, segments_manifest = _fit_segments(queries, embeddings, config)
    peaks.mark("segments")
    content, content_manifest = fit_content_projection(catalog, item_ids, embeddings, config)
    peaks.mark("content")
    # Live items come from the catalog: without one, a worker never holds a row for its shoppers to move.
    shoppers, shoppers_manifest = fit_shopper_projection(model, split, config) if content else (None, {})
    peaks.mark("shoppers")

    fingerprint = log.fingerprint()
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "data_fingerprint": fingerprint,
        "dataset": log.name,
        "n_items": len(item_ids),
        "dim": config.dim,
        "ranker_config": model.config.to_dict(),
        "train_config": config.model_dump(mode="json"),
        "index": index_manifest(index, config) | {f"recall@{recall_k}": index_recall},
        "data": {
            "events": len(log),
            "users": split.n_users,
            "items": len(item_ids),
            "training_windows": len(windows),
        },
        "training": {
            "epochs": len(history),
            "best_epoch": best_epoch,
            **(
                {"validation_users": len(held)} if (held := validation_users(split.n_users, config)) is not None else {}
            ),
            "seconds": round(train_seconds, 2),
            "torch_threads": torch.get_num_threads(),
            "softmax": softmax.name,
            "softmax_precision": softmax.precision,
            "retrieval_softmax": "sampled" if config.retrieval_softmax == "sampled" else softmax.name,
            "sparse_table_updates": softmax.sparse_gradients and len(item_ids) >= config.sparse_table_min_items,
            "history": history,
            **({"refit": refit_manifest} if refit_manifest else {}),
            # The process's peak resident memory (MiB) and the time when each phase ended: where a peak comes from.
            "phases": peaks.marks,
        },
        "metrics": {
            "protocol": "leave-one-out; full ranking over the catalogue; the user's history items are excluded "
            "(except the target itself); rank = number of items scoring strictly higher",
            "test": test_metrics,
            "validation": {k: v for k, v in history[best_epoch - 1].items() if k.startswith("val_")},
            "n_candidates": config.n_candidates,
        },
        **blend_manifest,
        **segments_manifest,
        **content_manifest,
        **shoppers_manifest,
        **({"held_out_items": held_out.manifest()} if held_out is not None else {}),
    }

    def write(staging: Path, version: str) -> None:
        save_file(
            {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()},
            str(staging / MODEL_FILE),
            metadata={"version": version, "format_version": str(FORMAT_VERSION)},
        )
        (staging / ITEM_IDS_FILE).write_bytes(orjson.dumps(item_ids))
        index.save(staging / INDEX_FILE)
        _plot_curve(history, staging / CURVE_FILE)
        if item_knn is not None:
            save_item_knn(item_knn, staging / ITEM_KNN_FILE)
        if segments is not None:
            segments.save(staging / SEGMENTS_FILE)
        if content is not None:
            content.save(staging / CONTENT_FILE)
        if shoppers is not None:
            shoppers.save(staging / SHOPPERS_FILE)

    return _publish(out_dir, fingerprint, write, manifest, switch_latest)


# --- segments and content embeddings -------------------------------------------------------------------------


def _fit_segments(
    user_vectors: np.ndarray, item_embeddings: np.ndarray, config: TrainConfig
) -> tuple[Segments | None, dict[str, Any]]:
    """K-means segments of the users' interest vectors and clusters of the items (``model/segments.py``)."""
    if config.n_segments < 1:
        return None, {}
    n_clusters = config.n_item_clusters or max(1, min(256, round(math.sqrt(len(item_embeddings) / 2))))
    started = time.perf_counter()
    segments = fit_segments(user_vectors, item_embeddings, config.n_segments, n_clusters, seed=config.seed)
    users = np.bincount(segments.assign_users(user_vectors), minlength=segments.n_segments)
    manifest = {
        "segments": {
            "file": SEGMENTS_FILE,
            "n_segments": segments.n_segments,
            "n_item_clusters": segments.n_item_clusters,
            "users_per_segment": users.tolist(),
            "seconds": round(time.perf_counter() - started, 2),
        }
    }
    return segments, manifest


def fit_content_projection(
    catalog: Sequence[Mapping[str, Any]] | None, item_ids: Sequence[str], embeddings: np.ndarray, config: TrainConfig
) -> tuple[ContentProjection | None, dict[str, Any]]:
    """The text → item-embedding map for items added after training, fitted on trained items with a record."""
    if not catalog:
        return None, {}
    row_of = {item: row for row, item in enumerate(item_ids)}
    described = [(row_of[str(r["item_id"])], r) for r in catalog if str(r.get("item_id")) in row_of]
    if len(described) < 2:
        logger.warning("the catalog describes %d trained items: no content projection", len(described))
        return None, {}
    if len(described) > config.content_fit_max_items:
        picked = np.random.default_rng(config.seed).choice(len(described), config.content_fit_max_items, replace=False)
        described = [described[i] for i in np.sort(picked)]
    started = time.perf_counter()
    rows = np.array([row for row, _ in described])
    records = [record for _, record in described]
    texts = [item_text(record) for record in records]
    field_choices = (0, config.content_field_values) if config.content_field_values > 0 else (0,)
    candidates = []
    for encoder in candidate_encoders(config.content_encoder):
        text = encoder.encode(texts)
        for field_values in field_choices:
            candidates.append(
                ContentProjection.fit(
                    text,
                    embeddings[rows],
                    encoder.name,
                    ridge=config.content_ridge,
                    seed=config.seed,
                    records=records,
                    max_field_values=field_values,
                )
            )
    projection = choose_content_projection(candidates)
    logger.info(
        "content projection (%s, %d field values) on %d items: %s",
        projection.encoder_name,
        len(projection.fields),
        len(rows),
        projection.quality,
    )
    manifest = {
        "content": {
            "file": CONTENT_FILE,
            "encoder": projection.encoder_name,
            "field_values": len(projection.fields),
            "items": len(rows),
            "quality": projection.quality,
            "candidates": [{"encoder": c.encoder_name, "field_values": len(c.fields), **c.quality} for c in candidates],
            "seconds": round(time.perf_counter() - started, 2),
        }
    }
    return projection, manifest


CONTENT_CHOICE_MARGIN = 0.01
"""Held-out cosine a costlier content projection must add to replace a cheaper one: about two standard errors of
the mean cosine over a thousand held-out items, so that noise never buys the text model's encoding time."""


def choose_content_projection(candidates: Sequence[ContentProjection]) -> ContentProjection:
    """The projection to serve among ``candidates``, cheapest first: a later one replaces the choice only where it
    places the trained items' held-out tenth (validation) better by :data:`CONTENT_CHOICE_MARGIN` of mean cosine."""

    def cosine(projection: ContentProjection) -> float:
        return projection.quality.get("holdout_cosine", -math.inf)

    chosen = candidates[0]
    for candidate in candidates[1:]:
        if cosine(candidate) > cosine(chosen) + CONTENT_CHOICE_MARGIN:
            chosen = candidate
    return chosen


def fit_shopper_projection(
    model: SequenceRanker, split: LeaveOneOutSplit, config: TrainConfig
) -> tuple[ShopperProjection | None, dict[str, Any]]:
    """The map from a new item's shoppers' states to its row (``model/shoppers.py``), fitted on the trained items:
    one forward pass over every interaction before the users' test items, each trained item averaging the states
    of its first few shoppers in a random order (a count drawn per item, as a live item is learned)."""
    started = time.perf_counter()
    windows = training_windows(split, config, before="test")
    n_items, dim = model.config.n_items, model.config.dim
    caps = draw_caps(n_items, config.seed)
    sums, counts = np.zeros((n_items, dim)), np.zeros(n_items)
    population, positions = np.zeros(dim), 0
    model.eval()
    with torch.inference_mode():
        for batch in window_batches(windows.lengths, config.batch_size, np.random.default_rng([config.seed, 5])):
            items, targets, _, _ = windows.batch(batch)
            flat = targets.reshape(-1)
            wanted = torch.nonzero(flat >= 0).squeeze(1)
            state_sum, count = shopper_states(select_positions(model(items), wanted), flat[wanted], caps, sums, counts)
            population += state_sum
            positions += count
    embeddings = model.item_embeddings().detach().numpy()
    try:
        projection = ShopperProjection.fit(sums, counts, population / max(1, positions), embeddings, seed=config.seed)
    except ValueError as exc:
        logger.warning("no shopper projection: %s", exc)
        return None, {}
    logger.info("shopper projection on %d items: %s", projection.quality["items"], projection.quality)
    manifest = {
        "shoppers": {
            "file": SHOPPERS_FILE,
            "quality": projection.quality,
            "seconds": round(time.perf_counter() - started, 2),
        }
    }
    return projection, manifest


# --- blending the item-kNN into the served score ---------------------------------------------------------------


def fit_blend(
    ranker: Scorer, split: LeaveOneOutSplit, n_items: int, config: TrainConfig
) -> tuple[ItemKNNModel | None, dict[str, Any]]:
    """Pick the item-kNN's memory, its transition weight and its weight in the served score, and fit the item-kNN
    to serve.

    The triple maximises validation NDCG@10 (full ranking) of ``ranker + λ · item_knn`` with the item-kNN fit on
    the validation stage, so the test target never informs it; the item-kNN's similarity is the cosine plus ``ρ``
    times the directed transitions (:class:`ItemKNNModel`), scored as the two fits' sum so every ``ρ`` costs one
    addition. The ranking leaves out what the served pipeline leaves out (bought items and the item just touched):
    a user's other history items compete with the target as in the served lists, so on logs where users come back
    to items the weight is not chosen blind to re-visits. The served item-kNN is then fit on everything before the
    test target, at most ``item_knn_max_neighbors`` neighbours per item. Returns ``(None, {})`` when ``config`` does
    not blend; otherwise the model and the manifest keys to record.
    """
    if not config.blends:
        return None, {}
    weights = sorted(set(float(w) for w in config.blend_weights) | {0.0})
    rhos = sorted(set(float(w) for w in config.item_knn_transition_weights) | {0.0})
    memories = [{"n_recent": n, "decay": float(decay)} for n, decay in config.item_knn_recency]
    cosine = ItemKNNModel.fit(split, n_items, "valid")
    transitions = ItemKNNModel.of_transitions(split, n_items, "valid") if rhos[-1] > 0 else None
    targets = split.targets("valid")
    rng = np.random.default_rng(config.seed)
    keys = [(m, rho, w) for m in range(len(memories)) for rho in rhos for w in weights]
    ranks: dict[tuple[int, float, float], list[np.ndarray]] = {key: [] for key in keys}
    evaluated = validation_sample(split.n_users, n_items, config)
    step = max(1, min(config.eval_batch_size, EVAL_BATCH_SCORES // n_items))
    for begin in range(0, len(evaluated), step):
        users = evaluated[begin : begin + step]
        histories = Histories.of_users(split, users, "valid")
        exclude = histories.served_exclusions()
        ranker_scores = ranker.score_users(histories)
        for m, memory in enumerate(memories):
            cosine_scores = cosine.with_memory(**memory).score_users(histories).astype(np.float32)
            transition_scores = (
                transitions.with_memory(**memory).score_users(histories).astype(np.float32) if transitions else None
            )
            for rho in rhos:
                knn_scores = cosine_scores
                if rho > 0 and transition_scores is not None:
                    knn_scores = cosine_scores + np.float32(rho) * transition_scores
                for w in weights:
                    blended = blend_scores(ranker_scores, knn_scores, w)
                    ranks[m, rho, w].append(target_ranks(blended, targets[users], exclude, rng))
    ndcgs = {key: summarize(np.concatenate(parts))["NDCG@10"] for key, parts in ranks.items()}
    # Among equals: the smallest weight, then the smallest transition weight, then the first memory listed.
    memory, rho, best = max(ndcgs, key=lambda key: (ndcgs[key], -key[2], -key[1], -key[0]))
    knn_params = memories[memory]
    logger.info(
        "item-kNN blend: validation NDCG@10 %s; serving %s, transition weight %s, at weight %s",
        ndcgs,
        knn_params,
        rho,
        best,
    )
    served = ItemKNNModel.fit(
        split, n_items, "test", **knn_params, max_neighbors=config.item_knn_max_neighbors, transition_weight=rho
    )
    manifest = {
        "item_knn": {
            **knn_params,
            "transition_weight": rho,
            "max_neighbors": config.item_knn_max_neighbors,
            "file": ITEM_KNN_FILE,
            "entries": len(served.neighbors),
            "fit_on": "every user's history before the test target",
        },
        "blend_weight": best,
        "blend_validation": {
            "protocol": "validation NDCG@10 of ranker logits + weight · item-kNN (fit on the validation stage; "
            "cosine + transition weight · transitions), ranked as served: bought items and the item just touched "
            "left out, other history items kept",
            "NDCG@10": {str(w): ndcgs[memory, rho, w] for w in weights},
            "NDCG@10_by_memory": {
                _memory_name(params): {str(w): ndcgs[m, rho, w] for w in weights} for m, params in enumerate(memories)
            },
            "NDCG@10_by_transition_weight": {str(r): {str(w): ndcgs[memory, r, w] for w in weights} for r in rhos},
        },
    }
    return served, manifest


def _memory_name(params: Mapping[str, Any]) -> str:
    return f"n_recent={params['n_recent']},decay={params['decay']:g}"


def build_index(embeddings: np.ndarray, config: TrainConfig) -> ItemIndex:
    """The retrieval index over ``embeddings`` that ``config``'s index fields describe."""
    return ItemIndex.build(
        embeddings,
        config.index_kind,
        hnsw_m=config.hnsw_m,
        ef_construction=config.ef_construction,
        ivf_nlist=config.ivf_nlist,
        ef_search=config.ef_search,
        nprobe=config.nprobe,
        rerank_factor=config.rerank_factor,
    )


def index_manifest(index: ItemIndex, config: TrainConfig) -> dict[str, Any]:
    """The manifest's ``index`` section (without its recall, which needs the training queries)."""
    params = {"hnsw_m": config.hnsw_m, **index.search_params} if index.kind == "hnsw" else index.search_params
    return {"kind": index.kind, "file": INDEX_FILE, "params": params}


def reindex(artifact_dir: Path, config: TrainConfig) -> Path:
    """Publish a new version of an existing artifact whose index is rebuilt from its item table with ``config``'s
    index fields (``index_kind``, ``hnsw_m``, ``ivf_nlist``, ``nprobe``, ...), every other file copied unchanged,
    and ``LATEST`` switched to it: a model trained before a change of index defaults is served with the new ones
    without retraining. The manifest's recall is left out (it was measured on the training queries);
    ``streamrec eval`` measures the served one."""
    artifacts = load_artifacts(artifact_dir)
    index = build_index(artifacts.item_embeddings, config)
    index_fields = {"index_kind", "hnsw_m", "ef_construction", "ivf_nlist", "ef_search", "nprobe", "rerank_factor"}
    recorded = dict(artifacts.manifest.get("train_config", {}))
    dumped = config.model_dump(mode="json")
    updates: dict[str, Any] = {
        "index": index_manifest(index, config),
        "train_config": recorded | {key: dumped[key] for key in index_fields},
    }
    return derive_version(artifacts, INDEX_FILE, lambda path: index.save(path), updates)


def recontent(artifact_dir: Path, catalog: Sequence[Mapping[str, Any]], config: TrainConfig) -> Path:
    """Publish a new version of an existing artifact whose content projection is fitted again on its item table
    from ``catalog`` with ``config``'s content fields (``content_encoder``, ``content_field_values``,
    ``content_ridge``, ``content_fit_max_items``), every other file copied unchanged, and ``LATEST`` switched to
    it: a model trained before a change of content features, or before its catalogue was complete, places new
    items the new way without retraining. Only the items the model was trained on inform the fit."""
    artifacts = load_artifacts(artifact_dir)
    described = sum(1 for record in catalog if str(record.get("item_id")) in artifacts.row_of)
    if described < 2:
        raise ValueError(f"the catalog describes {described} of the items the model was trained on; it needs two")
    projection, manifest = fit_content_projection(catalog, artifacts.item_ids, artifacts.item_embeddings, config)
    assert projection is not None  # two described items always give one
    content_fields = {"content_encoder", "content_ridge", "content_field_values", "content_fit_max_items"}
    recorded = dict(artifacts.manifest.get("train_config", {}))
    dumped = config.model_dump(mode="json")
    updates = {**manifest, "train_config": recorded | {key: dumped[key] for key in content_fields}}
    return derive_version(artifacts, CONTENT_FILE, projection.save, updates)


def derive_version(
    artifacts: ModelArtifacts,
    replaced: str,
    write_replaced: Callable[[Path], None],
    updates: dict[str, Any],
    dropped: frozenset[str] = frozenset(),
) -> Path:
    """Publish a version next to ``artifacts``' with the file ``replaced`` written anew by ``write_replaced`` (which
    may write nothing) and the others copied; its manifest is the source's without ``dropped``, with ``updates``
    and ``derived_from``."""
    source = artifacts.directory
    copied = [name for name in artifacts.manifest["files"] if name != replaced]

    def write(staging: Path, version: str) -> None:
        for name in copied:
            shutil.copyfile(source / name, staging / name)
        write_replaced(staging / replaced)

    left_out = {"version", "created_at", "files"} | dropped
    kept = {key: value for key, value in artifacts.manifest.items() if key not in left_out}
    manifest = kept | updates | {"derived_from": artifacts.version}
    return _publish(source.parent, str(manifest.get("data_fingerprint", "unknown")), write, manifest)


def check_trained_on(artifacts: ModelArtifacts, log: EventLog) -> None:
    """Refuse work that must repeat a version's training split on another event log than it was trained on."""
    recorded = artifacts.manifest.get("data_fingerprint")
    fingerprint = log.fingerprint()
    if recorded is not None and fingerprint != recorded:
        raise ValueError(
            f"{log.name} is not the event log model version {artifacts.version} was trained on (data fingerprint "
            f"{fingerprint[:8]}, the model's {str(recorded)[:8]}); pass the event file it was trained on"
        )


def attach_item_knn(artifact_dir: Path, log: EventLog, config: TrainConfig | None = None) -> Path:
    """Publish a new version of an existing artifact with the item-kNN blend :func:`fit_blend` would add.

    ``artifact_dir`` is a version directory or a root with ``LATEST``; the new version is written next to the
    source version (its other files copied unchanged) and ``LATEST`` switched to it. ``log`` must be the data
    the source version was trained on. ``config`` defaults to the source's recorded training configuration.
    """
    artifacts = load_artifacts(artifact_dir)
    check_trained_on(artifacts, log)
    if artifacts.manifest.get("training", {}).get("refit"):
        # Its ranker learned the validation items, so it would win every weight comparison made on them.
        raise ValueError(
            f"version {artifacts.version} was refit on the validation items, where the blend weight is chosen: "
            "train again to choose it (its first, early-stopped model chooses the weight)"
        )
    recorded = dict(artifacts.manifest.get("train_config", {}))
    if config is None:
        config = recorded_train_config(artifacts.manifest)
    split = leave_one_out(log, artifacts.row_of)
    torch.set_num_threads(config.torch_threads or 2)
    ranker = RankerScorer(artifacts.ranker, artifacts.ranker.config.max_len)
    item_knn, blend_manifest = fit_blend(ranker, split, len(artifacts.item_ids), config)

    def write_item_knn(path: Path) -> None:
        if item_knn is not None:
            save_item_knn(item_knn, path)

    updates: dict[str, Any] = {
        "train_config": {
            **recorded,
            **{k: v for k, v in config.model_dump(mode="json").items() if k.startswith(("blend", "item_knn"))},
        },
        **blend_manifest,
    }
    stale = frozenset({"item_knn", "blend_weight", "blend_validation"})  # the source's blend: replaced, if any
    return derive_version(artifacts, ITEM_KNN_FILE, write_item_knn, updates, stale)


def recorded_train_config(manifest: Mapping[str, Any]) -> TrainConfig:
    """The training configuration a version's manifest records, for work that must repeat its training's choices
    (split, windows, evaluation sample, seed). Fields of other versions of the configuration are left out and
    missing ones take today's defaults; JSON lists are read back as tuples."""
    recorded = dict(manifest.get("train_config", {}))
    recorded.setdefault("validation_users", 0.0)  # versions from before the field held every validation item out
    return TrainConfig(**{key: value for key, value in recorded.items() if key in TrainConfig.model_fields})


def build_vocabulary(log: EventLog, min_item_count: int = 1) -> list[str]:
    """Item ids with at least ``min_item_count`` events, sorted: row ``i`` of every table is ``item_ids[i]``."""
    if len(log) == 0:
        return []
    ids, counts = np.unique(log.item_ids.astype(str), return_counts=True)
    return [str(item) for item in ids[counts >= min_item_count]]


# --- training data ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingWindows:
    """Training inputs: runs of at most ``max_len`` consecutive train events of one user.

    Only each window's end and length are held; :meth:`batch` gathers a batch's events from the split when it is
    trained on, so memory grows with the events, not with windows × ``max_len``.
    """

    split: LeaveOneOutSplit
    targets: np.ndarray  # int64 [N]: each event's training target row, -1 for none (split.train_targets())
    event_weights: np.ndarray  # float64 [event types]: weight of each event type
    half_life_s: float
    ends: np.ndarray  # int64 [W]: exclusive end position of each window
    lengths: np.ndarray  # int64 [W]

    def __len__(self) -> int:
        return len(self.ends)

    def batch(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(items, targets, weights, decay exponents) of ``windows``, each ``[B, width]`` left-padded to the
        longest of them: items -1 and targets -1 at padding, weights the event-type weight (0 at padding), and
        exponents ``(t − t_last) / half_life ≤ 0``."""
        split, ends, lengths = self.split, self.ends[windows], self.lengths[windows]
        width = int(lengths.max())
        positions = ends[:, None] - width + np.arange(width)[None, :]
        valid = np.arange(width)[None, :] >= (width - lengths)[:, None]
        positions = np.where(valid, positions, 0)
        items = np.where(valid, split.items[positions], PAD)
        targets = np.where(valid, self.targets[positions], -1)
        weights = np.where(valid, self.event_weights[split.event_types[positions]], 0.0)
        newest = split.timestamps[ends - 1]
        exponent = np.where(valid, (split.timestamps[positions] - newest[:, None]) / self.half_life_s, 0.0)
        return (
            torch.from_numpy(items.astype(np.int64)),
            torch.from_numpy(targets.astype(np.int64)),
            torch.from_numpy(weights.astype(np.float32)),
            torch.from_numpy(np.minimum(exponent, 0.0).astype(np.float32)),
        )

    def target_counts(self, n_items: int) -> np.ndarray:
        """How often each item row is a training target (what the sampled softmax's popularity share follows)."""
        return np.bincount(self.targets[self.targets >= 0], minlength=n_items)


def training_windows(
    split: LeaveOneOutSplit, config: TrainConfig, before: Stage = "valid", validating: np.ndarray | None = None
) -> TrainingWindows:
    """Cut every user's train events into windows of ``max_len`` ending at the user's last trainable event.

    Long histories yield several windows (stepping back ``max_len`` events at a time), so every training
    target is used exactly once per epoch. A window's interest vector starts at its first event; what the
    worker's vector would still hold from older events is decayed by ``max_len`` events of time, which is
    little at the serving half-life. Evaluation uses the whole history, exactly as served. ``before="test"`` takes
    the validation items as targets too (a refit), but not those of the users ``validating``.
    """
    length = config.max_len
    targets_all = split.train_targets(before, validating)
    trainable = np.flatnonzero(targets_all >= 0)
    users = split.user_of[trainable]
    is_last = np.append(users[1:] != users[:-1], True) if len(users) else np.zeros(0, dtype=bool)
    ends = trainable[is_last] + 1
    starts = split.offsets[users[is_last]]
    per_user = -(-(ends - starts) // length)  # ceil
    first_window = np.repeat(np.cumsum(per_user) - per_user, per_user)
    window_end = np.repeat(ends, per_user) - length * (np.arange(per_user.sum()) - first_window)
    window_start = np.maximum(np.repeat(starts, per_user), window_end - length)
    with_target = np.concatenate([[0], np.cumsum(targets_all >= 0)])
    keep = with_target[window_end] > with_target[window_start]
    return TrainingWindows(
        split=split,
        targets=targets_all,
        event_weights=type_weights(config).astype(np.float64),
        half_life_s=config.half_life_s,
        ends=window_end[keep].astype(np.int64),
        lengths=(window_end - window_start)[keep].astype(np.int64),
    )


def window_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of windows of similar length ("sortish" sampling).

    Most users are short; grouping them lets a batch be cut to its longest window instead of ``max_len``,
    which makes an epoch several times cheaper on sparse data, while the shuffle keeps batches random.
    """
    order = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches: list[np.ndarray] = []
    for begin in range(0, len(order), pool):
        chunk = order[begin : begin + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


# --- losses ------------------------------------------------------------------------------------------------------


def interest_queries(embeddings: torch.Tensor, weights: torch.Tensor, decay_exponent: torch.Tensor) -> torch.Tensor:
    """The worker's interest vector after every event of each window: ``[B, L, dim]``.

    ``query[b, i] = Σ_{j ≤ i} weights[b, j] · 2^(exponent[b, j] − exponent[b, i]) · embeddings[b, j]`` — the
    incremental update ``v ← v · 2^(−Δt/half_life) + w · E[item]`` unrolled. Padding has weight 0.
    """
    length = weights.shape[1]
    gap = (decay_exponent.unsqueeze(1) - decay_exponent.unsqueeze(2)).clamp(max=0.0)  # [B, i, j]
    causal = torch.ones(length, length, dtype=torch.bool, device=weights.device).tril()
    coefficients = torch.exp2(gap) * weights.unsqueeze(1) * causal
    return coefficients @ embeddings


def _losses(
    model: SequenceRanker,
    log_scale: torch.Tensor,
    windows: TrainingWindows,
    batch: np.ndarray,
    retrieval_weight: float,
    softmax: Softmax,
    retrieval_softmax: Softmax,
    retrieval_share: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ranking, retrieval) losses of one batch; each is a mean over the batch's target positions, the
    retrieval loss over a random ``retrieval_share`` of them (an unbiased estimate of its mean over all)."""
    items, targets, weights, exponent = windows.batch(batch)
    # Flat indexes of the positions with a target: index_select's backward (index_add) is much cheaper on CPU
    # than the index_put that boolean-mask indexing needs.
    positions = (targets.reshape(-1) >= 0).nonzero().squeeze(1)
    wanted = targets.reshape(-1)[positions]
    softmax.start_batch()
    if retrieval_softmax is not softmax:
        retrieval_softmax.start_batch()

    hidden = select_positions(model(items), positions)
    ranking = softmax.loss(hidden, wanted, model, torch.full((len(wanted),), 1.0 / max(1, len(wanted))))
    if retrieval_weight == 0.0:
        return ranking, ranking, torch.zeros(())

    if retrieval_share < 1.0:
        chosen = (torch.rand(len(positions)) < retrieval_share).nonzero().squeeze(1)
        positions, wanted = positions[chosen], wanted[chosen]
    embedded = model.item_embedding(torch.where(items >= 0, items, model.config.n_items))
    queries = select_positions(interest_queries(embedded, weights, exponent), positions)
    norms = queries.norm(dim=-1, keepdim=True)
    usable = (norms.squeeze(-1) > 0).to(queries.dtype)  # all-zero event weights leave no query to learn from
    scaled = log_scale.exp() * (queries / norms.clamp_min(1e-12))
    # A masked mean rather than boolean indexing: no index_put over the [positions, n_items] logits backward.
    retrieval = retrieval_softmax.loss(scaled, wanted, model, usable / usable.sum().clamp_min(1.0))
    return ranking + retrieval_weight * retrieval, ranking, retrieval


def select_positions(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows ``positions`` of ``states`` ``[B, L, dim]`` flattened to ``[B·L, dim]``."""
    return states.reshape(-1, states.shape[-1]).index_select(0, positions)


def _fit(
    model: SequenceRanker,
    windows: TrainingWindows,
    split: LeaveOneOutSplit,
    config: TrainConfig,
    rng: np.random.Generator,
    progress: bool,
    softmax: Softmax,
    eval_users: np.ndarray,
    resume_points: ResumePoints | None = None,
) -> tuple[list[dict[str, float]], int]:
    """Train with early stopping on validation NDCG@10 of the ranker; leaves the best epoch's weights loaded, and
    in ``resume_points`` those of the epochs a refit may resume from."""
    trainer = _Trainer(model, windows, config, softmax, config.sampled_warmup_epochs)
    history: list[dict[str, float]] = []
    stopping = EarlyStopping(model, config.patience, config.time_budget_s)
    epochs = tqdm(range(1, config.max_epochs + 1), desc="epochs", unit="epoch", disable=not progress)
    for epoch in epochs:
        losses = trainer.epoch(epoch, rng, progress)
        # Early stopping picks among full-softmax epochs only: the first of them scored above every warm-up epoch on
        # Beauty, Sports and Yelp, and validating a warm-up epoch costs twice its training on Yelp. The last epoch
        # (by max_epochs or the time budget) is scored anyway, so that training never ends on unscored weights.
        last = epoch == config.max_epochs or stopping.budget_spent()
        scored = last or not trainer.warming_up(epoch)
        with trainer.published_weights():
            record: dict[str, float] = {
                "epoch": epoch,
                **losses,
                "retrieval_temperature": float(trainer.log_scale.detach().exp()),
            }
            if scored:
                model.eval()
                ranks, _ = _evaluate(model, split, "valid", config, with_baselines=False, users=eval_users)
                record |= {
                    "val_ranker_NDCG@10": ndcg(ranks["ranker"], 10),
                    "val_ranker_HR@10": hit_rate(ranks["ranker"], 10),
                    "val_retrieval_NDCG@10": ndcg(ranks["retrieval"], 10),
                    "val_retrieval_HR@10": hit_rate(ranks["retrieval"], 10),
                }
                epochs.set_postfix(loss=f"{record['loss']:.3f}", val_ndcg=f"{record['val_ranker_NDCG@10']:.4f}")
            record["seconds"] = stopping.elapsed()
            history.append(record)
            logger.debug("epoch %d: %s", epoch, record)
            stop = scored and stopping.should_stop(epoch, record["val_ranker_NDCG@10"])
        if resume_points is not None:
            resume_points.after_epoch(epoch, stopping.best_epoch, model)
        if stop:
            break
    stopping.restore_best()
    model.item_embedding.sparse = False
    return history, stopping.best_epoch


class EarlyStopping:
    """Keeps the weights of the epoch with the best validation score, and says when to stop: after ``patience``
    epochs without a better one, or after the epoch that spends ``time_budget_s``."""

    def __init__(self, model: torch.nn.Module, patience: int, time_budget_s: float | None) -> None:
        self.model, self.patience, self.time_budget_s = model, patience, time_budget_s
        self.best_score, self.best_epoch, self.best_state = -1.0, 0, _copy_state(model)
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since training started, rounded for the epoch records."""
        return round(time.perf_counter() - self._started, 2)

    def should_stop(self, epoch: int, score: float) -> bool:
        """Record ``epoch``'s validation ``score``; whether training should end after it."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.best_state = score, epoch, _copy_state(self.model)
        elif epoch - self.best_epoch >= self.patience:
            logger.info("early stop after epoch %d (best %d)", epoch, self.best_epoch)
            return True
        if self.budget_spent():
            logger.info("time budget spent after epoch %d (best %d)", epoch, self.best_epoch)
            return True
        return False

    def budget_spent(self) -> bool:
        """Whether training has run past ``time_budget_s``."""
        return self.time_budget_s is not None and time.perf_counter() - self._started > self.time_budget_s

    def restore_best(self) -> None:
        """Load the best epoch's weights back into the model."""
        self.model.load_state_dict(self.best_state)


class _Trainer:
    """The optimisation state of one model: its optimizers, the interest-vector loss's temperature, and which
    softmax each epoch trains with (the sampled one for the first ``warmup_epochs``, see ``sampled_warmup_epochs``)."""

    def __init__(
        self,
        model: SequenceRanker,
        windows: TrainingWindows,
        config: TrainConfig,
        softmax: Softmax,
        warmup_epochs: int = 0,
    ) -> None:
        self.model, self.windows, self.config, self.softmax = model, windows, config, softmax
        target_counts = windows.target_counts(model.config.n_items)
        self.retrieval_softmax = retrieval_softmax_for(config, softmax, target_counts, config.seed)
        self.warmup_softmax = (
            sampled_softmax_for(config, target_counts, config.seed + 2)
            if warmup_epochs and not isinstance(softmax, SampledSoftmax)
            else None
        )
        if self.warmup_softmax is not None and self.warmup_softmax.covers_catalogue:
            self.warmup_softmax = None  # its negatives would be the whole catalogue: the full softmax, at its cost
        self.warmup_epochs = warmup_epochs if self.warmup_softmax is not None else 0
        # Temperature of the normalised interest-vector logits; starts where the ranker's logits are (≈ sqrt(dim)).
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(math.sqrt(config.dim))))
        sparse_table = softmax.sparse_gradients and model.config.n_items >= config.sparse_table_min_items
        self.optimizers = _optimizers(model, self.log_scale, config, sparse_table=sparse_table)
        self.average = (
            WeightAverage([*model.parameters(), self.log_scale], config.weight_average_epochs)
            if config.weight_average_epochs > 0
            else None
        )

    def epoch(self, epoch: int, rng: np.random.Generator, progress: bool) -> dict[str, float]:
        """One pass over every window; the mean losses of its batches."""
        self.model.train()
        ranking, retrieval = self.softmaxes(epoch)
        totals = np.zeros(3)
        batches = window_batches(self.windows.lengths, self.config.batch_size, rng)
        if self.average is not None:
            # The average spans full-softmax epochs only: a warm-up epoch's weights fit another loss.
            if epoch <= self.warmup_epochs + 1:
                self.average.restart(len(batches))
            else:
                self.average.pace(len(batches))
        for batch in tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress):
            losses = _losses(
                self.model,
                self.log_scale,
                self.windows,
                batch,
                self.config.retrieval_loss_weight,
                ranking,
                retrieval,
                self.config.retrieval_share,
            )
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
            losses[0].backward()
            clip_gradients(list(self.model.parameters()), 5.0)
            for optimizer in self.optimizers:
                optimizer.step()
            if self.average is not None:
                self.average.update()
            totals += [float(loss.detach()) for loss in losses]
        loss, ranking_loss, retrieval_loss = (totals / len(batches)).tolist()
        return {"loss": loss, "ranking_loss": ranking_loss, "retrieval_loss": retrieval_loss}

    def published_weights(self) -> contextlib.AbstractContextManager[None]:
        """The weights training validates and publishes (the moving average, where there is one) in the model for
        the ``with`` block; training goes on from the live ones."""
        return self.average.swapped_in() if self.average is not None else contextlib.nullcontext()

    def publish(self) -> None:
        """Leave the published weights in the model once training is over."""
        if self.average is not None:
            self.average.apply()

    def softmaxes(self, epoch: int) -> tuple[Softmax, Softmax]:
        """The ranker's and the interest vector's loss over the catalogue in ``epoch`` (counted from 1)."""
        if self.warming_up(epoch):
            assert self.warmup_softmax is not None
            return self.warmup_softmax, self.warmup_softmax
        return self.softmax, self.retrieval_softmax

    def warming_up(self, epoch: int) -> bool:
        """Whether ``epoch`` (counted from 1) trains with the sampled warm-up softmax."""
        return self.warmup_softmax is not None and epoch <= self.warmup_epochs


class RefitStart(NamedTuple):
    """A model of the first fit that a refit trains on instead of fresh weights."""

    model: SequenceRanker
    temperature: float  # its interest-vector temperature
    source: str  # what it is, for the manifest
    epochs_trained: int  # counted by the sampled warm-up


def _refit_after_fit(
    model: SequenceRanker,
    split: LeaveOneOutSplit,
    config: TrainConfig,
    best_epoch: int,
    history: list[dict[str, float]],
    resume_points: ResumePoints | None,
    progress: bool,
) -> tuple[SequenceRanker, dict[str, Any]]:
    """The refit ``config`` asks for once early stopping chose ``best_epoch`` (``model`` holds its weights): the
    early-stopped model trained on for ``refit_epochs``, the first fit resumed from epoch ``⌊refit_resume ·
    best⌋`` for the remaining epochs, or a fresh model trained for ``best_epoch`` epochs."""
    n_items = model.config.n_items
    if config.refit_epochs is not None:
        start = RefitStart(
            model, history[best_epoch - 1]["retrieval_temperature"], "the early-stopped model", best_epoch
        )
        return _refit(split, config, n_items, config.refit_epochs, progress, start)
    resumed = resume_epoch(config.refit_resume, best_epoch)
    if resume_points is None or resumed == 0:
        return _refit(split, config, n_items, best_epoch, progress)
    resume_points.load(resumed, model)
    start = RefitStart(
        model, history[resumed - 1]["retrieval_temperature"], f"the first fit's epoch {resumed}", resumed
    )
    return _refit(split, config, n_items, best_epoch - resumed, progress, start)


def _refit(
    split: LeaveOneOutSplit,
    config: TrainConfig,
    n_items: int,
    epochs: int,
    progress: bool,
    start: RefitStart | None = None,
) -> tuple[SequenceRanker, dict[str, Any]]:
    """A model trained for ``epochs`` epochs on every interaction before each user's test item, the validation
    items included: what early stopping chose, learned from the users' latest interactions too.

    Without ``start`` it is a fresh model from the seed's initial weights; with ``start`` that model trained on in
    place, with fresh optimizer state; the sampled warm-up counts the epochs it has trained. Either draws its
    batches from its own seeded generator, so the published model depends on the epochs chosen, not on how many
    the first fit ran past them."""
    started = time.perf_counter()
    rng = np.random.default_rng([config.seed, 1])
    windows = training_windows(split, config, before="test")
    if start is None:
        torch.manual_seed(config.seed)
        model = SequenceRanker(ranker_config(config, n_items))
    else:
        model = start.model
    softmax = softmax_for(config, windows.target_counts(n_items), config.seed)
    trained = 0 if start is None else start.epochs_trained
    trainer = _Trainer(model, windows, config, softmax, max(0, config.sampled_warmup_epochs - trained))
    if start is not None:
        with torch.no_grad():
            trainer.log_scale.fill_(math.log(start.temperature))
    losses: list[dict[str, float]] = []
    for epoch in tqdm(range(1, epochs + 1), desc="refit epochs", unit="epoch", disable=not progress):
        losses.append({"epoch": epoch, **trainer.epoch(epoch, rng, progress)})
    trainer.publish()
    model.eval()
    model.item_embedding.sparse = False
    return model, {
        "epochs": epochs,
        "from": "fresh weights" if start is None else start.source,
        "training_windows": len(windows),
        "seconds": round(time.perf_counter() - started, 2),
        "history": losses,
    }


def _optimizers(
    model: SequenceRanker, log_scale: torch.Tensor, config: TrainConfig, sparse_table: bool
) -> list[torch.optim.Optimizer]:
    """Adam over every parameter; with ``sparse_table`` the item table gets sparse gradients and SparseAdam, so a
    step updates the rows the batch read rather than every row of a large catalogue (no weight decay there)."""
    betas = (0.9, 0.98)
    if not sparse_table:
        parameters = [*model.parameters(), log_scale]
        return [torch.optim.Adam(parameters, lr=config.lr, betas=betas, weight_decay=config.weight_decay)]
    table = model.item_embedding.weight
    model.item_embedding.sparse = True
    dense = [p for p in model.parameters() if p is not table] + [log_scale]
    return [
        torch.optim.Adam(dense, lr=config.lr, betas=betas, weight_decay=config.weight_decay),
        torch.optim.SparseAdam([table], lr=config.lr, betas=betas),
    ]


def clip_gradients(parameters: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` that also reads sparse gradients (the item table's, with the sampled softmax)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not any(g.is_sparse for g in grads):
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return
    norms = [(g.coalesce().values() if g.is_sparse else g).norm() for g in grads]
    total = torch.stack(norms).norm()
    scale = max_norm / (total + 1e-6)
    if scale < 1:
        for g in grads:
            g.mul_(scale)


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


# --- evaluation --------------------------------------------------------------------------------------------------


def first_fit_windows(split: LeaveOneOutSplit, config: TrainConfig) -> TrainingWindows:
    """The windows the early-stopped model trains on: every interaction before the validation item, or with
    ``config.validation_users`` before the test item for every user but those whose validation item is held out."""
    validating = validation_users(split.n_users, config)
    return training_windows(split, config, "valid" if validating is None else "test", validating)


def validation_users(n_users: int, config: TrainConfig) -> np.ndarray | None:
    """The users whose validation item is held out while every other user's is trained on, sorted (a seeded
    share ``config.validation_users``); ``None`` where every user's is held out (the share is 0)."""
    if config.validation_users <= 0:
        return None
    count = max(1, round(config.validation_users * n_users))
    return np.sort(np.random.default_rng([config.seed, 4]).choice(n_users, count, replace=False))


def validation_sample(n_users: int, n_items: int, config: TrainConfig) -> np.ndarray:
    """The users every validation pass of a run ranks (early stopping, the blend): those whose validation item is
    held out, sampled as :func:`evaluation_users` samples."""
    validating = validation_users(n_users, config)
    if validating is None:
        return evaluation_users(n_users, n_items, config)
    return validating[evaluation_users(len(validating), n_items, config)]


def evaluation_users(n_users: int, n_items: int, config: TrainConfig) -> np.ndarray:
    """The users every evaluation pass of a run scores: all of them, or a seeded sample where scoring them all
    against the catalogue would take more than ``config.eval_max_scores`` scores."""
    most = max(1, config.eval_max_scores // max(1, n_items))
    if n_users <= most:
        return np.arange(n_users)
    return np.sort(np.random.default_rng([config.seed, 3]).choice(n_users, most, replace=False))


def _evaluate(
    model: SequenceRanker,
    split: LeaveOneOutSplit,
    stage: Stage,
    config: TrainConfig,
    with_baselines: bool,
    users: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Target ranks of ``users`` under the ranker and the interest-vector retrieval (plus, on request, popularity
    and retrieve→rerank), each user's history excluded; also returns their interest vectors ``[len(users), dim]``.

    The scorers and the rank protocol (ties broken at random, seeded) are the evaluator's (``model/evaluate.py``,
    ``model/metrics.py``), so the manifest's metrics and ``streamrec eval`` measure the same thing."""
    tie_rng = np.random.default_rng([config.seed, 2])
    n_items = model.config.n_items
    targets = split.targets(stage)
    ranker = RankerScorer(model, config.max_len)
    retrieval = RetrievalScorer(model.item_embeddings().detach().numpy(), type_weights(config), config.half_life_s)
    popularity = interaction_counts(split, split.history_end(stage), n_items) if with_baselines else None
    ranks: dict[str, list[np.ndarray]] = {"ranker": [], "retrieval": []}
    if with_baselines:
        ranks |= {"popularity": [], "retrieve_rerank": []}
    queries = np.empty((len(users), retrieval.embeddings.shape[1]), dtype=np.float32)
    # Several [users, n_items] score matrices are alive at once: bound their size on large catalogues.
    step = max(1, min(config.eval_batch_size, EVAL_BATCH_SCORES // n_items))
    for begin in range(0, len(users), step):
        batch = users[begin : begin + step]
        histories = Histories.of_users(split, batch, stage)
        t = targets[batch]
        exclude = histories.item_sets()
        ranker_scores = ranker.score_users(histories)
        queries[begin : begin + step] = retrieval.queries(histories)
        retrieval_scores = queries[begin : begin + step] @ retrieval.embeddings.T
        ranks["ranker"].append(target_ranks(ranker_scores, t, exclude, tie_rng))
        ranks["retrieval"].append(target_ranks(retrieval_scores, t, exclude, tie_rng))
        if popularity is not None:
            popular = np.broadcast_to(popularity, ranker_scores.shape)
            ranks["popularity"].append(target_ranks(popular, t, exclude, tie_rng))
            ranks["retrieve_rerank"].append(
                retrieve_rerank_ranks(retrieval_scores, ranker_scores, t, exclude, config.n_candidates)
            )
    return {name: np.concatenate(parts) for name, parts in ranks.items()}, queries


# --- publishing --------------------------------------------------------------------------------------------------


def _publish(
    out_dir: Path,
    fingerprint: str,
    write: Callable[[Path, str], None],
    manifest: dict[str, Any],
    switch_latest: bool = True,
) -> Path:
    """Write the version directory under a temporary name, rename it into place, then switch ``LATEST``.

    ``write(staging, version)`` fills the directory with every file but the manifest. A reader therefore sees
    either no directory or a complete one, and ``LATEST`` never names a partial one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC)
    version = _unique_version(out_dir, f"{created:%Y%m%dT%H%M%SZ}-{fingerprint[:8]}")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".partial", dir=out_dir))
    try:
        staging.chmod(0o755)
        write(staging, version)
        for path in staging.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; a worker may run as another user
        files = {path.name: sha256_file(path) for path in sorted(staging.iterdir())}
        manifest = {"version": version, "created_at": created.isoformat(), **manifest, "files": files}
        (staging / MANIFEST_FILE).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        final = out_dir / version
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if switch_latest:
        write_latest(out_dir, version)
    logger.info("wrote artifacts %s", final)
    return final


class _PeakMemory:
    """The process's peak resident memory as each phase of training ends, and when (it only grows: the phase whose
    mark jumps is the one that needed the memory)."""

    def __init__(self) -> None:
        self.marks: dict[str, dict[str, float]] = {}
        self._started = time.perf_counter()

    def mark(self, phase: str) -> None:
        import resource

        peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        self.marks[phase] = {"peak_rss_mib": peak, "at_s": round(time.perf_counter() - self._started, 1)}
        logger.info("training phase %s done: peak resident memory %.0f MiB", phase, peak)


def _unique_version(out_dir: Path, version: str) -> str:
    """``version``, or ``version-2``, ``-3``... when two runs on the same data share a second."""
    candidate, n = version, 1
    while (out_dir / candidate).exists():
        n += 1
        candidate = f"{version}-{n}"
    return candidate


def _plot_curve(history: Sequence[Mapping[str, float]], path: Path) -> None:
    """Training loss and validation NDCG@10 per epoch, drawn without pyplot (no global backend state)."""
    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(9, 3.6), tight_layout=True)
    FigureCanvasAgg(figure)
    loss_axes, metric_axes = figure.subplots(1, 2)
    for key, label in (("loss", "total"), ("ranking_loss", "ranker"), ("retrieval_loss", "interest vector")):
        loss_axes.plot(epochs, [h[key] for h in history], marker=".", label=label)
    loss_axes.set(title="training loss (softmax CE)", xlabel="epoch")
    loss_axes.legend()
    scored = [h for h in history if "val_ranker_NDCG@10" in h]  # a sampled warm-up's epochs are not
    for key, label in (("val_ranker_NDCG@10", "ranker"), ("val_retrieval_NDCG@10", "interest vector")):
        metric_axes.plot([h["epoch"] for h in scored], [h[key] for h in scored], marker=".", label=label)
    best = max(scored, key=lambda h: h["val_ranker_NDCG@10"])
    metric_axes.axvline(best["epoch"], color="grey", linestyle=":", label=f"best epoch {best['epoch']}")
    metric_axes.set(title="validation NDCG@10 (full ranking)", xlabel="epoch")
    metric_axes.legend()
    figure.savefig(path, dpi=100)
