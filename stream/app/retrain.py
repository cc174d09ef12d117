"""The retraining loop: events topic → training → evaluation against the serving version → publish → hot swap.

``streamrec retrain --out ROOT --days 7`` reads the last seven days of the events topic (each message decoded and
validated as a worker would; malformed ones are skipped and counted), trains a candidate version into ``ROOT``
without touching ``ROOT/LATEST``, then replays the same users through the serving pipeline with the candidate and
with the version ``LATEST`` names: a seeded sample of the users whose last event is newer than the serving version
(where enough such users exist: the serving version may have trained on older targets, which would flatter it).
Each version's served NDCG@10 is taken over that whole sample: a user a version cannot evaluate (too few events on
items it knows) counts as a miss for it, so both are measured on the same users. The candidate is published
(``LATEST`` switched, so running workers hot-swap it) when its NDCG@10 is at least the serving version's
× (1 − ``tolerance``); otherwise the serving version stays and the candidate's directory is kept for inspection.
``--every`` repeats this on a schedule; a Kubernetes CronJob runs it once per day instead.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.model.event_log import EventLog
from streamrec.stream.decode import decode
from streamrec.stream.errors import StreamrecError
from streamrec.stream.rejection import InvalidEvent
from streamrec.stream.settings import Settings
from streamrec.stream.validate import ValidationRules, validate

log = logging.getLogger(__name__)

#: Users replayed per version in the comparison: enough for a steady NDCG@10, few enough for minutes on a core.
COMPARISON_USERS = 2_000
#: Fewer users than this with events after the serving version's creation: compare on every user instead.
MIN_FRESH_USERS = 200
GATE_METRIC = "NDCG@10"


@dataclass(frozen=True)
class TopicEvents:
    log: EventLog
    read: int  # messages read
    skipped: int  # commands, tombstones and malformed messages


def events_from_topic(
    settings: Settings, since_s: float, until_s: float | None = None, max_records: int | None = None
) -> TopicEvents:
    """The events topic's valid events with a broker timestamp in [since_s, until_s), as an event log."""
    from streamrec.stream.app.topic_read import read_range

    rules = ValidationRules.from_settings(settings)
    events, read, skipped = [], 0, 0
    now = time.time()
    for message in read_range(settings, settings.events_topic, since_s, until_s, max_records):
        read += 1
        try:
            payload = decode(message.value, settings.max_payload_bytes)
            if "command" in payload:
                skipped += 1
                continue
            events.append(validate(payload, message.key, rules, now))
        except InvalidEvent:
            skipped += 1
    return TopicEvents(EventLog.from_events(events, name=settings.events_topic), read, skipped)


@dataclass(frozen=True)
class RetrainOutcome:
    candidate: Path
    published: bool
    reason: str
    candidate_metrics: dict[str, Any]
    serving_metrics: dict[str, Any] | None


def retrain(
    settings: Settings,
    root: Path,
    events: EventLog,
    *,
    tolerance: float = 0.0,
    comparison_users: int = COMPARISON_USERS,
    catalog: list[dict[str, Any]] | None = None,
    progress: bool = False,
) -> RetrainOutcome:
    """Train a candidate on ``events`` into ``root`` and publish it when it serves no worse than ``LATEST``."""
    from streamrec.model.artifacts import ArtifactError, load_artifacts, resolve_artifact_dir, write_latest
    from streamrec.stream.app.training import train_from_settings

    serving = None
    if (root / "LATEST").exists():
        try:
            serving = load_artifacts(resolve_artifact_dir(root))
        except ArtifactError as exc:
            log.warning("the serving version cannot be loaded (%s): the candidate will replace it", exc)
    try:
        candidate_dir = train_from_settings(
            events, root, settings, progress=progress, catalog=catalog, switch_latest=False
        )
    except ValueError as exc:  # too few users or events to train on: the range, not the code, is at fault
        raise StreamrecError(f"cannot train on these events ({exc}); widen the range") from None
    candidate = load_artifacts(candidate_dir)
    created = None if serving is None else serving.manifest.get("created_at")
    compared, basis = _comparison_log(events, created, comparison_users)
    if serving is None:
        write_latest(root, candidate.version)
        metrics = _served(compared, candidate, settings)
        return RetrainOutcome(candidate_dir, True, "no serving version to compare with", metrics, None)
    candidate_metrics = _served(compared, candidate, settings)
    serving_metrics = _served(compared, serving, settings)
    new, old = candidate_metrics[GATE_METRIC], serving_metrics[GATE_METRIC]
    published = new >= old * (1.0 - tolerance)
    verdict = "not worse than" if published else "worse than"
    reason = (
        f"served {GATE_METRIC} {new:.4f} {verdict} the serving version's {old:.4f} (tolerance {tolerance:.1%}; {basis})"
    )
    if published:
        write_latest(root, candidate.version)
    return RetrainOutcome(candidate_dir, published, reason, candidate_metrics, serving_metrics)


def _comparison_log(
    events: EventLog, serving_created_at: str | None, max_users: int, seed: int = 0
) -> tuple[EventLog, str]:
    """The events of the users both versions are compared on: a seeded sample of at most ``max_users`` of the users
    with the 3 events leave-one-out needs and a last event newer than the serving version (none of its test targets
    were its training data), or of every such user of the range when too few are that fresh."""
    sequences = {user: rows for user, rows in events.user_sequences().items() if len(rows) >= 3}
    basis = "users of the range"
    created = _epoch(serving_created_at)
    if created is not None:
        fresh = [user for user, rows in sequences.items() if events.timestamps[rows[-1]] > created]
        if len(fresh) >= MIN_FRESH_USERS:
            sequences, basis = {user: sequences[user] for user in fresh}, "users active since the serving version"
        else:
            basis = f"users of the range (only {len(fresh)} active since the serving version)"
    users = sorted(sequences)
    if len(users) > max_users:
        picked = np.random.default_rng(seed).choice(len(users), max_users, replace=False)
        users = [users[i] for i in sorted(picked)]
    if not users:
        raise StreamrecError("no user of the range has the 3 events a comparison needs; widen the range")
    keep = np.sort(np.concatenate([sequences[user] for user in users]))
    restricted = EventLog(
        events.user_ids[keep], events.item_ids[keep], events.event_types[keep], events.timestamps[keep], events.name
    )
    return restricted, f"the same {len(users)} {basis}"


def _epoch(iso_time: str | None) -> float | None:
    if iso_time is None:
        return None
    try:
        return datetime.fromisoformat(iso_time).timestamp()
    except ValueError:
        return None


def _served(events: EventLog, artifacts: Any, settings: Settings) -> dict[str, Any]:
    """The served metrics of ``artifacts`` on every user of ``events``; ``GATE_METRIC`` is taken over all of them,
    a user the version could not evaluate counting as a miss."""
    from streamrec.stream.app.served_eval import evaluate

    served = evaluate(events, artifacts, settings=settings, served=True)["served"]
    value = served.get(GATE_METRIC, math.nan)
    if not math.isfinite(value):
        raise StreamrecError(f"the served evaluation of {artifacts.version} gave no {GATE_METRIC}")
    n_users = len(set(events.user_ids.tolist()))
    return {**served, GATE_METRIC: value * served["users"] / n_users, f"{GATE_METRIC}_evaluated_users": served["users"]}
