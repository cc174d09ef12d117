"""The path of every event: decode → validate → update user state → retrieve → rank → filter/diversify → publish.

:class:`Pipeline` orchestrates; each step lives in a module named after it: ``decode.py``, ``validate.py``,
``intake.py`` (the first two together), ``update_state.py``, ``retrieve.py`` over the candidate sources of
``sources.py``, the ranker of ``rank.py``, the list builder of ``select.py`` and ``publish.py``; the typed results
are in ``results.py``, and the live catalog reaches the model through ``catalog_sync.py``, between batches. It knows
nothing of Kafka: a runtime (``stream/runtime``) feeds it micro-batches of raw records and sends the messages it
returns; tests call :meth:`Pipeline.process` directly. Per batch there is one ANN search and one ranker forward,
whatever the number of users in it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from streamrec.index.covisitation import CoVisitation
from streamrec.stream.aggregates import AggregateDeltas, apply_deltas
from streamrec.stream.catalog import CatalogItem
from streamrec.stream.catalog_sync import CatalogSync
from streamrec.stream.events import SourceRecord
from streamrec.stream.explain import Explainer, co_occurrence_of
from streamrec.stream.explore import Explorer
from streamrec.stream.filters import ScoredItem
from streamrec.stream.intake import Intake
from streamrec.stream.item_table import ItemTable
from streamrec.stream.metrics import NullMetrics, WorkerMetrics
from streamrec.stream.publish import Publisher
from streamrec.stream.rank import RankedCandidates, rank, served_ranker
from streamrec.stream.results import BatchResult, StageClock
from streamrec.stream.retrieve import CandidateObserver, Retriever
from streamrec.stream.rules import Request, RuleSet
from streamrec.stream.select import ListBuilder
from streamrec.stream.settings import Settings
from streamrec.stream.trending import TrendingBoard
from streamrec.stream.update_state import StateUpdater, Trigger
from streamrec.stream.user_state import InterestModel, UserState, UserStateStore

if TYPE_CHECKING:
    from streamrec.model.artifacts import ModelArtifacts

log = logging.getLogger(__name__)

#: Most idle users one batch evicts: a backlog of idle users (a first start with a TTL) leaves over many batches
#: rather than as one batch of hundreds of thousands of tombstones.
EVICTIONS_PER_BATCH = 5_000

NOTHING_RANKED = RankedCandidates()  # a user the personalised sources had nothing for (or did not reach)


class Pipeline:
    """Turns batches of raw input records into recommendations, dead letters and state updates."""

    def __init__(
        self,
        settings: Settings,
        artifacts: ModelArtifacts,
        metrics: WorkerMetrics | None = None,
        worker_id: str | None = None,
    ):
        """``worker_id``, for a worker that shares its aggregates (``stream/aggregates.py``): each batch then
        also returns a record of what its events added to them."""
        self.settings = settings
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.metrics.segment_label_limit = settings.segment_label_limit
        self.intake = Intake(settings, self.metrics)
        self.store = UserStateStore()
        #: Evaluation sets this to see what each candidate source proposed for every personalised user.
        self.candidate_observer: CandidateObserver | None = None
        # The catalog, trending and exposure come from the stream, so they outlive a model swap.
        self.catalog_sync = CatalogSync(self.metrics)
        self.catalog = self.catalog_sync.catalog
        self.trending = TrendingBoard(settings.trending_half_life_s)
        self.explorer = Explorer(settings.exploration_share, settings.exploration_max_impressions, settings.random_seed)
        self.rules = RuleSet.from_settings(settings, self.catalog)
        self.deltas = AggregateDeltas(worker_id) if worker_id is not None else None
        self.publisher = Publisher(settings, self.explorer.exposure, self.deltas)
        self.use_model(artifacts)

    def use_model(self, artifacts: ModelArtifacts) -> None:
        """Serve ``artifacts`` from the next batch on. User vectors are rebuilt lazily on their next event.

        Catalog items the new model was not trained on are embedded from their content again, so items added
        live stay recommendable across a swap.
        """
        settings = self.settings
        self.artifacts = artifacts
        self.items = ItemTable(artifacts, settings.max_live_items)
        self.items.index.set_search_params(settings.hnsw_ef_search, settings.ivf_nprobe)
        self.interest = InterestModel.from_settings(
            settings, self.items.embeddings, self.items.row_of, artifacts.version
        )
        # Co-visitation is counted in the model's rows, so a new model starts it afresh from the stream.
        self.covisitation = CoVisitation(len(artifacts.item_ids), window=settings.covisitation_window)
        self.retriever = Retriever.for_model(settings, artifacts, self.items, self.covisitation)
        self.ranker = served_ranker(artifacts, self.items)
        explainer = Explainer(
            self.items, co_occurrence_of(self.covisitation, artifacts.item_knn), self.catalog.title_of
        )
        self.lists = ListBuilder(
            settings, self.rules, self.explorer, self.trending, self.items, explainer, self.category_of
        )
        self.updater = StateUpdater(
            self.store,
            self.interest,
            self.covisitation if settings.covisitation_candidates else None,
            artifacts.segments,
            self.explorer.exposure,
            self.trending,
            self.category_of,
            settings.event_weights,
            self.deltas,
        )
        self.catalog_sync.use_model(artifacts, self.items)
        if len(self.catalog):
            self.apply_catalog(list(self.catalog), self.text_vectors(list(self.catalog)), replay=True)
        self.metrics.model_info.info({"version": artifacts.version})
        self._record_index_metrics()

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

    def apply_shared(self, payload: dict) -> int:
        """Apply another worker's aggregate additions (between batches); returns the events they counted."""
        covisitation = self.covisitation if self.settings.covisitation_candidates else None
        counted = apply_deltas(payload, self.trending, covisitation, self.explorer.exposure, self.items.row_of)
        self.metrics.shared_events_applied.inc(counted)
        return counted

    # --- state restore (called by runtimes on partition assignment) -----------------------------------------
    def restore_state(self, partition: int, states: Sequence[UserState]) -> None:
        """Hold restored users. A vector that cannot be this model's (wrong length) is rebuilt from the user's
        recent items on their next event rather than trusted. A state from before idle eviction (no update
        time) counts as updated now."""
        dim = self.items.embeddings.shape[1]
        now = time.time()
        for state in sorted(states, key=lambda state: state.updated_at or now):  # least recently updated first
            if state.vector is not None and state.vector.shape != (dim,):
                state.vector, state.model_version = None, None
            state.updated_at = state.updated_at or now
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
        clock = StageClock()
        next_offsets: dict[int, int] = {}
        for record in records:
            next_offsets[record.partition] = max(next_offsets.get(record.partition, 0), record.offset + 1)

        admitted = self.intake.admit(records, now, clock)
        with clock("state"):
            triggers, forgotten = self.updater.apply(admitted.accepted, now)
            ttl = self.settings.user_idle_ttl_s
            evicted = self.store.evict_idle(now - ttl, EVICTIONS_PER_BATCH) if ttl is not None else {}
        answered = list(triggers.values())
        requests = {t.event.user_id: Request.of(t.state, t.event) for t in answered}
        ranked, known_events = self._rank(answered, requests, clock)
        with clock("filter"):
            chosen = self._choose(answered, requests, ranked, known_events)
        with clock("publish"):
            recommendations, published = self.publisher.recommendations(
                answered, chosen, ranked, self.artifacts.version
            )
            segments = self.artifacts.segments
            n_segments = 0 if segments is None else segments.n_segments
            self.metrics.observe_lists(list(chosen.values()), [t.segment for t in answered], n_segments)
        with clock("state"):
            state_updates, tombstones = self.publisher.state_updates(answered, forgotten, evicted)
            shared = self.deltas.take(self.settings.aggregates_topic) if self.deltas else []
        self.metrics.messages_consumed.inc(len(records))
        self.metrics.batch_events.observe(len(records))
        self.metrics.users_in_state.set(len(self.store))
        for stage, seconds in clock.seconds.items():
            self.metrics.stage_seconds.labels(stage).observe(seconds)
        if forgotten:
            self.metrics.users_forgotten.inc(len(forgotten))
        if evicted:
            self.metrics.users_evicted.inc(len(evicted))
        return BatchResult(
            [*recommendations, *tombstones],
            admitted.dead_letters,
            state_updates,
            published,
            next_offsets,
            clock.seconds,
            list(forgotten),
            shared,
        )

    def _rank(
        self, triggers: list[Trigger], requests: dict[str, Request], clock: StageClock
    ) -> tuple[dict[str, RankedCandidates], dict[str, int]]:
        """Warm users' candidates from every source, merged and ranked (trending only, should either step fail),
        and how many of each user's events the model knows (it sets the user's trending share)."""
        warm = [t for t in triggers if not t.state.is_cold]
        if not warm:
            return {}, {}
        try:
            with clock("retrieve"):
                user_ids = [t.event.user_id for t in warm]
                users = [self.retriever.query(self.interest, requests[user_id]) for user_id in user_ids]
                candidates = self.retriever.retrieve(user_ids, users, self.candidate_observer)
            with clock("rank"):
                ranked = rank(self.ranker, user_ids, users, candidates, self.items.item_ids)
        except Exception:  # degrade to trending rather than lose the batch
            log.exception("retrieval or ranking failed; serving trending items for %d users", len(warm))
            self.metrics.pipeline_errors.labels("rank").inc()
            return {}, {}
        return ranked, {user_id: len(user.history) for user_id, user in zip(user_ids, users, strict=True)}

    def _choose(
        self,
        triggers: list[Trigger],
        requests: dict[str, Request],
        ranked: dict[str, RankedCandidates],
        known_events: dict[str, int],
    ) -> dict[str, list[ScoredItem]]:
        """Each user's final list from their ranked candidates, trending, the rules and exploration."""
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
        return chosen
