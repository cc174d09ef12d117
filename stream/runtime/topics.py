"""Creating the topics a worker needs, with the partition counts and configs production expects."""

from __future__ import annotations

import logging
import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streamrec.stream.runtime.security import kafka_python_options
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)


def required_topics(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic name → topic configs. The state changelog is compacted: only each user's latest state matters. The
    aggregates topic holds additions, not keyed state, so it is kept for a time instead."""
    return {
        settings.events_topic: {},
        settings.recommendations_topic: {},
        settings.dead_letter_topic: {},
        settings.state_topic: {"cleanup.policy": "compact"},
        settings.items_topic: {"cleanup.policy": "compact"},
        settings.aggregates_topic: {"retention.ms": str(int(settings.aggregates_retention_s * 1000))},
    }


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics; return each topic's partition count.

    The state topic must have as many partitions as the events topic (a user's state lives in the partition
    number of their events), so it is created with the events topic's count.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="streamrec-admin",
        request_timeout_ms=int(timeout_s * 1000),
        # So that timeout_s also bounds reaching the brokers (kafka-python's own bootstrap timeout is 30 s).
        bootstrap_timeout_ms=int(timeout_s * 1000),
        **kafka_python_options(settings),
    )
    try:
        partitions = _partition_counts(admin)
        events_partitions = partitions.get(settings.events_topic, settings.topic_partitions)
        missing = [
            NewTopic(
                name,
                num_partitions=events_partitions,
                replication_factor=settings.replication_factor,
                topic_configs=configs,
            )
            for name, configs in required_topics(settings).items()
            if name not in partitions
        ]
        for topic in missing:
            try:
                admin.create_topics([topic])
                log.info("created topic %s with %d partitions", topic.name, topic.num_partitions)
            except TopicAlreadyExistsError:
                pass  # another worker created it first
        partitions = _partition_counts(admin)
        # A created topic reaches the metadata of every broker a moment later; until then it reads as missing or
        # with fewer partitions, which would fail the check below for no reason.
        deadline = time.monotonic() + timeout_s
        while not _listed(missing, partitions) and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = _partition_counts(admin)
    finally:
        admin.close()
    if partitions.get(settings.state_topic, 0) < partitions.get(settings.events_topic, 0):
        raise RuntimeError(
            f"topic {settings.state_topic} has fewer partitions than {settings.events_topic}; "
            "user state needs one state partition per event partition"
        )
    return {name: partitions[name] for name in required_topics(settings) if name in partitions}


def _listed(created: list[NewTopic], partitions: dict[str, int]) -> bool:
    return all(partitions.get(topic.name, 0) >= topic.num_partitions for topic in created)


def _partition_counts(admin: KafkaAdminClient) -> dict[str, int]:
    return {
        topic["name"]: len(topic["partitions"])
        for topic in admin.describe_topics()
        if not topic.get("is_internal") and topic.get("error_code", 0) == 0
    }
