"""The path of every event: decode → validate → update user state → retrieve → rank → filter → publish.

:class:`Pipeline` knows nothing of Kafka. A runtime (``stream/runtime``) feeds it micro-batches of raw
records and sends the messages it returns; tests call :meth:`Pipeline.process` directly. Per batch there is one
ANN search and one ranker forward, whatever the number of users in it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from index.covisitation import CoVisitation
from stream.decode import decode
from stream.events import Event, SourceRecord
from stream.filters import ScoredItem, select_top_k
from stream.metrics import WorkerMetrics
from stream.publish import recommendation_message
from stream.rank import rank_candidates
from stream.rejection import InvalidEvent
from stream.retrieve import retrieve_candidates
from stream.settings import Settings
from stream.trending import TrendingCounter
from stream.user_state import InterestModel, UserState, UserStateStore, encode_state
from stream.validate import ValidationRules, validate

if TYPE_CHECKING:
    from model.artifacts import ModelArtifacts

log = logging.getLogger(__name__)

REASON_HEADER = "streamrec.reason"
DETAIL_HEADER = "streamrec.detail"


@dataclass(slots=True)
class OutgoingMessage:
    """A message for the runtime to produce. ``partition`` None lets the producer's partitioner choose."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class PublishedRecommendation:
    """Bookkeeping for the latency metrics, resolved once the broker acknowledges the message."""

    kind: str
    event_ts: float
    received_at: float


@dataclass
class BatchResult:
    """Everything a runtime must do after a batch: send ``messages``, then commit ``next_offsets``."""

    recommendations: list[OutgoingMessage]
    dead_letters: list[OutgoingMessage]
    state_updates: list[OutgoingMessage]
    published: list[PublishedRecommendation]
    next_offsets: dict[int, int]  # input partition -> offset to commit (last processed + 1)
    stage_seconds: dict[str, float]

    @property
    def messages(self) -> list[OutgoingMessage]:
        return [*self.recommendations, *self.dead_letters, *self.state_updates]


@dataclass(slots=True)
class _Trigger:
    """The latest event of a user in the batch: the one their recommendation answers."""

    partition: int
    event: Event
    received_at: float
    state: UserState


class Pipeline:
    """Turns batches of raw input records into recommendations, dead letters and state updates."""

    def __init__(self, settings: Settings, artifacts: ModelArtifacts, metrics: WorkerMetrics | None = None):
        self.settings = settings
        self.metrics = metrics
        self.rules = ValidationRules(
            max_id_length=settings.max_id_length,
            min_event_ts=settings.min_event_ts,
            max_clock_skew_s=settings.max_clock_skew_s,
            reject_key_mismatch=settings.reject_key_mismatch,
        )
        self.store = UserStateStore()
        #: Called with (user id, {source: candidate rows}) for every personalized user; evaluation uses it to
        #: measure how often each candidate source reaches the test target. None on the hot path.
        self.candidate_observer: Callable[[str, dict[str, np.ndarray]], None] | None = None
        self.trending = TrendingCounter(settings.trending_half_life_s)
        self.use_model(artifacts)

    # --- model --------------------------------------------------------------------------------------------
    def use_model(self, artifacts: ModelArtifacts) -> None:
        """Serve ``artifacts`` from the next batch on. User vectors are rebuilt lazily on their next event."""
        artifacts.index.set_search_params(self.settings.hnsw_ef_search, self.settings.ivf_nprobe)
        self.artifacts = artifacts
        self.interest = InterestModel(
            embeddings=artifacts.item_embeddings,
            row_of=artifacts.row_of,
            event_weights=dict(self.settings.event_weights),
            half_life_s=self.settings.interest_half_life_s,
            max_recent_items=self.settings.max_recent_items,
            max_bought_items=self.settings.max_bought_items,
            model_version=artifacts.version,
        )
        # Co-visitation is counted in the model's rows, so a new model starts it afresh from the stream.
        self.covisitation = CoVisitation(len(artifacts.item_ids), window=self.settings.covisitation_window)
        if self.metrics:
            self.metrics.model_info.info({"version": artifacts.version})
            self.metrics.index_items.set(len(artifacts.index))

    # --- state restore (called by runtimes on partition assignment) -----------------------------------------
    def restore_state(self, partition: int, states: Sequence[UserState]) -> None:
        for state in states:
            self.store.put(partition, state)
        if self.metrics:
            self.metrics.users_restored.inc(len(states))
            self.metrics.users_in_state.set(len(self.store))

    def drop_partitions(self, partitions: Sequence[int]) -> None:
        """Forget the users of revoked partitions (their new owner restores them from the changelog)."""
        for partition in partitions:
            self.store.drop_partition(partition)
        if self.metrics:
            self.metrics.users_in_state.set(len(self.store))
            self.metrics.assigned_partitions.set(0)  # eager rebalancing: the new assignment follows

    # --- the hot path -------------------------------------------------------------------------------------
    def process(self, records: Sequence[SourceRecord], now: float | None = None) -> BatchResult:
        now = time.time() if now is None else now
        timings: dict[str, float] = {}
        next_offsets: dict[int, int] = {}
        for record in records:
            next_offsets[record.partition] = max(next_offsets.get(record.partition, 0), record.offset + 1)

        dead_letters: list[OutgoingMessage] = []
        accepted: list[tuple[SourceRecord, Event]] = []
        with self._stage("decode", timings):
            decoded = [self._decode(record, dead_letters) for record in records]
        with self._stage("validate", timings):
            for record, payload in zip(records, decoded, strict=True):
                if payload is not None:
                    event = self._validate(record, payload, now, dead_letters)
                    if event is not None:
                        accepted.append((record, event))

        with self._stage("state", timings):
            triggers = self._update_state(accepted)
            state_updates = [
                OutgoingMessage(
                    self.settings.state_topic,
                    user_id.encode(),
                    encode_state(trigger.state),
                    partition=trigger.partition,
                )
                for user_id, trigger in triggers.items()
            ]

        recommendations, published = self._recommend(list(triggers.values()), timings)
        if self.metrics:
            self.metrics.messages_consumed.inc(len(records))
            self.metrics.batch_events.observe(len(records))
            self.metrics.users_in_state.set(len(self.store))
            for stage, seconds in timings.items():
                self.metrics.stage_seconds.labels(stage).observe(seconds)
        return BatchResult(recommendations, dead_letters, state_updates, published, next_offsets, timings)

    def _decode(self, record: SourceRecord, dead_letters: list[OutgoingMessage]) -> dict | None:
        try:
            return decode(record.value, self.settings.max_payload_bytes)
        except InvalidEvent as rejection:
            dead_letters.append(self._dead_letter(record, rejection))
            return None

    def _validate(
        self, record: SourceRecord, payload: dict, now: float, dead_letters: list[OutgoingMessage]
    ) -> Event | None:
        try:
            event = validate(payload, record.key, self.rules, now)
        except InvalidEvent as rejection:
            dead_letters.append(self._dead_letter(record, rejection))
            return None
        if self.metrics:
            self.metrics.events_consumed.labels(event.event_type.value).inc()
        return event

    def _dead_letter(self, record: SourceRecord, rejection: InvalidEvent) -> OutgoingMessage:
        if self.metrics:
            self.metrics.events_invalid.labels(rejection.reason).inc()
        headers = [
            (REASON_HEADER, rejection.reason.encode()),
            (DETAIL_HEADER, rejection.detail.encode("utf-8", "replace")[:1000]),
            ("streamrec.source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        return OutgoingMessage(self.settings.dead_letter_topic, record.key, record.value, headers=headers)

    def _update_state(self, accepted: list[tuple[SourceRecord, Event]]) -> dict[str, _Trigger]:
        triggers: dict[str, _Trigger] = {}
        weights = self.settings.event_weights
        for record, event in accepted:
            state = self.store.get(record.partition, event.user_id)
            if state is None:
                state = self.interest.new_state(event.user_id)
                self.store.put(record.partition, state)
            if not state.already_applied(record.partition, record.offset):
                row = self.interest.row_of.get(event.item_id)
                if row is not None and self.settings.covisitation_candidates:
                    self.covisitation.add(self.interest.latest_rows(state, self.covisitation.window), row)
                self.interest.apply(state, event)
                state.last_partition, state.last_offset = record.partition, record.offset
                self.trending.add(event.item_id, weights[event.event_type.value], event.ts)
            # A user's later events in the batch supersede earlier ones: one recommendation per user per batch.
            triggers.pop(event.user_id, None)
            triggers[event.user_id] = _Trigger(record.partition, event, record.received_at, state)
        return triggers

    def _recommend(
        self, triggers: list[_Trigger], timings: dict[str, float]
    ) -> tuple[list[OutgoingMessage], list[PublishedRecommendation]]:
        settings = self.settings
        excluded = {t.event.user_id: self._excluded(t) for t in triggers}
        warm = [t for t in triggers if not t.state.is_cold]
        ranked: dict[str, list[ScoredItem]] = {}
        if warm:
            try:
                ranked = self._personalized(warm, excluded, timings)
            except Exception:  # degrade to trending rather than lose the batch
                log.exception("retrieval or ranking failed; serving trending items for %d users", len(warm))
                if self.metrics:
                    self.metrics.pipeline_errors.labels("rank").inc()

        with self._stage("filter", timings):
            most_excluded = max((len(items) for items in excluded.values()), default=0)
            fallback = [
                ScoredItem(item_id, score, "trending")
                for item_id, score in self.trending.top(settings.top_k + most_excluded)
            ]
            chosen = {
                user_id: select_top_k(ranked.get(user_id, ()), excluded[user_id], settings.top_k, fallback)
                for user_id in excluded
            }

        with self._stage("publish", timings):
            generated_at = time.time()
            messages, published = [], []
            version = self.artifacts.version
            for t in triggers:
                user_id = t.event.user_id
                value = recommendation_message(user_id, chosen[user_id], version, t.event, generated_at)
                messages.append(OutgoingMessage(settings.recommendations_topic, user_id.encode(), value))
                kind = "personalized" if user_id in ranked else "trending"
                published.append(PublishedRecommendation(kind, t.event.ts, t.received_at))
        return messages, published

    def _personalized(
        self, warm: list[_Trigger], excluded: dict[str, dict[str, None]], timings: dict[str, float]
    ) -> dict[str, list[ScoredItem]]:
        row_of = self.artifacts.row_of
        item_ids = self.artifacts.item_ids
        with self._stage("retrieve", timings):
            queries = np.stack([t.state.vector for t in warm]).astype(np.float32, copy=False)
            excluded_rows = [
                {row for item in excluded[t.event.user_id] if (row := row_of.get(item)) is not None} for t in warm
            ]
            # Known-item history of each user, oldest first: read once, used by every source and the ranker.
            histories = [self.interest.history_rows(t.state) for t in warm]
            candidates = retrieve_candidates(self.artifacts.index, queries, excluded_rows, self.settings.n_candidates)
            sources: dict[str, list[np.ndarray]] = {"ann": candidates}
            if self.settings.covisitation_candidates:
                sources["covisitation"] = [
                    self._covisited(history, excluded)
                    for history, excluded in zip(histories, excluded_rows, strict=True)
                ]
            item_knn = self.artifacts.item_knn if self.artifacts.blend_weight > 0 else None
            if item_knn is not None:
                recent = [self._recent_interactions(history, item_knn.n_recent) for history in histories]
                if self.settings.item_knn_candidates:
                    n = self.settings.item_knn_candidates
                    sources["item_knn"] = [
                        item_knn.top_neighbors(rows, n, excluded)
                        for rows, excluded in zip(recent, excluded_rows, strict=True)
                    ]
            if self.candidate_observer is not None:
                for i, t in enumerate(warm):
                    self.candidate_observer(t.event.user_id, {name: rows[i] for name, rows in sources.items()})
            for name, extra in sources.items():
                if name != "ann":
                    candidates = [
                        np.concatenate([rows, more[~np.isin(more, rows)]])
                        for rows, more in zip(candidates, extra, strict=True)
                    ]
        with self._stage("rank", timings):
            scores = rank_candidates(self.artifacts.ranker, histories, candidates, self.artifacts.ranker.config.max_len)
            if item_knn is not None:
                # What training chose and evaluation measures: ranker logits + blend_weight · item-kNN score.
                weight = np.float32(self.artifacts.blend_weight)
                knn_scores = item_knn.score_candidates(recent, candidates)
                scores = [ranker + weight * knn for ranker, knn in zip(scores, knn_scores, strict=True)]
        ranked = {}
        for t, rows, row_scores in zip(warm, candidates, scores, strict=True):
            order = np.argsort(-row_scores, kind="stable")
            ranked[t.event.user_id] = [
                ScoredItem(item_ids[rows[i]], float(row_scores[i]), "personalized") for i in order
            ]
        return ranked

    def _covisited(self, history: list[int], excluded: set[int]) -> np.ndarray:
        """Co-visitation candidates of the user's latest items, best first (the ranker orders the union)."""
        rows, _ = self.covisitation.candidates(history, self.settings.covisitation_candidates, excluded)
        return rows

    @staticmethod
    def _recent_interactions(history: list[int], n: int) -> list[int]:
        """Rows of the user's ``n`` latest interactions, most recent first: consecutive events on one item
        count once, as in the item-kNN's training (``model/baselines.py``)."""
        runs = [row for i, row in enumerate(history) if i + 1 == len(history) or history[i + 1] != row]
        return runs[::-1][:n]

    @staticmethod
    def _excluded(trigger: _Trigger) -> dict[str, None]:
        """Items this user must not be shown: purchases and the item just interacted with."""
        return {**trigger.state.bought, trigger.event.item_id: None}

    @contextmanager
    def _stage(self, name: str, timings: dict[str, float]) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
