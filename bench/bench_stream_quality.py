#!/usr/bin/env python
"""Quality (and cost) of the stream-path knobs, measured by replaying events through the real ``Pipeline``.

Usage::

    python bench/bench_stream_quality.py [--dataset shop|taobao] [--quick] [--jobs 2] [--output results.json]

A model is trained on the events of the first 70 % of the data's time span. Every replay builds a fresh
``Pipeline`` with one knob changed, applies the catalog, feeds the training part in consecutive batches of 500
(a worker catching up; its users, trending and co-visitation become those of a long-running worker) and then the
last 30 % in batches that hold at most one event per user, so that every event gets its own recommendation. Each
recommendation is scored against the user's next event: HR@10, HR@20, NDCG@10 and intra-list diversity, for all
events and for the users first seen in the replayed part (cold start), beside the shop's trending list at the
same moment. ``Pipeline.process`` is timed in both phases. No broker is involved.

See ``bench/README.md``. Every figure printed is measured in this run; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import bisect
import concurrent.futures
import hashlib
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# The text model's weight-loading progress bar would interleave with the tables (replay processes load it too).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]

RESULTS = REPO / "bench" / "results"
CACHE = RESULTS / "cache"
TAOBAO_PATH = REPO.parent / "shared" / "data" / "taobao" / "UserBehavior_slice.csv"

TRAIN_SHARE = 0.7  # of the time span: what the model is trained on and the pipeline warmed up with
EVAL_BATCH = 200  # most events per batch in the evaluated replay (a new batch also starts at a repeated user)
CATCH_UP_BATCH = 500  # events per batch in the warm-up (Settings.batch_max_events, a worker under backlog)
K = 10
COLD_START_EVENTS = (1, 3, 5)
DIVERSITY_WEIGHTS = (0.0, 0.1, 0.3, 0.5)
CATEGORY_CAPS = (0, 2)
EXPLORATION_SHARES = (0.0, 0.05, 0.1)
COLD_START_PRIORS = (0.0, 0.5, 1.0, 2.0)
SEED = 7


# --- configuration -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """Which events to replay; everything derived from it (split, model cache key) is deterministic."""

    dataset: str  # "shop" or "taobao"
    users: int = 0
    items: int = 0
    events: int = 0
    seed: int = SEED
    train_share: float = TRAIN_SHARE
    taobao_path: str = str(TAOBAO_PATH)
    max_events: int = 0  # taobao: keep only the first N events by time (0: all)

    def key(self) -> str:
        if self.dataset == "shop":
            return f"shop-u{self.users}-i{self.items}-e{self.events}-s{self.seed}-t{self.train_share}"
        return f"taobao-{Path(self.taobao_path).stem}-n{self.max_events}-t{self.train_share}"


SHOP_DEFAULT = DataSpec("shop", users=3_000, items=1_000, events=45_000)
SHOP_QUICK = DataSpec("shop", users=200, items=150, events=4_000)


def train_config_kwargs(spec: DataSpec, quick: bool) -> dict[str, Any]:
    """A small model: the bench measures the stream path's knobs, not how good a model can get.

    Event weights and the half-life are the serving settings' so that the trained interest vectors match what
    the pipeline builds. On Taobao most items have one event, and the full softmax holds ``batch · max_len ·
    n_items`` logits: items seen once are left out of the vocabulary (they are still served by trending).
    """
    from streamrec.stream.settings import Settings

    settings = Settings()
    kwargs: dict[str, Any] = {
        "dim": 32,
        "max_len": 20,
        "layers": 1,
        "heads": 2,
        "max_epochs": 3 if quick else 20,
        "patience": 3,
        "seed": spec.seed,
        "event_weights": dict(settings.event_weights),
        "half_life_s": settings.interest_half_life_s,
        "ef_search": settings.hnsw_ef_search,
        "n_candidates": settings.n_candidates,
        "time_budget_s": 30.0 if quick else 180.0,
    }
    if quick:
        kwargs["content_encoder"] = "hashed"  # loading MiniLM costs seconds in training and in every replay
    if spec.dataset == "taobao":
        # Titles are empty: a new item's text is its category id, which a sentence model cannot read better
        # than feature hashing does.
        kwargs.update(min_item_count=2, batch_size=128, content_encoder="hashed")
    return kwargs


@dataclass(frozen=True)
class Variant:
    """One replay: the knob under test and its value, on top of :func:`base_overrides`."""

    knob: str
    value: float
    popularity: bool = False  # also score the shop's trending list (measured once, in the base replay)

    @property
    def name(self) -> str:
        return "base" if self.knob == "base" else f"{self.knob}={self.value:g}"

    def overrides(self) -> dict[str, Any]:
        return {} if self.knob == "base" else {self.knob: self.value}


def base_overrides() -> dict[str, Any]:
    """The defaults, with exploration off so that the other knobs are measured without its random slots."""
    return {"exploration_share": 0.0, "random_seed": SEED}


def variants() -> list[Variant]:
    """One replay per knob value; a value equal to the base's is the base replay itself (not run twice)."""
    from streamrec.stream.settings import Settings

    base = Settings(**base_overrides())
    out = [Variant("base", 0.0, popularity=True)]
    grid = {
        "diversity_weight": DIVERSITY_WEIGHTS,
        "max_per_category": CATEGORY_CAPS,
        "exploration_share": EXPLORATION_SHARES,
        "cold_start_prior_events": COLD_START_PRIORS,
    }
    for knob, values in grid.items():
        for value in values:
            if value != getattr(base, knob):
                out.append(Variant(knob, int(value) if knob == "max_per_category" else value))
    return out


# --- data ------------------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Time-ordered events, catalog records and the split, with each event's place in its user's stream."""

    events: list  # streamrec.model.events.Event, sorted by time
    catalog: list[dict[str, Any]]
    cut: int  # index of the first replayed event
    cut_ts: float
    ordinal: np.ndarray  # int64 [N]: the event is its user's n-th (1-based, training part included)
    next_index: np.ndarray  # int64 [N]: index of the user's next event, -1 if none
    new_user: np.ndarray  # bool [N]: the user's first event is in the replayed part

    def summary(self) -> dict[str, Any]:
        replay_users = {e.user_id for e in self.events[self.cut :]}
        users = {e.user_id for e in self.events}
        return {
            "events": len(self.events),
            "users": len(users),
            "items": len({e.item_id for e in self.events}),
            "catalog_items": len(self.catalog),
            "train_events": self.cut,
            "replay_events": len(self.events) - self.cut,
            "replay_users": len(replay_users),
            "new_users": len({e.user_id for e, new in zip(self.events, self.new_user, strict=True) if new}),
            "first_ts": self.events[0].ts,
            "cut_ts": self.cut_ts,
            "last_ts": self.events[-1].ts,
        }


def load_dataset(spec: DataSpec) -> Dataset:
    """The events and catalog of ``spec``, split at ``train_share`` of the time span (not of the events)."""
    if spec.dataset == "shop":
        from streamrec.stream.app.simulate import simulate_shop

        events, catalog = simulate_shop(spec.users, spec.items, spec.events, seed=spec.seed)
    elif spec.dataset == "taobao":
        events, catalog = _load_taobao(Path(spec.taobao_path), spec.max_events)
    else:
        raise ValueError(f"unknown dataset {spec.dataset!r}")
    stamps = [e.ts for e in events]
    cut_ts = stamps[0] + spec.train_share * (stamps[-1] - stamps[0])
    cut = bisect.bisect_left(stamps, cut_ts)
    n = len(events)
    ordinal = np.zeros(n, dtype=np.int64)
    next_index = np.full(n, -1, dtype=np.int64)
    new_user = np.zeros(n, dtype=bool)
    seen: dict[str, int] = {}
    first_at: dict[str, int] = {}
    for i, event in enumerate(events):
        previous = seen.get(event.user_id)
        if previous is not None:
            next_index[previous] = i
            ordinal[i] = ordinal[previous] + 1
        else:
            ordinal[i] = 1
            first_at[event.user_id] = i
        seen[event.user_id] = i
        new_user[i] = first_at[event.user_id] >= cut
    return Dataset(events, catalog, cut, cut_ts, ordinal, next_index, new_user)


def _load_taobao(path: Path, max_events: int) -> tuple[list, list[dict[str, Any]]]:
    """Taobao UserBehavior rows (pv/fav/cart/buy → view/click/cart/buy) and a catalog of their category ids.

    The log has no titles, so the catalog records carry the category only; the content projection then
    embeds new items from their category id alone.
    """
    from streamrec.model.datasets import load_taobao, load_taobao_categories

    if not path.is_file():
        raise SystemExit(f"{path} not found: --dataset taobao needs ../shared/data beside the repository")
    events = list(load_taobao(path).events())
    if max_events:
        events = events[:max_events]
    for number, event in enumerate(events):
        event.event_id = f"t{number}"
    categories = load_taobao_categories(path)
    first_ts = events[0].ts
    items = sorted({e.item_id for e in events})
    catalog = [
        {
            "item_id": item,
            "title": "",
            "category": categories.get(item),
            "price": None,
            "available": True,
            "ts": first_ts,
            "attributes": [],
        }
        for item in items
    ]
    return events, catalog


# --- model (one-off, cached) -----------------------------------------------------------------------------------


def prepare_model(spec: DataSpec, dataset: Dataset, quick: bool, retrain: bool) -> tuple[Path, dict[str, Any]]:
    """Train on the events before the cut, with the catalog (so a content projection is fitted); cached."""
    from streamrec.model.config import TrainConfig
    from streamrec.model.event_log import EventLog
    from streamrec.model.train import train_artifacts

    kwargs = train_config_kwargs(spec, quick)
    # The trainer's code is part of the key: a model cached before model/ or index/ changed would be measured as
    # if the current code had produced it.
    hasher = hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode())
    for path in sorted([*REPO.glob("model/*.py"), *REPO.glob("index/*.py")]):
        hasher.update(path.read_bytes())
    digest = hasher.hexdigest()[:10]
    directory = CACHE / f"quality-{spec.key()}-{digest}"
    artifacts, info_path = directory / "artifacts", directory / "train_info.json"
    if info_path.exists() and (artifacts / "LATEST").exists() and not retrain:
        info = json.loads(info_path.read_text())
        print(f"using the cached model in {artifacts} (trained in {info['train_s']:.0f} s; --retrain to redo)")
        return artifacts, {**info, "cached": True}
    log = EventLog.from_events(dataset.events[: dataset.cut], name=f"bench-quality-{spec.dataset}")
    print(f"training on {len(log):,} events (first {spec.train_share:.0%} of the time span) ...", flush=True)
    started = time.perf_counter()
    version = train_artifacts(log, artifacts, TrainConfig(**kwargs), progress=False, catalog=dataset.catalog)
    train_s = time.perf_counter() - started
    manifest = json.loads((version / "manifest.json").read_text())
    info = {
        "train_s": round(train_s, 1),
        "config": kwargs,
        "version": manifest.get("version"),
        "n_items": manifest.get("n_items"),
        "epochs": manifest.get("training", {}).get("epochs"),
        "best_epoch": manifest.get("training", {}).get("best_epoch"),
        "fit_s": manifest.get("training", {}).get("seconds"),
        "blend_weight": manifest.get("blend_weight"),
        "content_projection": manifest.get("content") is not None,
    }
    info_path.write_text(json.dumps(info, indent=2))  # written last: its presence means the cache is complete
    print(f"trained in {train_s:.0f} s ({info['epochs']} epochs, {info['n_items']} items)")
    return artifacts, {**info, "cached": False}


# --- one replay (runs in a worker process) ---------------------------------------------------------------------


class _Worker:
    """What a replay process loads once and reuses across the replays it runs."""

    dataset: Dataset
    artifacts_dir: Path
    records: list  # streamrec.stream.events.SourceRecord, one per event


_WORKER = _Worker()


def init_worker(spec: DataSpec, artifacts_dir: str) -> None:
    """Single-threaded, like a worker process (``torch_threads`` = 1); FAISS too, so replays can run side by side."""
    import faiss
    import torch

    from streamrec.stream.events import SourceRecord

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    dataset = load_dataset(spec)
    _WORKER.dataset = dataset
    _WORKER.artifacts_dir = Path(artifacts_dir)
    _WORKER.records = [
        # received_at only feeds the latency metrics, which the bench does not use
        SourceRecord(orjson.dumps(e.to_json_dict()), e.user_id.encode(), 0, i, e.ts)
        for i, e in enumerate(dataset.events)
    ]


def eval_batches(events: list, start: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of consecutive events, cut before a user's second event or at :data:`EVAL_BATCH`.

    The pipeline answers only a user's latest event of a batch; with one event per user per batch every event is
    answered, and the events stay in time order.
    """
    out: list[tuple[int, int]] = []
    begin, users = start, set()
    for i in range(start, len(events)):
        user = events[i].user_id
        if user in users or i - begin >= EVAL_BATCH:
            out.append((begin, i))
            begin, users = i, set()
        users.add(user)
    if begin < len(events):
        out.append((begin, len(events)))
    return out


def run_variant(variant: Variant) -> dict[str, Any]:
    """Replay the whole stream through a fresh pipeline with ``variant``'s settings; score every replayed event."""
    from streamrec.model.artifacts import load_artifacts
    from streamrec.model.metrics import intra_list_distances
    from streamrec.stream.catalog import parse_catalog_item
    from streamrec.stream.pipeline import Pipeline
    from streamrec.stream.settings import Settings

    dataset, records = _WORKER.dataset, _WORKER.records
    events = dataset.events
    settings = Settings(**{**base_overrides(), **variant.overrides()})
    artifacts = load_artifacts(_WORKER.artifacts_dir)
    started = time.perf_counter()
    pipeline = Pipeline(settings, artifacts)
    rules, max_bytes = pipeline.intake.rules, settings.max_payload_bytes
    items = [parse_catalog_item(orjson.dumps(r), r["item_id"].encode(), rules, max_bytes) for r in dataset.catalog]
    catalog_changes = pipeline.apply_catalog(items, pipeline.text_vectors(items))
    setup_s = time.perf_counter() - started

    # Unit-norm rows of the model's item table, for intra-list diversity (items without a row are skipped).
    table = artifacts.item_embeddings / np.maximum(
        np.linalg.norm(artifacts.item_embeddings, axis=1, keepdims=True), 1e-12
    )
    row_of = artifacts.row_of

    # Warm-up: the training part, consecutive batches as a worker under backlog reads them. Not scored.
    catch_up = _Timing()
    for begin in range(0, dataset.cut, CATCH_UP_BATCH):
        end = min(begin + CATCH_UP_BATCH, dataset.cut)
        catch_up.run(pipeline, records[begin:end], events[end - 1].ts)

    n_replay = len(events) - dataset.cut
    hit10 = np.zeros(n_replay, dtype=np.int8)
    hit20 = np.zeros(n_replay, dtype=np.int8)
    ndcg10 = np.zeros(n_replay, dtype=np.float32)
    ild = np.full(n_replay, np.nan, dtype=np.float32)
    pop_hit10 = np.zeros(n_replay, dtype=np.int8)
    pop_hit20 = np.zeros(n_replay, dtype=np.int8)
    pop_ndcg10 = np.zeros(n_replay, dtype=np.float32)
    answered = np.zeros(n_replay, dtype=bool)
    list_length = np.zeros(n_replay, dtype=np.int16)
    explored = np.zeros(n_replay, dtype=np.int16)
    sources: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    unscored_items = 0
    mismatched = 0
    evaluated = _Timing()
    for begin, end in eval_batches(events, dataset.cut):
        result = evaluated.run(pipeline, records[begin:end], events[end - 1].ts)
        position = {events[i].user_id: i for i in range(begin, end)}
        popular = [item for item, _ in pipeline.trending.top(2 * K + 1)] if variant.popularity else []
        for message in result.recommendations:
            rec = orjson.loads(message.value)
            i = position.get(rec["user_id"])
            if i is None or rec["trigger"]["item_id"] != events[i].item_id:
                mismatched += 1
                continue
            slot = i - dataset.cut
            answered[slot] = True
            shown = [item["item_id"] for item in rec["items"]]
            list_length[slot] = len(shown)
            explored[slot] = sum(bool(item.get("explore")) for item in rec["items"])
            sources.update(item.get("source", "") for item in rec["items"])
            reasons.update(item.get("reason_code", "") for item in rec["items"])
            rows = [row_of[item] for item in shown[:K] if item in row_of]
            unscored_items += min(K, len(shown)) - len(rows)
            if len(rows) >= 2:
                ild[slot] = intra_list_distances(np.array([rows]), table)[0]
            target_index = int(dataset.next_index[i])
            if target_index < 0:
                continue
            target = events[target_index].item_id
            hit10[slot], hit20[slot], ndcg10[slot] = _score(shown, target)
            if variant.popularity:
                trigger = events[i].item_id
                pop_hit10[slot], pop_hit20[slot], pop_ndcg10[slot] = _score(
                    [item for item in popular if item != trigger][: 2 * K], target
                )

    replay = slice(dataset.cut, None)
    has_next = dataset.next_index[replay] >= 0
    repeat = np.zeros(n_replay, dtype=bool)
    targets = dataset.next_index[replay]
    for slot in np.flatnonzero(has_next):
        repeat[slot] = events[int(targets[slot])].item_id == events[dataset.cut + slot].item_id
    scored = answered & has_next & ~repeat
    out: dict[str, Any] = {
        "name": variant.name,
        "knob": variant.knob,
        "value": variant.value,
        "settings": {**base_overrides(), **variant.overrides()},
        "setup_s": round(setup_s, 2),
        "catalog_changes": catalog_changes,
        "catch_up": catch_up.summary(),
        "evaluated_replay": evaluated.summary(),
        "replay_events": n_replay,
        "answered": int(answered.sum()),
        "not_answered": int((~answered).sum()),
        "mismatched_outputs": mismatched,
        "no_next_event": int((answered & ~has_next).sum()),
        "skipped_repeat_of_trigger": int((answered & has_next & repeat).sum()),
        "scored": int(scored.sum()),
        "mean_list_length": round(float(list_length[answered].mean()), 2) if answered.any() else None,
        "explored_item_share": round(float(explored[answered].sum() / max(1, list_length[answered].sum())), 4),
        "ild_items_without_row": unscored_items,
        "item_sources": dict(sources.most_common()),
        "reason_codes": dict(reasons.most_common()),
        # per replayed event, for the tables (the parent aggregates them)
        "arrays": {
            "scored": scored,
            "hit10": hit10,
            "hit20": hit20,
            "ndcg10": ndcg10,
            "ild": ild,
            **(
                {"pop_hit10": pop_hit10, "pop_hit20": pop_hit20, "pop_ndcg10": pop_ndcg10} if variant.popularity else {}
            ),
        },
    }
    return out


def _score(shown: list[str], target: str) -> tuple[int, int, float]:
    """hit@10, hit@20 and NDCG@10 of one list against the one next item."""
    try:
        rank = shown.index(target)
    except ValueError:
        return 0, 0, 0.0
    return int(rank < K), int(rank < 2 * K), (1.0 / math.log2(rank + 2)) if rank < K else 0.0


@dataclass
class _Timing:
    """Time spent in ``Pipeline.process`` alone (the bench's own scoring is outside it), and its stages.

    Both wall time and the process's CPU time are kept: on a shared machine other processes stretch the wall
    time of a single-threaded replay but not its CPU time, so events per CPU-second compare replays more fairly.
    """

    events: int = 0
    batches: int = 0
    outputs: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    stages: Counter = field(default_factory=Counter)

    def run(self, pipeline: Any, records: list, now: float) -> Any:
        cpu, wall = time.process_time(), time.perf_counter()
        result = pipeline.process(records, now=now)
        self.seconds += time.perf_counter() - wall
        self.cpu_seconds += time.process_time() - cpu
        self.events += len(records)
        self.batches += 1
        self.outputs += len(result.recommendations)
        self.dead_letters += len(result.dead_letters)
        self.stages.update(result.stage_seconds)
        return result

    def summary(self) -> dict[str, Any]:
        def rate(seconds: float) -> float | None:
            return round(self.events / seconds, 1) if seconds > 0 else None

        return {
            "events": self.events,
            "batches": self.batches,
            "recommendations": self.outputs,
            "dead_letters": self.dead_letters,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "events_per_s": rate(self.seconds),
            "events_per_cpu_s": rate(self.cpu_seconds),
            "mean_batch_events": round(self.events / self.batches, 2) if self.batches else None,
            "ms_per_batch": round(1000 * self.seconds / self.batches, 3) if self.batches else None,
            "stage_ms_per_batch": {
                stage: round(1000 * s / self.batches, 3) for stage, s in sorted(self.stages.items())
            },
        }


def code_state() -> dict[str, Any]:
    """The commit and a digest of the serving code as it was on disk: the tree is edited while benches run, so a
    result must say which code produced it."""
    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("stream/**/*.py"), *REPO.glob("model/*.py"), *REPO.glob("index/*.py")]):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    state: dict[str, Any] = {"code_sha256": digest.hexdigest()[:16]}
    try:
        git = ["git", "-C", str(REPO)]
        state["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", "stream", "model", "index"], capture_output=True, text=True
        ).stdout
        state["uncommitted"] = [line[3:] for line in status.splitlines()]
    except OSError:
        pass
    return state


# --- aggregation and report ------------------------------------------------------------------------------------


def mean_ci(values: np.ndarray) -> tuple[float | None, float | None]:
    """Mean and 95 % normal-approximation half-width."""
    if len(values) == 0:
        return None, None
    values = values.astype(np.float64)
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else None
    return float(values.mean()), half


def aggregate(result: dict[str, Any], base: dict[str, Any] | None, dataset: Dataset) -> dict[str, Any]:
    """Headline metrics of one replay, overall and by user group, and the paired difference to the base replay."""
    arrays = result["arrays"]
    scored = arrays["scored"]
    new = dataset.new_user[dataset.cut :]
    metrics: dict[str, Any] = {}
    for group, mask in (("all", scored), ("training_users", scored & ~new), ("new_users", scored & new)):
        hr10, hr10_ci = mean_ci(arrays["hit10"][mask])
        metrics[group] = {
            "n": int(mask.sum()),
            "HR@10": hr10,
            "HR@10_ci95": hr10_ci,
            "HR@20": mean_ci(arrays["hit20"][mask])[0],
            "NDCG@10": mean_ci(arrays["ndcg10"][mask])[0],
        }
    if "pop_hit10" in arrays:  # the shop's trending list at the same moments, on the same events
        hr10, hr10_ci = mean_ci(arrays["pop_hit10"][scored])
        metrics["popularity"] = {
            "n": int(scored.sum()),
            "HR@10": hr10,
            "HR@10_ci95": hr10_ci,
            "HR@20": mean_ci(arrays["pop_hit20"][scored])[0],
            "NDCG@10": mean_ci(arrays["pop_ndcg10"][scored])[0],
        }
    ild = arrays["ild"][~np.isnan(arrays["ild"])]
    metrics["ild@10"] = float(ild.mean()) if len(ild) else None
    metrics["ild_lists"] = len(ild)
    if base is not None and base is not result:
        both = scored & base["arrays"]["scored"]
        for name in ("hit10", "ndcg10"):
            delta, half = mean_ci(arrays[name][both].astype(np.float64) - base["arrays"][name][both])
            metrics[f"delta_{name}_vs_base"] = {"mean": delta, "ci95": half, "n": int(both.sum())}
    return metrics


def cold_start(results: dict[str, dict[str, Any]], dataset: Dataset) -> dict[str, Any]:
    """HR of new users after their n-th event: trending, the base replay and the other cold-start-relevant ones."""
    replay = slice(dataset.cut, None)
    new, ordinal = dataset.new_user[replay], dataset.ordinal[replay]
    base = results["base"]
    columns: dict[str, tuple[dict[str, Any], str]] = {"popularity": (base, "pop_")}
    for name in ("base", *_cold_start_variants(results), "exploration_share=0.05"):
        if name in results:
            columns[name] = (results[name], "")
    rows: dict[str, Any] = {}
    selections = [(str(n), ordinal == n) for n in (*COLD_START_EVENTS, *range(1, 11))]
    selections.append(("all", np.ones_like(new)))
    for label, selected in selections:
        if label in rows:
            continue
        row: dict[str, Any] = {}
        for column, (result, prefix) in columns.items():
            arrays = result["arrays"]
            mask = arrays["scored"] & new & selected
            hr10, ci = mean_ci(arrays[f"{prefix}hit10"][mask])
            row[column] = {
                "users": int(mask.sum()),
                "HR@10": hr10,
                "HR@10_ci95": ci,
                "HR@20": mean_ci(arrays[f"{prefix}hit20"][mask])[0],
                "NDCG@10": mean_ci(arrays[f"{prefix}ndcg10"][mask])[0],
            }
        rows[label] = row
    return rows


def _cold_start_variants(results: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(name for name in results if name.startswith("cold_start_prior_events="))


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(
    spec: DataSpec, data: dict[str, Any], train: dict[str, Any], results: dict[str, dict[str, Any]], report: dict
) -> None:
    base_name = "defaults (exploration 0)"
    print(
        f"\n## {spec.dataset}: {data['events']:,} events, {data['users']:,} users, {data['items']:,} items; "
        f"trained on {data['train_events']:,} events ({train['train_s']:.0f} s"
        f"{', cached' if train.get('cached') else ''}), replayed {data['replay_events']:,} "
        f"({data['new_users']:,} new users)"
    )
    base = results["base"]
    print(
        f"\nscored recommendations: {base['scored']:,} of {base['answered']:,} answered; skipped: "
        f"{base['skipped_repeat_of_trigger']:,} whose next event was on the trigger item (never re-shown), "
        f"{base['no_next_event']:,} without a next event"
    )

    cold = report["cold_start"]
    names = [("popularity", "popularity (trending now)"), ("base", base_name)]
    names += [(n, n) for n in (*_cold_start_variants(results), "exploration_share=0.05") if n in results]
    print("\n### a. Cold start: users first seen in the replayed part, scored after their n-th event\n")
    header = "| after event | lists scored | " + " | ".join(f"{label} HR@10 | HR@20" for _, label in names) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(names)))
    for label in (*map(str, COLD_START_EVENTS), "all"):
        row = cold[label]
        users = row["popularity"]["users"]
        cells = " | ".join(f"{fmt(row[n]['HR@10'])} | {fmt(row[n]['HR@20'])}" for n, _ in names)
        print(f"| {'every event' if label == 'all' else '#' + label} | {users:,} | {cells} |")
    print(
        "(a user counts once in a #n row; 95 % CI of an HR@10 cell about ±"
        + fmt(cold[str(COLD_START_EVENTS[0])]["base"]["HR@10_ci95"], 3)
        + " at #1)"
    )

    print("\n### b. All replayed recommendations, one knob changed from the base (defaults, exploration 0)\n")
    print("| replay | HR@10 | HR@20 | NDCG@10 | ΔHR@10 vs base (95 % CI) | ILD@10 | explored items | items per list |")
    print("|---|---|---|---|---|---|---|---|")
    pop = report["replays"]["base"]["metrics"].get("popularity")
    if pop:
        print(
            f"| popularity (trending now) | {fmt(pop['HR@10'])} | {fmt(pop['HR@20'])} | {fmt(pop['NDCG@10'])} | "
            "- | - | - | - |"
        )
    for name, result in results.items():
        m = report["replays"][name]["metrics"]
        delta = m.get("delta_hit10_vs_base")
        delta_s = f"{delta['mean']:+.4f} ± {delta['ci95']:.4f}" if delta and delta["ci95"] is not None else "-"
        print(
            f"| {base_name if name == 'base' else name} | {fmt(m['all']['HR@10'])} | {fmt(m['all']['HR@20'])} | "
            f"{fmt(m['all']['NDCG@10'])} | {delta_s} | {fmt(m['ild@10'])} | {result['explored_item_share']:.1%} | "
            f"{result['mean_list_length']} |"
        )
    print(
        f"(all replayed events whose next event is on another item: n = {base['scored']:,}; the same events in "
        "every row, so Δ is a paired difference)"
    )

    print("\n### c. Cost: Pipeline.process, single-threaded, events per CPU-second (wall-clock in brackets)\n")
    print(
        "| replay | scored replay events/s | ms/batch | filter ms/batch | catch-up events/s | ms/batch | "
        "filter ms/batch |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, result in results.items():
        ev, cu = result["evaluated_replay"], result["catch_up"]
        print(
            f"| {base_name if name == 'base' else name} | {ev['events_per_cpu_s']:,.0f} ({ev['events_per_s']:,.0f}) | "
            f"{ev['ms_per_batch']:.2f} | {ev['stage_ms_per_batch'].get('filter', 0):.2f} | "
            f"{cu['events_per_cpu_s']:,.0f} ({cu['events_per_s']:,.0f}) | {cu['ms_per_batch']:.1f} | "
            f"{cu['stage_ms_per_batch'].get('filter', 0):.1f} |"
        )
    ev, cu = base["evaluated_replay"], base["catch_up"]
    jobs = report["parameters"]["jobs"]
    print(
        f"\nscored replay: {ev['mean_batch_events']} events per batch on average (at most one per user, so every "
        f"event is answered); catch-up: the warm-up, {CATCH_UP_BATCH} consecutive events per batch "
        f"({cu['recommendations'] / max(1, cu['batches']):.0f} users per batch). ms/batch are wall-clock; "
        + (f"{jobs} replays ran side by side." if jobs > 1 else "one replay ran at a time.")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("shop", "taobao"), default="shop", help="events to replay")
    parser.add_argument("--quick", action="store_true", help="a much smaller shop and model: a smoke check")
    parser.add_argument("--users", type=int, help="shop users (default 3,000; quick 200)")
    parser.add_argument("--items", type=int, help="shop items (default 1,000; quick 150)")
    parser.add_argument("--events", type=int, help="shop events (default 45,000; quick 4,000)")
    parser.add_argument("--max-events", type=int, default=0, help="taobao: first N events only (0: all)")
    parser.add_argument("--seed", type=int, default=SEED, help="shop simulation and training seed")
    parser.add_argument("--jobs", type=int, default=2, help="replays run side by side (one process each)")
    parser.add_argument("--retrain", action="store_true", help="ignore the cached model")
    parser.add_argument(
        "--knobs",
        help="comma-separated knobs to vary (default: all of diversity_weight, max_per_category, "
        "exploration_share, cold_start_prior_events); the base replay always runs",
    )
    parser.add_argument("--output", type=Path, help="JSON results file (default in bench/results/)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    if args.dataset == "shop":
        defaults = SHOP_QUICK if args.quick else SHOP_DEFAULT
        spec = DataSpec(
            "shop",
            users=args.users or defaults.users,
            items=args.items or defaults.items,
            events=args.events or defaults.events,
            seed=args.seed,
        )
    else:
        spec = DataSpec("taobao", max_events=args.max_events or (20_000 if args.quick else 0), seed=args.seed)
    dataset = load_dataset(spec)
    data = dataset.summary()
    print(
        f"{spec.dataset}: {data['events']:,} events, {data['users']:,} users; cut at {TRAIN_SHARE:.0%} of the "
        f"time span: {data['train_events']:,} train, {data['replay_events']:,} replayed, {data['new_users']:,} "
        "new users"
    )
    artifacts, train = prepare_model(spec, dataset, args.quick, args.retrain)

    from streamrec.stream.settings import Settings

    code = code_state()
    todo = [v for v in variants() if not args.knobs or v.knob == "base" or v.knob in args.knobs.split(",")]
    jobs = max(1, min(args.jobs, len(todo)))
    print(f"{len(todo)} replays, {jobs} at a time: {', '.join(v.name for v in todo)}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    replay_started = time.monotonic()
    if jobs == 1:
        init_worker(spec, str(artifacts))
        for variant in todo:
            try:
                results[variant.name] = _report_done(run_variant(variant), replay_started)
            except Exception as exc:  # report the other replays even if one fails
                failures[variant.name] = _report_failure(variant, exc)
    else:
        # The category cap re-diversifies a widened pool and was measured the slowest: start it first so that the
        # other replays fill the second process meanwhile.
        pending = sorted(todo, key=lambda v: v.knob != "max_per_category")
        for attempt in range(2):  # a process killed from outside breaks the whole pool: retry its replays once
            broken: list[Variant] = []
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(
                jobs, mp_context=context, initializer=init_worker, initargs=(spec, str(artifacts))
            ) as pool:
                futures = {pool.submit(run_variant, variant): variant for variant in pending}
                for future in concurrent.futures.as_completed(futures):
                    variant = futures[future]
                    try:
                        result = future.result()
                    except concurrent.futures.process.BrokenProcessPool as exc:
                        if attempt == 0:
                            broken.append(variant)
                        else:
                            failures[variant.name] = _report_failure(variant, exc)
                        continue
                    except Exception as exc:  # a crash in one replay keeps the others
                        failures[variant.name] = _report_failure(variant, exc)
                        continue
                    results[result["name"]] = _report_done(result, replay_started)
            if not broken:
                break
            print(f"  a replay process died; running {', '.join(v.name for v in broken)} again", flush=True)
            pending = broken
    results = {v.name: results[v.name] for v in todo if v.name in results}

    base = results.get("base")
    replays = {}
    for name, result in results.items():
        summary = {k: v for k, v in result.items() if k != "arrays"}
        summary["metrics"] = aggregate(result, base, dataset)
        replays[name] = summary
    report: dict[str, Any] = {
        "when": time.strftime("%Y%m%d-%H%M%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "code": code,
        "parameters": {
            "data": asdict(spec),
            "quick": args.quick,
            "jobs": jobs,
            "train_share_of_time": TRAIN_SHARE,
            "eval_batch_max_events": EVAL_BATCH,
            "catch_up_batch_events": CATCH_UP_BATCH,
            "k": K,
            "base_overrides": base_overrides(),
            "base_settings": Settings(**base_overrides()).model_dump(mode="json"),
            "grid": {
                "diversity_weight": DIVERSITY_WEIGHTS,
                "max_per_category": CATEGORY_CAPS,
                "exploration_share": EXPLORATION_SHARES,
                "cold_start_prior_events": COLD_START_PRIORS,
            },
        },
        "dataset": data,
        "training": {**train, "artifacts": str(artifacts)},
        "replays": replays,
        "failed_replays": failures,
    }
    if base is not None:
        report["cold_start"] = cold_start(results, dataset)
        print_report(spec, data, train, results, report)
    else:
        print("\nthe base replay failed: no tables (every other figure is relative to it)")
    report["total_s"] = round(time.monotonic() - started, 1)
    output = args.output or RESULTS / f"stream_quality{'_quick' if args.quick else ''}-{spec.dataset}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=_json_default))
    if failures:
        print(f"\nFAILED replays (tracebacks above): {', '.join(failures)}")
    print(f"\nwrote {output} (total {report['total_s']:.0f} s)")
    return 1 if failures else 0


def _report_failure(variant: Variant, exc: BaseException) -> str:
    """Print the replay's traceback as it happened (a process pool carries the worker's in ``__cause__``)."""
    remote = exc.__cause__ if exc.__cause__ is not None else exc
    text = "".join(traceback.format_exception(remote))
    print(f"  {variant.name} FAILED:\n{text}", flush=True)
    return text


def _report_done(result: dict[str, Any], started: float) -> dict[str, Any]:
    ev, cu = result["evaluated_replay"], result["catch_up"]
    print(
        f"  [{time.monotonic() - started:5.0f} s] {result['name']}: {result['scored']:,} scored; "
        f"replay {ev['events_per_cpu_s']:,.0f} events/CPU-s, catch-up {cu['events_per_cpu_s']:,.0f} events/CPU-s",
        flush=True,
    )
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
