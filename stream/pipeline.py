"""The path of every event: decode → validate → update user state → retrieve → rank → filter/diversify → publish.

:class:`Pipeline` orchestrates; each step lives in a module named after it: ``decode.py``, ``validate.py``,
``update_state.py``, the candidate sources of ``sources.py``, the ranker of ``rank.py``, the list builder of
``select.py`` and the message of ``publish.py``; the typed results are in ``results.py``, and the live catalog
reaches the model through ``catalog_sync.py``, between batches. It knows nothing of Kafka: a runtime
(``stream/runtime``) feeds it micro-batches of raw records and sends the messages it returns; tests call
:meth:`Pipeline.process` directly. Per batch there is one ANN search and one ranker forward, whatever the number of
users in it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from streamrec.index.covisitation import CoVisitation
from streamrec.model.events import Event
from streamrec.stream.catalog import CatalogItem
from streamrec.stream.catalog_sync import CatalogSync
from streamrec.stream.decode import decode
from streamrec.stream.events import Command, SourceRecord
from streamrec.stream.explain import Explainer
from streamrec.stream.explore import Explorer
from streamrec.stream.item_table import ItemTable
from streamrec.stream.metrics import NullMetrics, WorkerMetrics
from streamrec.stream.publish import recommendation_message
from streamrec.stream.rank import BlendedRanker, CandidateRanker, RankedCandidates, SequenceRankerScores
from streamrec.stream.rejection import InvalidEvent
from streamrec.stream.results import BatchResult, OutgoingMessage, PublishedRecommendation, dead_letter
from streamrec.stream.rules import (
    DenyList,
    ExcludeBought,
    ExcludeCurrentItem,
    ExcludeIgnored,
    ExcludeUnavailable,
    Request,
    RuleSet,
)
from streamrec.stream.select import ListBuilder
from streamrec.stream.settings import Settings
from streamrec.stream.sources import AnnSource, CandidateSource, CoVisitationSource, ItemKnnSource, UserQuery, merge
from streamrec.stream.trending import TrendingBoard
from streamrec.stream.update_state import StateUpdater, Trigger
from streamrec.stream.user_state import InterestModel, UserState, UserStateStore, encode_state
from streamrec.stream.validate import ValidationRules, validate, validate_command

if TYPE_CHECKING:
    from streamrec.model.artifacts import ModelArtifacts

log = logging.getLogger(__name__)

NOTHING_RANKED = RankedCandidates()  # a user the personalised sources had nothing for (or did not reach)


class Pipeline:
    """Turns batches of raw input records into recommendations, dead letters and state updates."""

    def __init__(self, settings: Settings, artifacts: ModelArtifacts, metrics: WorkerMetrics | None = None):
        self.settings = settings
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.validation_rules = ValidationRules(
            max_id_length=settings.max_id_length,
            min_event_ts=settings.min_event_ts,
            max_clock_skew_s=settings.max_clock_skew_s,
            reject_key_mismatch=settings.reject_key_mismatch,
        )
        self.store = UserStateStore()
        #: Called with (user id, {source: candidate rows}) for every personalized user; evaluation uses it to
        #: measure how often each candidate source reaches the test target. None on the hot path.
        self.candidate_observer: Callable[[str, dict[str, np.ndarray]], None] | None = None
        # The catalog, trending and exposure come from the stream, so they outlive a model swap.
        self.catalog_sync = CatalogSync(self.metrics)
        self.catalog = self.catalog_sync.catalog
        self.trending = TrendingBoard(settings.trending_half_life_s)
        self.explorer = Explorer(settings.exploration_share, settings.exploration_max_impressions, settings.random_seed)
        self.rules = RuleSet(self._rules(settings))
        self.metrics.segment_label_limit = settings.segment_label_limit
        self.use_model(artifacts)

    def _rules(self, settings: Settings) -> list:
        rules: list = [ExcludeBought(), ExcludeCurrentItem(), ExcludeUnavailable(self.catalog)]
        if settings.deny_items or settings.tenant_deny_items:
            rules.append(DenyList(settings.deny_items, settings.tenant_deny_items))
        if settings.max_impressions_without_engagement:
            rules.append(ExcludeIgnored(settings.max_impressions_without_engagement))
        return rules

    # --- model --------------------------------------------------------------------------------------------
    def use_model(self, artifacts: ModelArtifacts) -> None:
        """Serve ``artifacts`` from the next batch on. User vectors are rebuilt lazily on their next event.

        Catalog items the new model was not trained on are embedded from their content again, so items added
        live stay recommendable across a swap.
        """
        self.artifacts = artifacts
        self.items = ItemTable(artifacts, self.settings.max_live_items)
        self.items.index.set_search_params(self.settings.hnsw_ef_search, self.settings.ivf_nprobe)
        self.interest = InterestModel(
            embeddings=self.items.embeddings,
            row_of=self.items.row_of,
            event_weights=dict(self.settings.event_weights),
            half_life_s=self.settings.interest_half_life_s,
            max_recent_items=self.settings.max_recent_items,
            max_bought_items=self.settings.max_bought_items,
            model_version=artifacts.version,
        )
        # Co-visitation is counted in the model's rows, so a new model starts it afresh from the stream.
        self.covisitation = CoVisitation(len(artifacts.item_ids), window=self.settings.covisitation_window)
        self.explainer = Explainer(self.items, self._co_occurrence, self.catalog.title_of)
        self.sources = self._sources(artifacts)
        self.ranker = self._ranker(artifacts)
        self.lists = ListBuilder(
            self.settings, self.rules, self.explorer, self.trending, self.items, self.explainer, self.category_of
        )
        self.updater = StateUpdater(
            self.store,
            self.interest,
            self.covisitation if self.settings.covisitation_candidates else None,
            artifacts.segments,
            self.explorer.exposure,
            self.trending,
            self.category_of,
            self.settings.event_weights,
        )
        self.catalog_sync.use_model(artifacts, self.items)
        if len(self.catalog):
            self.apply_catalog(list(self.catalog), self.text_vectors(list(self.catalog)), replay=True)
        self.metrics.model_info.info({"version": artifacts.version})
        self._record_index_metrics()

    def _sources(self, artifacts: ModelArtifacts) -> list[CandidateSource]:
        """The candidate sources the settings and the model ask for, the ANN first (it leads the merge)."""
        settings = self.settings
        sources: list[CandidateSource] = [AnnSource(self.items, settings.n_candidates)]
        if settings.covisitation_candidates:
            sources.append(CoVisitationSource(self.covisitation, settings.covisitation_candidates))
        if artifacts.item_knn is not None and artifacts.blend_weight > 0 and settings.item_knn_candidates:
            sources.append(ItemKnnSource(artifacts.item_knn, settings.item_knn_candidates))
        return sources

    def _ranker(self, artifacts: ModelArtifacts) -> CandidateRanker:
        ranker: CandidateRanker = SequenceRankerScores(artifacts.ranker, self.items, artifacts.ranker.config.max_len)
        if artifacts.item_knn is not None and artifacts.blend_weight > 0:
            ranker = BlendedRanker(ranker, artifacts.item_knn, artifacts.blend_weight, self.items)
        return ranker

    # --- live catalog (called by runtimes between batches) ---------------------------------------------------
    def text_vectors(self, items: Sequence[CatalogItem]) -> dict[str, np.ndarray]:
        """Text embeddings :meth:`apply_catalog` will need; slow, so runtimes call it outside the batch lock."""
        return self.catalog_sync.text_vectors(items)

    def apply_catalog(
        self, items: Sequence[CatalogItem], text_vectors: dict[str, np.ndarray], *, replay: bool = False
    ) -> dict[str, int]:
        """Apply catalog records (see :meth:`CatalogSync.apply`); returns the count of each kind of change."""
        counts, grown = self.catalog_sync.apply(items, text_vectors, replay=replay)
        if grown:
            self.interest = self.updater.interest = replace(self.interest, embeddings=self.items.embeddings)
            self.covisitation.grow(len(self.items))
        self._record_index_metrics()
        return counts

    def remove_catalog_item(self, item_id: str) -> None:
        """A tombstone on the catalog topic: the item is never recommended again."""
        if self.catalog_sync.remove(item_id):
            self._record_index_metrics()

    def category_of(self, item_id: str) -> str | None:
        """The catalog's category, else the item's cluster."""
        return self.catalog_sync.category_of(item_id)

    def _record_index_metrics(self) -> None:
        self.metrics.index_items.set(len(self.items.index))
        self.metrics.index_unavailable_items.set(self.items.index.n_unavailable)
        self.metrics.live_items.set(self.items.n_live)

    @property
    def _n_segments(self) -> int:
        segments = self.artifacts.segments
        return 0 if segments is None else segments.n_segments

    # --- state restore (called by runtimes on partition assignment) -----------------------------------------
    def restore_state(self, partition: int, states: Sequence[UserState]) -> None:
        """Hold restored users. A vector that cannot be this model's (wrong length) is rebuilt from the user's
        recent items on their next event rather than trusted."""
        dim = self.items.embeddings.shape[1]
        for state in states:
            if state.vector is not None and state.vector.shape != (dim,):
                state.vector, state.model_version = None, None
            self.store.put(partition, state)
        self.metrics.users_restored.inc(len(states))
        self.metrics.users_in_state.set(len(self.store))

    def drop_partitions(self, partitions: Sequence[int]) -> None:
        """Forget the users of revoked partitions (their new owner restores them from the changelog)."""
        for partition in partitions:
            self.store.drop_partition(partition)
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
        accepted: list[tuple[SourceRecord, Event | Command]] = []
        with self._stage("decode", timings):
            decoded = [self._decode(record, dead_letters) for record in records]
        with self._stage("validate", timings):
            for record, payload in zip(records, decoded, strict=True):
                if payload is not None:
                    event = self._validate(record, payload, now, dead_letters)
                    if event is not None:
                        accepted.append((record, event))

        with self._stage("state", timings):
            triggers, forgotten = self.updater.apply(accepted, now)

        recommendations, published = self._recommend(list(triggers.values()), timings)
        with self._stage("state", timings):
            # After the recommendations: the state records what was just shown to each user.
            state_updates = [
                OutgoingMessage(
                    self.settings.state_topic,
                    user_id.encode(),
                    encode_state(trigger.state),
                    partition=trigger.partition,
                )
                for user_id, trigger in triggers.items()
            ]
            # A forgotten user's tombstones, unless events after the `forget` already started a new state: its
            # record supersedes the old ones just as well, and one message per key keeps retries order-free.
            for user_id, partition in forgotten.items():
                if user_id not in triggers:
                    state_updates.append(OutgoingMessage(self.settings.state_topic, user_id.encode(), None, partition))
                    recommendations.append(OutgoingMessage(self.settings.recommendations_topic, user_id.encode(), None))
        self.metrics.messages_consumed.inc(len(records))
        self.metrics.batch_events.observe(len(records))
        self.metrics.users_in_state.set(len(self.store))
        for stage, seconds in timings.items():
            self.metrics.stage_seconds.labels(stage).observe(seconds)
        if forgotten:
            self.metrics.users_forgotten.inc(len(forgotten))
        return BatchResult(
            recommendations, dead_letters, state_updates, published, next_offsets, timings, list(forgotten)
        )

    def _decode(self, record: SourceRecord, dead_letters: list[OutgoingMessage]) -> dict | None:
        try:
            return decode(record.value, self.settings.max_payload_bytes)
        except InvalidEvent as rejection:
            dead_letters.append(self._dead_letter(record, rejection))
            return None

    def _validate(
        self, record: SourceRecord, payload: dict, now: float, dead_letters: list[OutgoingMessage]
    ) -> Event | Command | None:
        try:
            if "command" in payload:
                return validate_command(payload, record.key, self.validation_rules)
            event = validate(payload, record.key, self.validation_rules, now)
        except InvalidEvent as rejection:
            dead_letters.append(self._dead_letter(record, rejection))
            return None
        self.metrics.events_consumed.labels(event.event_type.value).inc()
        return event

    def _dead_letter(self, record: SourceRecord, rejection: InvalidEvent) -> OutgoingMessage:
        self.metrics.events_invalid.labels(rejection.reason).inc()
        return dead_letter(record, rejection, self.settings.dead_letter_topic, self.settings.dead_letter_max_bytes)

    def _recommend(
        self, triggers: list[Trigger], timings: dict[str, float]
    ) -> tuple[list[OutgoingMessage], list[PublishedRecommendation]]:
        settings = self.settings
        requests = {t.event.user_id: Request.of(t.state, t.event) for t in triggers}
        warm = [t for t in triggers if not t.state.is_cold]
        ranked: dict[str, RankedCandidates] = {}
        known_events: dict[str, int] = {}
        if warm:
            try:
                ranked, known_events = self._personalized(warm, requests, timings)
            except Exception:  # degrade to trending rather than lose the batch
                log.exception("retrieval or ranking failed; serving trending items for %d users", len(warm))
                self.metrics.pipeline_errors.labels("rank").inc()

        with self._stage("filter", timings):
            self.lists.start_batch()
            chosen = {
                t.event.user_id: self.lists.build(
                    t.state,
                    t.segment,
                    requests[t.event.user_id],
                    ranked.get(t.event.user_id, NOTHING_RANKED),
                    known_events.get(t.event.user_id, 0),
                )
                for t in triggers
            }
            for rule, count in self.rules.take_counts().items():
                self.metrics.items_filtered.labels(rule).inc(count)

        with self._stage("publish", timings):
            generated_at = time.time()
            messages, published = [], []
            version = self.artifacts.version
            for t in triggers:
                user_id = t.event.user_id
                items = chosen[user_id]
                value = recommendation_message(user_id, items, version, t.event, generated_at, t.segment)
                messages.append(OutgoingMessage(settings.recommendations_topic, user_id.encode(), value))
                kind = "personalized" if user_id in ranked else "trending"
                published.append(PublishedRecommendation(kind, t.event.ts, t.received_at))
                t.state.record_shown([item.item_id for item in items])
                for item in items:
                    self.explorer.exposure.shown(item.item_id)
            self.metrics.observe_lists(
                [chosen[t.event.user_id] for t in triggers], [t.segment for t in triggers], self._n_segments
            )
        return messages, published

    def _personalized(
        self, warm: list[Trigger], requests: dict[str, Request], timings: dict[str, float]
    ) -> tuple[dict[str, RankedCandidates], dict[str, int]]:
        """Each warm user's candidates from every source, merged and ranked; also how many of the user's events
        the model knows."""
        n_trained = self.items.n_trained
        with self._stage("retrieve", timings):
            users = []
            for t in warm:
                # Known-item history, oldest first: read once, used by every source and the ranker, which (like
                # the item-kNN) knows only the trained rows; live items enter them as candidates.
                history = self.interest.history_rows(t.state)
                excluded = self._excluded_rows(requests[t.event.user_id])
                users.append(UserQuery.of(t.state.vector, history, n_trained, excluded))
            proposed = {source.name: source.candidates(users) for source in self.sources}
            if self.candidate_observer is not None:
                for i, t in enumerate(warm):
                    self.candidate_observer(t.event.user_id, {name: rows[i] for name, rows in proposed.items()})
            candidates, origin = merge(proposed)
        with self._stage("rank", timings):
            scores = self.ranker.score(users, candidates)
            source_names, item_ids = list(proposed), self.items.item_ids
            ranked = {
                t.event.user_id: RankedCandidates.by_score(rows, row_scores, codes, source_names, item_ids)
                for t, rows, row_scores, codes in zip(warm, candidates, scores, origin, strict=True)
            }
        known = {t.event.user_id: len(user.history) for t, user in zip(warm, users, strict=True)}
        return ranked, known

    def _excluded_rows(self, request: Request) -> set[int]:
        """Rows retrieval may skip at once: purchases, the current item, and the request's own exclusions."""
        row_of = self.items.row_of
        excluded = [*request.state.bought, request.trigger.item_id, *request.exclude_items]
        return {row for item in excluded if (row := row_of.get(item)) is not None}

    def _co_occurrence(self, anchors: list[int], rows: list[int]) -> np.ndarray:
        """``[anchors, rows]``: how strongly the collaborative sources tie each pair (for explanations)."""
        strength = self.covisitation.strengths(anchors, rows)
        item_knn = self.artifacts.item_knn
        if item_knn is not None:
            strength += item_knn.similarities_between(anchors, rows)
        return strength

    @contextmanager
    def _stage(self, name: str, timings: dict[str, float]) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
