"""The served half of ``streamrec eval``: each user's history replayed through the real pipeline, scored like the
offline models (:mod:`streamrec.model.evaluate`), and the report that joins both."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.baselines import Histories
from streamrec.model.cold_items import HeldOutItems, content_rows, evaluate_cold_items
from streamrec.model.compress import with_compressed_ranker
from streamrec.model.evaluate import ann_recall, by_target_kind, evaluate_offline
from streamrec.model.event_log import EventLog
from streamrec.model.events import EVENT_TYPES
from streamrec.model.metrics import CUTOFFS, summarize
from streamrec.model.splits import LeaveOneOutSplit
from streamrec.stream.events import SourceRecord
from streamrec.stream.explain import PERSONAL_SOURCES
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.settings import VARIANT_SETTINGS, Settings

SERVED_TOP_K = 20
SERVED_BATCH_EVENTS = 4_096  # events per pipeline micro-batch in the served replay

SERVED_PROTOCOL = (
    "each evaluated user's history (every event before the test target, with its type and timestamp, keyed by "
    "user) is replayed in time order through streamrec.stream.pipeline.Pipeline with top_k=20, many users per "
    "micro-batch; a user's events are consecutive, so the state behind the user's last recommendation is the "
    "one a live time-ordered stream builds (only the trending fallback, which needs no personal state, sees "
    "another order). The user's last published list is scored: rank = position of the test target in it, "
    "absent = miss, so MRR is MRR@20. Unlike the full-ranking protocol the pipeline excludes only bought items "
    "and the trigger item, not every history item, and a repeat purchase of the target can never be a hit."
)


def evaluate(
    log: EventLog,
    artifacts: ModelArtifacts,
    *,
    seed: int = 0,
    served: bool = True,
    settings: Settings | None = None,
    served_max_users: int | None = None,
    catalog: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Offline metrics of the model and baselines under every protocol, plus the served pipeline's metrics, and
    for a model trained with items held out (``hold_out_items``) the cold-start item protocol
    (``model/cold_items.py``; ``catalog`` gives the held-out items their content rows).

    ``settings`` configures the served replay (default: the environment's, as the worker would read them),
    with ``top_k`` forced to 20; its ``ranker_compression`` also picks the ranker of the offline ``ranker`` and
    ``model`` rows, so that both halves measure the same ranker. ``served_max_users`` replays a seeded sample of that
    many users instead of all. Returns a JSON-ready dict; see :mod:`streamrec.model.evaluate` and its ``PROTOCOL``.
    """
    started = time.perf_counter()
    # A model trained with items held out is checked against the log first: another log is refused at once.
    held_out = artifacts.manifest.get("held_out_items")
    held = HeldOutItems.recorded(log, held_out) if held_out else None
    settings = settings or Settings()
    offline = evaluate_offline(log, with_compressed_ranker(artifacts, settings.ranker_compression), seed=seed)
    report = offline.report | {"ranker_compression": settings.ranker_compression}
    if served:
        replay_settings = settings.model_copy(
            # A replay is of a historical log: any past or future event time is accepted (as event files are
            # read), and the list is the length the metrics need.
            update={"top_k": SERVED_TOP_K, "min_event_ts": -math.inf, "max_clock_skew_s": math.inf}
        )
        report["served"], served_queries = served_metrics(
            offline.split,
            artifacts,
            replay_settings,
            seed=seed,
            max_users=served_max_users,
            unknown_targets=offline.unknown_targets,
            target_kinds=offline.target_kinds,
        )
        source = "served interest vectors (pipeline state after the replay)"
        report |= ann_recall(artifacts, served_queries, source, seed)
    else:
        report |= ann_recall(artifacts, offline.retrieval_queries, "offline interest vectors", seed)
    if held is not None:
        rows = content_rows(held.items, artifacts, catalog)
        prior = settings.new_item_shopper_prior
        report["cold_items"] = evaluate_cold_items(
            log, artifacts, held, rows, seed=seed, shopper_prior=prior, optimism=settings.new_item_optimism
        )
    report["seconds"]["total"] = round(time.perf_counter() - started, 2)
    return report


def candidate_source_recall(
    user_ids: list[str], target_rows: np.ndarray, candidates: dict[str, dict[str, np.ndarray]], top_k: int
) -> dict[str, Any]:
    """How often each candidate source (and their union, what the ranker sees) holds the user's test target,
    and each source's own HR@top_k when its list is served in its own order: the ranker's gain over the best
    single source is the served HR@top_k minus the best of these. Shares are over all evaluated users."""
    n_users = max(1, len(user_ids))
    sources = sorted({source for per_user in candidates.values() for source in per_user})
    hits = {source: 0 for source in [*sources, "union"]}
    hits_at_k = dict.fromkeys(sources, 0)
    for user, target in zip(user_ids, target_rows.tolist(), strict=True):
        per_user = candidates.get(user)
        if per_user is None:
            continue
        in_union = False
        for source, rows in per_user.items():
            found = np.flatnonzero(rows == target)
            if found.size:
                hits[source] += 1
                hits_at_k[source] += int(found[0] < top_k)
                in_union = True
        hits["union"] += in_union
    return {
        "users_with_candidates": len(candidates),
        "recall": {source: round(count / n_users, 6) for source, count in hits.items()},
        f"HR@{top_k}_in_source_order": {source: round(count / n_users, 6) for source, count in hits_at_k.items()},
    }


def served_metrics(
    split: LeaveOneOutSplit,
    artifacts: ModelArtifacts,
    settings: Settings,
    *,
    seed: int = 0,
    max_users: int | None = None,
    batch_events: int = SERVED_BATCH_EVENTS,
    unknown_targets: np.ndarray | None = None,
    target_kinds: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Replay every (or a seeded sample of ``max_users``) user's history through a real :class:`Pipeline` and
    score the user's last published list against the test target.

    Users flagged in ``unknown_targets`` (bool [U], see :func:`unknown_target_users`) are misses; with
    ``target_kinds`` (int8 [U], :func:`~streamrec.model.evaluate.target_kinds`) the metrics are also given per kind
    of test target.

    Returns the metrics and the users' final interest vectors (the served retrieval queries) ``[U, dim]``.
    """
    started = time.perf_counter()
    users = np.arange(split.n_users)
    if max_users is not None and max_users < split.n_users:
        users = np.sort(np.random.default_rng(seed).choice(split.n_users, max_users, replace=False))
    histories = Histories.of_users(split, users, "test")
    positions = histories.positions()
    user_ids = [str(user) for user in split.users[users]]
    owner = histories.rows()
    item_ids = artifacts.item_ids
    records = [
        SourceRecord(
            orjson.dumps(
                {
                    "user_id": user_ids[row],
                    "item_id": item_ids[item],
                    "event_type": EVENT_TYPES[code],
                    "ts": float(ts),
                }
            ),
            user_ids[row].encode(),
            0,
            offset,
            received_at=0.0,
        )
        for offset, (row, item, code, ts) in enumerate(
            zip(
                owner.tolist(),
                split.items[positions].tolist(),
                split.event_types[positions].tolist(),
                split.timestamps[positions].tolist(),
                strict=True,
            )
        )
    ]
    prepared = time.perf_counter()

    if settings.random_seed is None:
        settings = settings.model_copy(update={"random_seed": seed})  # exploration draws repeat run to run
    pipeline = Pipeline(settings, artifacts)
    last_candidates: dict[str, dict[str, np.ndarray]] = {}
    pipeline.candidate_observer = last_candidates.__setitem__  # a user's later candidates supersede earlier ones
    now = float(split.timestamps[positions].max()) if len(positions) else 0.0
    last: dict[str, bytes] = {}
    dead_letters = 0
    for begin in range(0, len(records), batch_events):
        result = pipeline.process(records[begin : begin + batch_events], now=now)
        dead_letters += len(result.dead_letters)
        for message in result.recommendations:
            if message.key is not None and message.value is not None:
                last[message.key.decode()] = message.value  # a later list of the same user supersedes it
    replay_seconds = time.perf_counter() - prepared

    top_k = settings.top_k
    target_rows = split.targets("test")[users]
    if unknown_targets is not None:
        target_rows = np.where(unknown_targets[users], -1, target_rows)  # the real target is no listed item
    target_ids = [item_ids[row] if row >= 0 else None for row in target_rows.tolist()]
    ranks = np.full(len(users), top_k, dtype=np.int64)  # not in the list: a miss at every cut-off <= top_k
    personalized = 0
    for row, (user, target) in enumerate(zip(user_ids, target_ids, strict=True)):
        value = last.get(user)
        if value is None:
            continue
        listed = orjson.loads(value)["items"]
        personalized += bool(listed) and listed[0]["source"] in PERSONAL_SOURCES
        for position, entry in enumerate(listed):
            if entry["item_id"] == target:
                ranks[row] = position
                break
    vectors = np.zeros((len(users), artifacts.dim), dtype=np.float32)
    for row, user in enumerate(user_ids):
        state = pipeline.store.get(0, user)
        if state is not None and state.vector is not None:
            vectors[row] = state.vector
    metrics: dict[str, Any] = summarize(ranks, [k for k in CUTOFFS if k <= top_k], with_mrr=False)
    metrics["candidate_sources"] = candidate_source_recall(user_ids, target_rows, last_candidates, top_k)
    if target_kinds is not None:
        metrics["by_target_kind"] = by_target_kind(ranks, target_kinds[users])
    metrics[f"MRR@{top_k}"] = round(float(np.mean(np.where(ranks < top_k, 1.0 / (ranks + 1.0), 0.0))), 6)
    metrics |= {
        "protocol": SERVED_PROTOCOL,
        "top_k": top_k,
        "users": len(users),
        "users_sampled": bool(len(users) < split.n_users),
        "unknown_target_users": int(np.count_nonzero(target_rows < 0)),
        "users_with_recommendation": len(last),
        "personalized_share": round(personalized / len(users), 6),
        "events_replayed": len(records),
        "dead_letters": dead_letters,
        "batch_events": batch_events,
        "n_candidates": settings.n_candidates,
        # What shaped the lists: a report read later says which policy its figures are for.
        "list_settings": {name: getattr(settings, name) for name in (*VARIANT_SETTINGS, "max_bought_items")},
        "replay_seconds": round(replay_seconds, 2),
        "events_per_s": round(len(records) / replay_seconds, 1) if replay_seconds > 0 else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return metrics, vectors
