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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from streamrec.model.events import Event
from streamrec.stream.aggregates import AggregateDeltas, apply_deltas
from streamrec.stream.catalog import CatalogItem
from streamrec.stream.catalog_sync import CatalogSync, TextVectors
from streamrec.stream.events import Command, SourceRecord
from streamrec.stream.explore import ExposureStats
from streamrec.stream.filters import ScoredItem
from streamrec.stream.intake import Intake
from streamrec.stream.item_table import ItemTable
from streamrec.stream.metrics import NullMetrics, WorkerMetrics
from streamrec.stream.online_eval import OnlineEvaluation
from streamrec.stream.publish import Publisher
from streamrec.stream.rank import RankedCandidates, rank, user_states
from streamrec.stream.results import BatchResult, StageClock
from streamrec.stream.retrieve import CandidateObserver
from streamrec.stream.rules import Request
from streamrec.stream.select import ListRequest
from streamrec.stream.serving import ServedModel, ServedVariant
from streamrec.stream.settings import Settings, variant_settings
from streamrec.stream.sources import UserQuery
from streamrec.stream.trending import TrendingBoard
from streamrec.stream.update_state import StateUpdater, Trigger
from streamrec.stream.user_state import UserState, UserStateStore
from streamrec.stream.variants import VariantAssigner, own_model_dir, variants_of

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
        variant_artifacts: Mapping[str, ModelArtifacts] | None = None,
    ):
        """``artifacts`` is the worker's model, served by every variant without an ``artifacts_dir`` of its own;
        ``variant_artifacts`` holds the models of the others, by variant name. ``worker_id``, for a worker that
        shares its aggregates (``stream/aggregates.py``): each batch then also returns a record of what its events
        added to them."""
        self.settings = settings
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.metrics.segment_label_limit = settings.segment_label_limit
        self.intake = Intake(settings, self.metrics)
        self.store = UserStateStore()
        #: Evaluation sets this to see what each candidate source proposed for every personalised user.
        self.candidate_observer: CandidateObserver | None = None
        # The catalog, trending and exposure come from the stream, so they outlive a model swap and are shared by
        # every variant.
        self.catalog_sync = CatalogSync(self.metrics)
        self.catalog = self.catalog_sync.catalog
        self.trending = TrendingBoard(settings.trending_half_life_s)
        self.exposure = ExposureStats()
        self.deltas = AggregateDeltas(worker_id) if worker_id is not None else None
        window = settings.online_eval_window_s
        self.online = OnlineEvaluation(window) if window is not None else None
        self.publisher = Publisher(settings, self.exposure, self.deltas)
        self.variant_specs = {variant.name: variant for variant in variants_of(settings)}
        self.assigner = VariantAssigner(list(self.variant_specs.values()), settings.variant_salt)
        self.metrics.declare_variants(self.variant_specs)
        self.variants: dict[str, ServedVariant] = {}
        self._models_of: dict[str, ServedModel] = {}  # variant -> model, read live by the state update
        self.updater = StateUpdater(
            self.store,
            self._models_of,
            self.assigner.assign,
            self.exposure,
            self.trending,
            self.category_of,
            settings.event_weights,
            self.deltas,
            self.online,
        )
        variant_artifacts = variant_artifacts or {}
        for name in self.variant_specs:
            self.use_model(variant_artifacts.get(name, artifacts), [name])

    # --- models (loaded at start, swapped by runtimes between batches) ----------------------------------------
    @property
    def default_followers(self) -> list[str]:
        """The variants that serve the worker's own ``artifacts_dir`` (and follow its ``LATEST``)."""
        return [name for name, spec in self.variant_specs.items() if own_model_dir(self.settings, spec) is None]

    def use_model(self, artifacts: ModelArtifacts, variants: Sequence[str] | None = None) -> None:
        """Serve ``artifacts`` to ``variants`` (default: :attr:`default_followers`) from the next batch on.

        User vectors are rebuilt lazily on their next event. Catalog items the new model was not trained on are
        embedded from their content again, so items added live stay recommendable across a swap. Variants that
        serve the same version share one loaded model.
        """
        names = self.default_followers if variants is None else list(variants)
        unknown = [name for name in names if name not in self.variant_specs]
        if unknown:
            raise ValueError(f"no variant named {', '.join(unknown)}")
        model = self._loaded(artifacts)
        fresh = model is None
        if model is None:
            model = ServedModel(self.settings, artifacts)
        for name in names:
            served = variant_settings(self.settings, self.variant_specs[name])
            self.variants[name] = ServedVariant(
                name, served, model, self.catalog, self.trending, self.exposure, self.catalog_sync.category_of
            )
            self._models_of[name] = model
            self.metrics.model_info.labels(name).info({"version": artifacts.version})
        self.catalog_sync.use_models([(m.artifacts, m.items) for m in self.models])
        if fresh and self.catalog_sync.replay(artifacts, model.items):
            model.items_grew()
        self._record_index_metrics()

    def _loaded(self, artifacts: ModelArtifacts) -> ServedModel | None:
        for model in self.models:
            if model.artifacts is artifacts:
                return model
        return None

    @property
    def models(self) -> list[ServedModel]:
        """The distinct models served, the first variant's first."""
        distinct = {id(variant.model): variant.model for variant in self.variants.values()}
        return list(distinct.values())

    @property
    def primary(self) -> ServedVariant:
        """The first variant: what a single-variant worker serves (its model's clusters stand in for
        categories)."""
        return self.variants[next(iter(self.variant_specs))]

    @property
    def artifacts(self) -> ModelArtifacts:
        return self.primary.model.artifacts

    @property
    def items(self) -> ItemTable:
        return self.primary.model.items

    # --- live catalog (called by runtimes between batches) ---------------------------------------------------
    def text_vectors(self, items: Sequence[CatalogItem]) -> TextVectors:
        """Text embeddings :meth:`apply_catalog` will need; slow, so runtimes call it outside the batch lock."""
        return self.catalog_sync.text_vectors(items)

    def apply_catalog(self, items: Sequence[CatalogItem], text_vectors: TextVectors) -> dict[str, int]:
        """Apply catalog records (see :meth:`CatalogSync.apply`); returns the count of each kind of change."""
        counts, grown = self.catalog_sync.apply(items, text_vectors)
        if grown:
            for model in self.models:
                model.items_grew()
        self._record_index_metrics()
        return counts

    def remove_catalog_item(self, item_id: str) -> None:
        """A tombstone on the catalog topic: the item is never recommended again."""
        if self.catalog_sync.remove(item_id):
            self._record_index_metrics()

    def category_of(self, item_id: str) -> str | None:
        """The catalog's category, else the item's cluster in the primary model."""
        return self.catalog_sync.category_of(item_id)

    def _record_index_metrics(self) -> None:
        items = self.items
        self.metrics.index_items.set(len(items.index))
        self.metrics.index_unavailable_items.set(items.index.n_unavailable)
        self.metrics.live_items.set(items.n_live)

    def apply_shared(self, payload: dict) -> int:
        """Apply another worker's aggregate additions (between batches); returns the events they counted."""
        covisitations = [
            (covisitation, model.items.row_of)
            for model in self.models
            if (covisitation := model.counted_covisitation) is not None
        ]
        counted = apply_deltas(payload, self.trending, self.exposure, covisitations)
        self.metrics.shared_events_applied.inc(counted)
        return counted

    # --- state restore (called by runtimes on partition assignment) -----------------------------------------
    def restore_state(self, partition: int, states: Sequence[UserState]) -> None:
        """Hold restored users. A vector that cannot be their variant's model's (wrong length) is rebuilt from
        the user's recent items on their next event rather than trusted. A state from before idle eviction (no
        update time) counts as updated now."""
        now = time.time()
        for state in sorted(states, key=lambda state: state.updated_at or now):  # least recently updated first
            dim = self._models_of[self.assigner.assign(state.user_id)].items.dim
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
            online = self.online.take() if self.online is not None else None
        answered = list(triggers.values())
        learning = self._new_item_events(admitted.accepted, triggers)
        requests = {t.event.user_id: Request.of(t.state, t.event) for t in answered}
        by_variant: dict[str, list[Trigger]] = {}
        for trigger in answered:
            by_variant.setdefault(trigger.variant, []).append(trigger)
        ranked: dict[str, RankedCandidates] = {}
        known_events: dict[str, int] = {}
        for name, group in by_variant.items():
            variant_ranked, variant_known = self._rank(self.variants[name], group, requests, learning, clock)
            ranked.update(variant_ranked)
            known_events.update(variant_known)
        with clock("filter"):
            chosen: dict[str, list[ScoredItem]] = {}
            for name, group in by_variant.items():
                chosen.update(self._choose(self.variants[name], group, requests, ranked, known_events))
        with clock("publish"):
            versions = {name: variant.model.artifacts.version for name, variant in self.variants.items()}
            recommendations, published = self.publisher.recommendations(answered, chosen, ranked, versions)
            self._observe_lists(answered, by_variant, chosen)
        if any(model.new_items.due for model in self.models):
            with clock("learn"):
                try:
                    self._move_new_items()
                except Exception:
                    log.exception("moving live items to their learned rows failed")
                    self.metrics.pipeline_errors.labels("learn").inc()
                    for model in self.models:  # whatever moved is served: the views must follow the tables
                        model.items_grew()
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
            online,
        )

    def _rank(
        self,
        variant: ServedVariant,
        triggers: list[Trigger],
        requests: dict[str, Request],
        learning: Mapping[str, list[str]],
        clock: StageClock,
    ) -> tuple[dict[str, RankedCandidates], dict[str, int]]:
        """A variant's warm users' candidates from every source, merged and ranked (trending only, should either
        step fail), and how many of each user's events the model knows (it sets the user's trending share). The
        users' events on live items (``learning``) teach those items' rows (``new_items.py``)."""
        warm = [t for t in triggers if not t.state.is_cold]
        if not warm:
            return {}, {}
        model = variant.model
        try:
            with clock("retrieve"):
                variant.use_search_params()
                user_ids = [t.event.user_id for t in warm]
                users = [variant.retriever.query(model.interest, requests[user_id]) for user_id in user_ids]
                candidates = variant.retriever.retrieve(user_ids, users, self.candidate_observer)
            with clock("rank"):
                ranked = rank(model.ranker, user_ids, users, candidates)
        except Exception:  # degrade to trending rather than lose the batch
            log.exception("retrieval or ranking failed; serving trending items for %d users", len(warm))
            self.metrics.pipeline_errors.labels("rank").inc()
            return {}, {}
        if learning:
            with clock("learn"):
                try:
                    self._learn_new_items(model, user_ids, users, learning)
                except Exception:  # a new item learns later; the batch's lists go out
                    log.exception("learning live items from %d users failed", len(learning))
                    self.metrics.pipeline_errors.labels("learn").inc()
        return ranked, {user_id: len(user.history) for user_id, user in zip(user_ids, users, strict=True)}

    def _new_item_events(
        self, accepted: Sequence[tuple[SourceRecord, Event | Command]], triggers: Mapping[str, Trigger]
    ) -> dict[str, list[str]]:
        """The live items each answered user's interactions of the batch opened, where their model still learns
        them: a view, click and buy of one item in a row are one shopper, as in the offline protocol."""
        if not any(model.new_items.active for model in self.models):
            return {}  # the common case: nothing to read the batch for
        events: dict[str, list[str]] = {}
        for _, event in accepted:
            if isinstance(event, Event) and event.user_id in triggers:
                events.setdefault(event.user_id, []).append(event.item_id)
        learning: dict[str, list[str]] = {}
        for user_id, items in events.items():
            trigger = triggers[user_id]
            learner = self._models_of[trigger.variant].new_items
            recent = trigger.state.recent  # holds this batch's events last
            previous = recent[-len(items) - 1].item_id if len(recent) > len(items) else None
            for item_id in items:
                if item_id != previous and learner.learns(item_id):
                    learning.setdefault(user_id, []).append(item_id)
                previous = item_id
        return learning

    @staticmethod
    def _learn_new_items(
        model: ServedModel, user_ids: list[str], users: list[UserQuery], learning: Mapping[str, list[str]]
    ) -> None:
        """Teach the live items their shoppers' states, in one ranker forward."""
        picked = [
            (user.trained_history, item_id)
            for user_id, user in zip(user_ids, users, strict=True)
            for item_id in learning.get(user_id, ())
            if user.trained_history
        ]
        if picked:
            states = user_states(model.state_encoder, [history for history, _ in picked], model.max_history)
            model.new_items.observe([item_id for _, item_id in picked], states)

    def _move_new_items(self) -> None:
        """Re-embed the live items whose shoppers reached their next step, once this batch's lists are built (they
        name rows as they were)."""
        moved = 0
        for model in self.models:
            count = model.new_items.refresh()
            if count:
                model.items_grew()
                moved += count
        if moved:
            self.metrics.live_item_moves.inc(moved)
            self._record_index_metrics()

    def _choose(
        self,
        variant: ServedVariant,
        triggers: list[Trigger],
        requests: dict[str, Request],
        ranked: dict[str, RankedCandidates],
        known_events: dict[str, int],
    ) -> dict[str, list[ScoredItem]]:
        """Each user's final list from their ranked candidates, trending, the rules and exploration."""
        users = [t.event.user_id for t in triggers]
        lists = variant.lists.build_batch(
            [
                ListRequest(
                    t.state,
                    t.segment,
                    requests[user_id],
                    ranked.get(user_id, NOTHING_RANKED),
                    known_events.get(user_id, 0),
                )
                for t, user_id in zip(triggers, users, strict=True)
            ]
        )
        chosen = dict(zip(users, lists, strict=True))
        for rule, count in variant.rules.take_counts().items():
            self.metrics.items_filtered.labels(rule).inc(count)
        return chosen

    def _observe_lists(
        self, answered: list[Trigger], by_variant: dict[str, list[Trigger]], chosen: dict[str, list[ScoredItem]]
    ) -> None:
        """The batch's lists in the metrics: explanation kinds, segments, and each variant's coverage and
        diversity."""
        segments = self.primary.model.segments
        n_segments = 0 if segments is None else segments.n_segments
        lists = [chosen[t.event.user_id] for t in answered]
        self.metrics.observe_lists(lists, [t.segment for t in answered], n_segments)
        if isinstance(self.metrics, NullMetrics):
            return
        for name, group in by_variant.items():
            self.variants[name].statistics.observe([chosen[t.event.user_id] for t in group], self.metrics)
