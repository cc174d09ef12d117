"""The retraining loop: events topic → training → evaluation against the serving version → publish → hot swap.

``streamrec retrain --out ROOT --days 7`` reads the last seven days of the events topic (each message decoded and
validated as a worker would; malformed ones are skipped and counted), trains a candidate version into ``ROOT``
without touching ``ROOT/LATEST``, then replays the same users through the serving pipeline with the candidate and
with the version ``LATEST`` names. Only events newer than the serving version are its test targets where enough
such users exist (the serving version may have trained on older ones, which would flatter it). The candidate is
published (``LATEST`` switched, so running workers hot-swap it) when its served NDCG@10 is at least the serving
version's × (1 − ``tolerance``); otherwise the serving version stays and the candidate's directory is kept for
inspection. ``--every`` repeats this on a schedule; a Kubernetes CronJob runs it once per day instead.
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

    rules = ValidationRules(
        settings.max_id_length, settings.min_event_ts, settings.max_clock_skew_s, settings.reject_key_mismatch
    )
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


def catalog_from_topic(settings: Settings, max_records: int | None = None) -> list[dict[str, Any]]:
    """The catalog topic's items as they stand now (the latest record per item; removed items left out): what
    training needs to fit the content projection that lets workers embed new items."""
    import orjson

    from streamrec.stream.app.topic_read import read_range

    latest: dict[bytes, dict[str, Any] | None] = {}
    for message in read_range(settings, settings.items_topic, max_records=max_records):
        if message.key is None:
            continue
        if message.value is None:
            latest[message.key] = None
            continue
        try:
            record = orjson.loads(message.value)
        except orjson.JSONDecodeError:
            continue  # workers skip it too (and count it in streamrec_catalog_rejected_total)
        if isinstance(record, dict) and record.get("item_id"):
            latest[message.key] = record
    return [record for record in latest.values() if record is not None]


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
    candidate_dir = train_from_settings(events, root, settings, progress=progress, catalog=catalog, switch_latest=False)
    candidate = load_artifacts(candidate_dir)
    if serving is None:
        write_latest(root, candidate.version)
        metrics = _served(events, candidate, settings, comparison_users)
        return RetrainOutcome(candidate_dir, True, "no serving version to compare with", metrics, None)
    compared, basis = _comparison_log(events, serving.manifest.get("created_at"))
    candidate_metrics = _served(compared, candidate, settings, comparison_users)
    serving_metrics = _served(compared, serving, settings, comparison_users)
    new, old = candidate_metrics[GATE_METRIC], serving_metrics[GATE_METRIC]
    published = new >= old * (1.0 - tolerance)
    verdict = "not worse than" if published else "worse than"
    reason = (
        f"served {GATE_METRIC} {new:.4f} {verdict} the serving version's {old:.4f} (tolerance {tolerance:.1%}; {basis})"
    )
    if published:
        write_latest(root, candidate.version)
    return RetrainOutcome(candidate_dir, published, reason, candidate_metrics, serving_metrics)


def _comparison_log(events: EventLog, serving_created_at: str | None) -> tuple[EventLog, str]:
    """The users whose last event is newer than the serving version (none of its test targets were its training
    data), or every user when too few are."""
    if serving_created_at is None:
        return events, "every user of the range"
    try:
        created = datetime.fromisoformat(serving_created_at).timestamp()
    except ValueError:
        return events, "every user of the range"
    sequences = events.user_sequences()
    fresh = [user for user, rows in sequences.items() if events.timestamps[rows[-1]] > created]
    if len(fresh) < MIN_FRESH_USERS:
        return events, f"every user of the range: only {len(fresh)} active since the serving version"
    keep = np.concatenate([sequences[user] for user in fresh])
    keep.sort()
    restricted = EventLog(
        events.user_ids[keep], events.item_ids[keep], events.event_types[keep], events.timestamps[keep], events.name
    )
    return restricted, f"{len(fresh)} users active since the serving version was trained"


def _served(events: EventLog, artifacts: Any, settings: Settings, users: int) -> dict[str, Any]:
    from streamrec.stream.app.served_eval import evaluate

    report = evaluate(events, artifacts, settings=settings, served=True, served_max_users=users)
    served = report["served"]
    if not math.isfinite(served.get(GATE_METRIC, math.nan)):
        raise StreamrecError(f"the served evaluation of {artifacts.version} gave no {GATE_METRIC}")
    return served
