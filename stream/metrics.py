"""Prometheus metrics of a worker. Names follow Prometheus conventions: base units, ``_total`` counters.

Latency histograms are in seconds with buckets from 1 ms, because freshness targets are in milliseconds; stage
times start at 50 µs, because most stages of a small batch take well under a millisecond. Every series that says
what users are shown carries the A/B ``variant`` that served them.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from streamrec.model.events import EVENT_TYPES
from streamrec.stream.rejection import REJECTION_REASONS

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
STAGE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
#: The list depths the online evaluation counts hits at.
ONLINE_HIT_DEPTHS = (5, 10, 20)
#: Candidate sources and explanation kinds (``recommendation.schema.json``): their series exist from the start.
SOURCES = ("ann", "covisitation", "item_knn", "trending", "trending_in", "trending_segment")
REASON_KINDS = (
    "similar_to_recent", "bought_together", "trending_in", "trending_in_segment", "trending", "for_you", "explore",
)  # fmt: skip
#: decode … publish run in the pipeline (publish = building the messages); produce (send and wait for the
#: broker's acknowledgements) and commit run in the runtime.
STAGES = ("decode", "validate", "state", "retrieve", "rank", "filter", "publish", "produce", "commit")


class Explained(Protocol):
    reason_code: str


class Published(Protocol):
    kind: str
    variant: str
    event_ts: float
    received_at: float


class WorkerMetrics:
    """All metrics of one worker, registered on ``registry`` (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.messages_consumed = Counter(
            "streamrec_messages_consumed_total", "Input messages read, valid or not.", registry=registry
        )
        self.events_consumed = Counter(
            "streamrec_events_consumed_total", "Accepted events by type.", ["event_type"], registry=registry
        )
        self.events_invalid = Counter(
            "streamrec_events_invalid_total",
            "Messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.recommendations_published = Counter(
            "streamrec_recommendations_published_total",
            "Recommendation messages acknowledged by the broker, by how they were made and the variant serving.",
            ["kind", "variant"],
            registry=registry,
        )
        self.event_to_recommendation = Histogram(
            "streamrec_event_to_recommendation_seconds",
            "From an event to the broker's acknowledgement of the recommendation it triggered; clock=event_time "
            "starts at the event's own timestamp, clock=consume_time when the worker read it.",
            ["clock"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "streamrec_stage_seconds",
            "Time spent per micro-batch in each pipeline stage.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.batch_events = Histogram(
            "streamrec_batch_messages",
            "Input messages per micro-batch.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=registry,
        )
        self.pipeline_errors = Counter(
            "streamrec_pipeline_errors_total",
            "Batches where a stage failed and users were served trending items instead.",
            ["stage"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "streamrec_consumer_lag_messages",
            "Messages behind the partition's high watermark after the last poll.",
            ["topic", "partition"],
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "streamrec_assigned_partitions",
            "Input partitions this worker owns; 0 until it has joined its group (a readiness signal).",
            registry=registry,
        )
        self.users_in_state = Gauge("streamrec_users_in_state", "Users held in this worker's state.", registry=registry)
        self.users_restored = Counter(
            "streamrec_users_restored_total",
            "User states restored from the changelog topic.",
            registry=registry,
        )
        self.model_info = Info(
            "streamrec_model", "The model version each variant serves.", ["variant"], registry=registry
        )
        self.model_load_failures = Counter(
            "streamrec_model_load_failures_total",
            "New model versions refused (unreadable, corrupt or incompatible); the previous one keeps serving.",
            ["variant"],
            registry=registry,
        )
        self.online_evaluated = Counter(
            "streamrec_online_evaluated_total",
            "Events that followed a list shown to their user within online_eval_window_s: each is checked against "
            "that list, by the variant that made it and the event's type.",
            ["variant", "event_type"],
            registry=registry,
        )
        self.online_hits = Counter(
            "streamrec_online_hits_total",
            "Evaluated events whose item was among the first k items of the list shown before them.",
            ["variant", "event_type", "k"],
            registry=registry,
        )
        self.online_hit_rank = Histogram(
            "streamrec_online_hit_rank",
            "Position (1 = first) of the hit item in the list shown before the event.",
            ["variant"],
            buckets=(1, 2, 3, 5, 10, 20, 50),
            registry=registry,
        )
        self.online_source_hits = Counter(
            "streamrec_online_source_hits_total",
            "Hits (anywhere in the list) by the candidate source that proposed the item.",
            ["variant", "source"],
            registry=registry,
        )
        self.online_reason_hits = Counter(
            "streamrec_online_reason_hits_total",
            "Hits (anywhere in the list) by the kind of the item's explanation.",
            ["variant", "reason"],
            registry=registry,
        )
        self.list_diversity = Histogram(
            "streamrec_list_diversity",
            "Intra-list diversity of published lists: mean pairwise cosine distance of the items' embeddings.",
            ["variant"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0),
            registry=registry,
        )
        self.items_covered = Gauge(
            "streamrec_recommended_items",
            "Distinct items this worker has recommended since it started (or since the variant's model changed).",
            ["variant"],
            registry=registry,
        )
        self.catalog_coverage = Gauge(
            "streamrec_catalog_coverage_ratio",
            "Share of the served index's items this worker has recommended since it started.",
            ["variant"],
            registry=registry,
        )
        self.index_items = Gauge("streamrec_index_items", "Items in the ANN index being served.", registry=registry)
        self.index_unavailable_items = Gauge(
            "streamrec_index_unavailable_items",
            "Index rows hidden from search: unavailable items and replaced live rows (tombstones).",
            registry=registry,
        )
        self.live_items = Gauge(
            "streamrec_live_items",
            "Catalog items added to the index from their content since the model loaded.",
            registry=registry,
        )
        self.live_item_moves = Counter(
            "streamrec_live_item_moves_total",
            "Live items re-embedded toward the ranker states of their shoppers (each move takes a new index row).",
            registry=registry,
        )
        self.catalog_items = Gauge("streamrec_catalog_items", "Items held in the live catalog.", registry=registry)
        self.catalog_updates = Counter(
            "streamrec_catalog_updates_total",
            "Catalog records applied, by what they changed (new, content, availability, other, stale, removed).",
            ["change"],
            registry=registry,
        )
        self.catalog_rejected = Counter(
            "streamrec_catalog_rejected_total",
            "Catalog records that failed validation, by reason (logged with their offset; they stay in the topic).",
            ["reason"],
            registry=registry,
        )
        self.catalog_update_seconds = Histogram(
            "streamrec_catalog_update_seconds",
            "From reading catalog records to their being served (embedding new items included).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.items_filtered = Counter(
            "streamrec_items_filtered_total",
            "Candidates removed by each business rule.",
            ["rule"],
            registry=registry,
        )
        self.items_recommended = Counter(
            "streamrec_items_recommended_total",
            "Items published, by the explanation's kind (similar_to_recent, bought_together, trending_in, "
            "trending_in_segment, trending, explore).",
            ["reason"],
            registry=registry,
        )
        self.segment_recommendations = Counter(
            "streamrec_segment_recommendations_total",
            "Recommendations per user segment (only when the segment count is within segment_label_limit).",
            ["segment"],
            registry=registry,
        )
        self.shared_events_applied = Counter(
            "streamrec_shared_events_applied_total",
            "Events of other workers counted into this worker's trending (from the aggregates topic).",
            registry=registry,
        )
        self.shared_records_rejected = Counter(
            "streamrec_shared_records_rejected_total",
            "Records of the aggregates topic that could not be read or applied (logged and skipped).",
            registry=registry,
        )
        self.users_evicted = Counter(
            "streamrec_users_evicted_total",
            "Users idle longer than user_idle_ttl_s: dropped from memory and tombstoned in the state topic.",
            registry=registry,
        )
        self.users_forgotten = Counter(
            "streamrec_users_forgotten_total",
            "Users erased by a `forget` command: state, changelog and recommendations tombstoned.",
            registry=registry,
        )
        self.state_records_skipped = Counter(
            "streamrec_state_records_skipped_total",
            "Changelog records that could not be read during a restore (each costs one user's history).",
            registry=registry,
        )
        self.delivery_failures = Counter(
            "streamrec_delivery_failures_total",
            "Attempts to deliver a batch's output that failed and were retried (readiness is false meanwhile).",
            registry=registry,
        )
        self.outputs_undeliverable = Counter(
            "streamrec_outputs_undeliverable_total",
            "Output messages the broker refused for good (e.g. too large), replaced by a reference in the "
            "dead-letter topic, by the topic they were meant for.",
            ["topic"],
            registry=registry,
        )
        self.batches_fenced = Counter(
            "streamrec_batches_fenced_total",
            "Batches dropped unpublished because the worker no longer owned their partitions (a pause or a lost "
            "session); their events are processed by the partitions' new owner.",
            registry=registry,
        )
        self.ready = Gauge(
            "streamrec_ready",
            "1 when the worker serves: group joined, assigned partitions restored, output being delivered.",
            registry=registry,
        )
        self.segment_label_limit = 64
        # Zero-valued series exist from the start, so dashboards and rate() see every label.
        for event_type in EVENT_TYPES:
            self.events_consumed.labels(event_type)
        for reason in REJECTION_REASONS:
            self.events_invalid.labels(reason)
        for clock in ("event_time", "consume_time"):
            self.event_to_recommendation.labels(clock)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for reason in REASON_KINDS:
            self.items_recommended.labels(reason)

    def declare_variants(self, names: Iterable[str]) -> None:
        """Create the zero-valued series of every variant served, so dashboards see each before its first list."""
        for variant in names:
            for kind in ("personalized", "trending"):
                self.recommendations_published.labels(kind, variant)
            self.model_load_failures.labels(variant)
            self.online_hit_rank.labels(variant)
            self.list_diversity.labels(variant)
            for event_type in EVENT_TYPES:
                self.online_evaluated.labels(variant, event_type)
                for k in ONLINE_HIT_DEPTHS:
                    self.online_hits.labels(variant, event_type, str(k))
            for source in SOURCES:
                self.online_source_hits.labels(variant, source)
            for reason in REASON_KINDS:
                self.online_reason_hits.labels(variant, reason)

    def observe_lists(
        self, lists: Sequence[Sequence[Explained]], segments: Sequence[int | None], n_segments: int = 0
    ) -> None:
        """Count a batch's published items by explanation kind, and its recommendations by segment when the
        segments are few enough to label. Counted per batch: a labelled increment costs a lock and a lookup."""
        kinds = collections.Counter(item.reason_code.split(":", 1)[0] for items in lists for item in items)
        for kind, count in kinds.items():
            self.items_recommended.labels(kind).inc(count)
        if 0 < n_segments <= self.segment_label_limit:
            for segment, count in collections.Counter(segment for segment in segments if segment is not None).items():
                self.segment_recommendations.labels(str(segment)).inc(count)

    def observe_published(self, published: Iterable[Published], acknowledged_at: float) -> None:
        """Count recommendations the broker acknowledged and record their event-to-recommendation latency."""
        latency = self.event_to_recommendation
        for recommendation in published:
            self.recommendations_published.labels(recommendation.kind, recommendation.variant).inc()
            latency.labels("event_time").observe(max(0.0, acknowledged_at - recommendation.event_ts))
            latency.labels("consume_time").observe(max(0.0, acknowledged_at - recommendation.received_at))


class _Nothing:
    """A metric that records nothing, whatever is asked of it."""

    def labels(self, *_: object, **__: object) -> _Nothing:
        return self

    def inc(self, *_: object) -> None:
        pass

    def set(self, *_: object) -> None:
        pass

    def observe(self, *_: object) -> None:
        pass

    def info(self, *_: object) -> None:
        pass


_NOTHING = _Nothing()


class NullMetrics(WorkerMetrics):
    """Metrics for a pipeline without a worker (tests, the served evaluation, benches): every metric of
    :class:`WorkerMetrics` exists and records nothing, so the code that counts needs no ``if metrics`` branch."""

    def __init__(self) -> None:  # no registry, no collectors
        self.segment_label_limit = 0

    def __getattr__(self, name: str) -> _Nothing:  # only for the metric attributes __init__ did not create
        if name.startswith("__"):
            raise AttributeError(name)
        setattr(self, name, _NOTHING)  # found by plain lookup next time: the hot path asks once per event
        return _NOTHING

    def observe_lists(self, *_: object, **__: object) -> None:
        pass

    def observe_published(self, *_: object, **__: object) -> None:
        pass
