"""The path of every event: decode → validate → update user state → retrieve → rank → filter/diversify → publish.

:class:`Pipeline` knows nothing of Kafka. A runtime (``stream/runtime``) feeds it micro-batches of raw
records and sends the messages it returns; tests call :meth:`Pipeline.process` directly. Per batch there is one
ANN search and one ranker forward, whatever the number of users in it. The live catalog reaches it through
:meth:`Pipeline.apply_catalog`, between batches.

Per user, the filter stage blends the personalised ranking with context trending (``stream/cold_start.py``),
keeps what the business rules allow (``stream/rules.py``, ``stream/filters.py``), diversifies
(``stream/diversify.py``), fills exploration slots (``stream/explore.py``) and explains every item
(``stream/explain.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from streamrec.index.covisitation import CoVisitation
from streamrec.model.events import Event
from streamrec.stream.catalog import Catalog, CatalogChange, CatalogItem
from streamrec.stream.cold_start import blend, personal_weight, trending_candidates
from streamrec.stream.decode import decode
from streamrec.stream.diversify import diversify
from streamrec.stream.events import Command, SourceRecord
from streamrec.stream.explain import Explainer
from streamrec.stream.explore import Explorer
from streamrec.stream.filters import ScoredItem, allowed_pool
from streamrec.stream.item_table import NO_CLUSTER, ItemTable
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.publish import recommendation_message
from streamrec.stream.rank import RankedCandidates, rank_candidates
from streamrec.stream.rejection import InvalidEvent
from streamrec.stream.retrieve import retrieve_candidates
from streamrec.stream.rules import (
    DenyList,
    ExcludeBought,
    ExcludeCurrentItem,
    ExcludeIgnored,
    ExcludeUnavailable,
    Request,
    RuleSet,
)
from streamrec.stream.settings import Settings
from streamrec.stream.trending import TrendingBoard
from streamrec.stream.user_state import InterestModel, UserState, UserStateStore, encode_state
from streamrec.stream.validate import ValidationRules, validate, validate_command

if TYPE_CHECKING:
    from streamrec.model.artifacts import ModelArtifacts
    from streamrec.model.content import TextEncoder

log = logging.getLogger(__name__)

MIN_CONTENT_CONFIDENCE = 0.05
TRENDING_DEPTH_STEP = 32
NOTHING_RANKED = RankedCandidates()  # a user the personalised sources had nothing for (or did not reach)
REASON_HEADER = "streamrec.reason"
DETAIL_HEADER = "streamrec.detail"
SOURCE_HEADER = "streamrec.source"
TRUNCATED_HEADER = "streamrec.truncated"
ORIGINAL_SIZE_HEADER = "streamrec.original_size"
MAX_DEAD_LETTER_KEY_BYTES = 1_024  # keys are user ids (at most max_id_length characters) in every valid message


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
    forgotten: list[str] = field(default_factory=list)  # users erased by a `forget` command in this batch

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
    segment: int | None = None


class Pipeline:
    """Turns batches of raw input records into recommendations, dead letters and state updates."""

    def __init__(self, settings: Settings, artifacts: ModelArtifacts, metrics: WorkerMetrics | None = None):
        self.settings = settings
        self.metrics = metrics
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
        self.catalog = Catalog()
        self.trending = TrendingBoard(settings.trending_half_life_s)
        self.explorer = Explorer(settings.exploration_share, settings.exploration_max_impressions, settings.random_seed)
        self.rules = RuleSet(self._rules(settings))
        if metrics:
            metrics.segment_label_limit = settings.segment_label_limit
        self._text_vectors: dict[str, tuple[tuple, np.ndarray]] = {}  # item -> (content, text vector)
        self._encoder: TextEncoder | None = None
        self._trending_lists: dict[tuple, list[ScoredItem]] = {}
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
        self._encoder = self._content_encoder(artifacts)
        if len(self.catalog):
            self.apply_catalog(list(self.catalog), self.text_vectors(list(self.catalog)), replay=True)
        if self.metrics:
            self.metrics.model_info.info({"version": artifacts.version})
            self._record_index_metrics()

    def _content_encoder(self, artifacts: ModelArtifacts) -> TextEncoder | None:
        if artifacts.content is None:
            return None
        from streamrec.model.content import load_encoder

        if self._encoder is not None and self._encoder.name == artifacts.content.encoder_name:
            return self._encoder
        self._text_vectors.clear()
        return load_encoder(artifacts.content.encoder_name)

    # --- live catalog ---------------------------------------------------------------------------------------
    def text_vectors(self, items: Sequence[CatalogItem]) -> dict[str, np.ndarray]:
        """Text embeddings of the items that :meth:`apply_catalog` will need to index from their content.

        The slow part of a catalog update, so runtimes call it outside the batch lock (it touches no state the
        hot path reads). Items the model was trained on, and items whose content is unchanged since they were
        last embedded, need none.
        """
        from streamrec.model.content import item_text

        encoder = self._encoder
        if encoder is None:
            return {}
        wanted = {
            item.item_id: item for item in items if not self.items.is_trained(item.item_id) and not self._cached(item)
        }
        if not wanted:
            return {}
        vectors = encoder.encode([item_text(item.content()) for item in wanted.values()])
        return dict(zip(wanted, vectors, strict=True))

    def _cached(self, item: CatalogItem) -> bool:
        held = self._text_vectors.get(item.item_id)
        return held is not None and held[0] == _content_key(item)

    def apply_catalog(
        self, items: Sequence[CatalogItem], text_vectors: dict[str, np.ndarray], *, replay: bool = False
    ) -> dict[str, int]:
        """Apply catalog records (oldest first): availability at once, new items indexed from their content.

        ``text_vectors`` comes from :meth:`text_vectors`; an item missing from it is embedded here. ``replay``
        re-indexes the held catalog into a newly loaded model. Returns the count of each kind of change.
        """
        counts: dict[str, int] = {}
        projection = self.artifacts.content
        grown = False
        for item in items:
            change = CatalogChange.NEW if replay else self.catalog.upsert(item)
            counts[change.value] = counts.get(change.value, 0) + 1
            if change is CatalogChange.STALE:
                continue
            if (
                change in (CatalogChange.NEW, CatalogChange.CONTENT)
                and projection is not None
                and not self.items.is_trained(item.item_id)
            ):
                vector = text_vectors.get(item.item_id)
                if vector is None and not self._cached(item):
                    vector = self.text_vectors([item]).get(item.item_id)
                if vector is not None:
                    self._text_vectors[item.item_id] = (_content_key(item), vector)
                cached = self._text_vectors.get(item.item_id)
                if cached is not None and (change is CatalogChange.CONTENT or item.item_id not in self.items.row_of):
                    vector = projection.project(cached[1][None, :])[0] * self._content_confidence
                    row = self.items.add(item.item_id, vector)
                    grown = grown or row is not None
            self.items.set_available(item.item_id, item.available)
        if grown:
            self.interest = replace(self.interest, embeddings=self.items.embeddings)
            self.covisitation.grow(len(self.items))
        if self.metrics:
            for change, count in counts.items():
                self.metrics.catalog_updates.labels(change).inc(count)
            self.metrics.catalog_items.set(len(self.catalog))
            self._record_index_metrics()
        return counts

    @property
    def _content_confidence(self) -> np.float32:
        """How far to trust a content embedding: the projection's held-out cosine to the learned embeddings.

        The expected inner product of a projected vector with the true embedding shrinks with that cosine, so a
        text that predicts little (say a bare category id) gives a short vector: such items rank below established
        ones on inner product and reach shoppers through exploration instead of flooding every list.
        """
        projection = self.artifacts.content
        cosine = None if projection is None else projection.quality.get("holdout_cosine")
        return np.float32(1.0 if cosine is None else min(1.0, max(MIN_CONTENT_CONFIDENCE, cosine)))

    def remove_catalog_item(self, item_id: str) -> None:
        """A tombstone on the catalog topic: the item is never recommended again."""
        if self.catalog.remove(item_id) is CatalogChange.REMOVED:
            self.items.set_available(item_id, False)
            if self.metrics:
                self.metrics.catalog_updates.labels(CatalogChange.REMOVED.value).inc()
                self._record_index_metrics()

    def _record_index_metrics(self) -> None:
        assert self.metrics is not None
        self.metrics.index_items.set(len(self.items.index))
        self.metrics.index_unavailable_items.set(self.items.index.n_unavailable)
        self.metrics.live_items.set(self.items.n_live)

    def category_of(self, item_id: str) -> str | None:
        """The catalog's category, else the item's cluster (a stand-in when the catalog has no categories)."""
        category = self.catalog.category_of(item_id)
        if category is not None:
            return category
        row = self.items.row_of.get(item_id)
        if row is None:
            return None
        cluster = self.items.cluster_of(row)
        return None if cluster == NO_CLUSTER else f"cluster-{cluster}"

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
            triggers, forgotten = self._update_state(accepted, now)

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
        if self.metrics:
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
        if self.metrics:
            self.metrics.events_consumed.labels(event.event_type.value).inc()
        return event

    def _dead_letter(self, record: SourceRecord, rejection: InvalidEvent) -> OutgoingMessage:
        """The rejected message with its reason. A payload over ``dead_letter_max_bytes`` is cut, so that no input
        the broker accepted can make a dead letter too large to deliver and stall its partition."""
        if self.metrics:
            self.metrics.events_invalid.labels(rejection.reason).inc()
        headers = [
            (REASON_HEADER, rejection.reason.encode()),
            (DETAIL_HEADER, rejection.detail.encode("utf-8", "replace")[:1000]),
            (SOURCE_HEADER, f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        key, value = record.key, record.value
        limit = self.settings.dead_letter_max_bytes
        if value is not None and len(value) > limit:
            headers += [(TRUNCATED_HEADER, b"value"), (ORIGINAL_SIZE_HEADER, str(len(value)).encode())]
            value = value[:limit]
        if key is not None and len(key) > MAX_DEAD_LETTER_KEY_BYTES:
            headers.append((TRUNCATED_HEADER, b"key"))
            key = key[:MAX_DEAD_LETTER_KEY_BYTES]
        return OutgoingMessage(self.settings.dead_letter_topic, key, value, headers=headers)

    def _update_state(
        self, accepted: list[tuple[SourceRecord, Event | Command]], now: float
    ) -> tuple[dict[str, _Trigger], dict[str, int]]:
        """Apply the batch's events in order; returns the users to answer and the users a command erased."""
        triggers: dict[str, _Trigger] = {}
        forgotten: dict[str, int] = {}  # user -> partition
        applied: list[Event] = []
        for record, event in accepted:
            if isinstance(event, Command):
                # The only command is `forget`: the user's state goes, and their events earlier in the batch are
                # not answered. Aggregates they fed (trending, co-visitation, exposure) hold no user id.
                self.store.remove(record.partition, event.user_id)
                triggers.pop(event.user_id, None)
                forgotten[event.user_id] = record.partition
                log.info("forgot user %r (request %s)", event.user_id, event.request_id)
                continue
            state = self.store.get(record.partition, event.user_id)
            if state is None:
                state = self.interest.new_state(event.user_id)
                self.store.put(record.partition, state)
            if not state.already_applied(record.partition, record.offset):
                row = self.interest.row_of.get(event.item_id)
                if row is not None and self.settings.covisitation_candidates:
                    self.covisitation.add(self.interest.latest_rows(state, self.covisitation.window), row)
                if state.record_engaged(event.item_id):
                    self.explorer.exposure.engaged(event.item_id)
                self.interest.apply(state, event)
                state.last_partition, state.last_offset = record.partition, record.offset
                state.updated_at = now
                applied.append(event)
            # A user's later events in the batch supersede earlier ones: one recommendation per user per batch.
            triggers.pop(event.user_id, None)
            triggers[event.user_id] = _Trigger(record.partition, event, record.received_at, state)
        self._assign_segments(list(triggers.values()))
        weights = self.settings.event_weights
        for event in applied:
            # Counted in the segment of the user as of the batch's end (one assignment per user and batch).
            self.trending.add(
                event.item_id,
                weights[event.event_type.value],
                event.ts,
                self.category_of(event.item_id),
                triggers[event.user_id].segment if event.user_id in triggers else None,
            )
        return triggers, forgotten

    def _assign_segments(self, triggers: list[_Trigger]) -> None:
        segments = self.artifacts.segments
        warm = [t for t in triggers if t.state.vector is not None]
        if segments is None or not warm:
            return
        assigned = segments.assign_users(np.stack([t.state.vector for t in warm]))
        for trigger, segment in zip(warm, assigned.tolist(), strict=True):
            trigger.segment = segment

    def _recommend(
        self, triggers: list[_Trigger], timings: dict[str, float]
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
                if self.metrics:
                    self.metrics.pipeline_errors.labels("rank").inc()

        with self._stage("filter", timings):
            self._trending_lists = {}  # trending does not move within the stage
            chosen = {
                t.event.user_id: self._choose(
                    t,
                    requests[t.event.user_id],
                    ranked.get(t.event.user_id, NOTHING_RANKED),
                    known_events.get(t.event.user_id, 0),
                )
                for t in triggers
            }
            if self.metrics:
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
            if self.metrics:
                self.metrics.observe_lists(
                    [chosen[t.event.user_id] for t in triggers], [t.segment for t in triggers], self._n_segments
                )
        return messages, published

    def _choose(self, trigger: _Trigger, request: Request, ranked: RankedCandidates, known: int) -> list[ScoredItem]:
        """The final list of one user: blend, rules, diversity and category caps, exploration, explanations."""
        settings = self.settings
        k = settings.top_k
        pool_size = self._pool_size()
        head = pool_size + len(trigger.state.bought) + 1  # enough to fill the pool after the rules
        trending = self._trending_for(tuple(self._recent_categories(trigger.state)), trigger.segment, head)
        weight = personal_weight(known, settings.cold_start_prior_events)
        candidates = blend(ranked.items(0, head), trending, weight)
        pool = allowed_pool(candidates, request, self.rules, pool_size)
        if len(pool) < pool_size and len(candidates) < head + len(trending):
            # Heavy filtering emptied the head: let the rest of the personalised list and the whole shop's
            # trending refill the pool, below what it holds.
            extra = [*ranked.items(head), *(ScoredItem(i, s, "trending") for i, s in self.trending.top(head))]
            pool += self._ranked_after(pool, extra, request, pool_size - len(pool))
        size = min(k, len(pool))
        order = self._diversify(pool, size)
        if len(order) < size and settings.max_per_category:
            # The cap left slots empty: widen the pool with the rest of the ranking and trending once.
            pool += self._ranked_after(pool, [*ranked.items(head), *trending, *candidates], request, 4 * pool_size)
            order = self._diversify(pool, size)
        n_explore = self.explorer.n_slots(len(order))
        exploited = [pool[i] for i in order[: len(order) - n_explore]]
        explored: list[ScoredItem] = []
        if n_explore:
            chosen = {item.item_id for item in exploited}
            unexploited = [item for item in pool if item.item_id not in chosen]
            # New items the retrieval found for this user may rank below the pool: their scores rest on content
            # alone. Exploration considers them wherever they rank.
            held = {item.item_id for item in pool}
            unexploited += allowed_pool(
                (c for c in ranked.from_row(self.items.n_trained) if c.item_id not in held),
                request,
                self.rules,
                pool_size,
            )
            explored = self.explorer.pick(unexploited, n_explore, first=lambda item: item.row >= self.items.n_trained)
            # Slots exploration could not fill go back to the exploited ranking.
            exploited += [pool[i] for i in order[len(order) - n_explore :]][: n_explore - len(explored)]
        final = self.explorer.place(exploited, explored)
        self.explainer.explain(final, trigger.state.recent)
        return final

    def _trending_for(self, categories: tuple[str, ...], segment: int | None, n: int) -> list[ScoredItem]:
        """The context trending list, shared by the batch's users with the same categories and segment."""
        # Lengths are rounded up so users who bought a little more or less share one list; the rounding depends
        # on the user alone, never on who else is in the batch.
        depth = -(-n // TRENDING_DEPTH_STEP) * TRENDING_DEPTH_STEP
        key = (categories, segment, depth)
        held = self._trending_lists.get(key)
        if held is None:
            held = self._trending_lists[key] = trending_candidates(self.trending, categories, segment, depth)
        # Items are handed on to the blend, which copies them; the list itself is never changed.
        return held[:n]

    def _ranked_after(
        self, pool: list[ScoredItem], extra: list[ScoredItem], request: Request, size: int
    ) -> list[ScoredItem]:
        """Up to ``size`` allowed items of ``extra`` not in ``pool``, in their order, scored below the whole pool.

        Refills come from lists on other scales (raw ranker scores, trending counts) than the blended pool: they
        must not jump ahead of it.
        """
        taken = {item.item_id for item in pool}
        added = allowed_pool((c for c in extra if c.item_id not in taken), request, self.rules, size)
        floor = min((item.score for item in pool), default=0.0)
        step = max(abs(floor), 1.0) * 1e-3
        return [replace(item, score=floor - (n + 1) * step) for n, item in enumerate(added)]

    def _pool_size(self) -> int:
        """Allowed candidates that diversity and exploration choose from."""
        return max(3 * self.settings.top_k, 50)

    def _diversify(self, pool: list[ScoredItem], k: int) -> list[int]:
        settings = self.settings
        needs_categories = settings.max_per_category > 0 or settings.diversity_weight > 0
        return diversify(
            np.array([item.score for item in pool]),
            self._unit_vectors(pool) if settings.diversity_weight > 0 else np.zeros((len(pool), 1), np.float32),
            [self.category_of(item.item_id) for item in pool] if needs_categories else [None] * len(pool),
            k,
            settings.diversity_weight,
            settings.max_per_category,
        )

    def _unit_vectors(self, pool: list[ScoredItem]) -> np.ndarray:
        rows = np.array(
            [item.row if item.row >= 0 else self.items.row_of.get(item.item_id, -1) for item in pool], dtype=np.int64
        )
        vectors = self.items.unit_embeddings[np.maximum(rows, 0)]
        vectors[rows < 0] = 0.0  # an item the model does not know is like no other
        return vectors

    def _recent_categories(self, state: UserState, n: int = 3) -> list[str]:
        """Distinct categories of the user's latest items, most recent first."""
        categories: list[str] = []
        for item in reversed(state.recent):
            category = self.category_of(item.item_id)
            if category is not None and category not in categories:
                categories.append(category)
                if len(categories) == n:
                    break
        return categories

    def _personalized(
        self, warm: list[_Trigger], requests: dict[str, Request], timings: dict[str, float]
    ) -> tuple[dict[str, RankedCandidates], dict[str, int]]:
        items = self.items
        n_trained = items.n_trained
        with self._stage("retrieve", timings):
            queries = np.stack([t.state.vector for t in warm]).astype(np.float32, copy=False)
            excluded_rows = [self._excluded_rows(requests[t.event.user_id]) for t in warm]
            # Known-item history of each user, oldest first: read once, used by every source and the ranker.
            histories = [self.interest.history_rows(t.state) for t in warm]
            # The ranker and the item-kNN know only the trained rows; live items enter them as candidates.
            trained_histories = [[row for row in h if row < n_trained] for h in histories]
            candidates = retrieve_candidates(items.index, queries, excluded_rows, self.settings.n_candidates)
            sources: dict[str, list[np.ndarray]] = {"ann": candidates}
            if self.settings.covisitation_candidates:
                sources["covisitation"] = [
                    self._covisited(history, excluded)
                    for history, excluded in zip(histories, excluded_rows, strict=True)
                ]
            item_knn = self.artifacts.item_knn if self.artifacts.blend_weight > 0 else None
            if item_knn is not None:
                recent = [self._recent_interactions(history, item_knn.n_recent) for history in trained_histories]
                if self.settings.item_knn_candidates:
                    n = self.settings.item_knn_candidates
                    sources["item_knn"] = [
                        item_knn.top_neighbors(rows, n, excluded)
                        for rows, excluded in zip(recent, excluded_rows, strict=True)
                    ]
            if self.candidate_observer is not None:
                for i, t in enumerate(warm):
                    self.candidate_observer(t.event.user_id, {name: rows[i] for name, rows in sources.items()})
            origin = [np.zeros(len(rows), dtype=np.int8) for rows in candidates]
            for code, (name, extra) in enumerate(sources.items()):
                if name != "ann":
                    merged = []
                    for i, (rows, more) in enumerate(zip(candidates, extra, strict=True)):
                        new = more[~np.isin(more, rows)]
                        # An item a collaborative source proposed is explained by it, even if the ANN found it too.
                        origin[i][np.isin(rows, more)] = code
                        origin[i] = np.concatenate([origin[i], np.full(len(new), code, dtype=np.int8)])
                        merged.append(np.concatenate([rows, new]))
                    candidates = merged
            source_names = list(sources)
        with self._stage("rank", timings):
            scores = rank_candidates(
                self.artifacts.ranker,
                trained_histories,
                candidates,
                self.artifacts.ranker.config.max_len,
                items.embeddings,
            )
            if item_knn is not None:
                # What training chose and evaluation measures: ranker logits + blend_weight · item-kNN score.
                weight = np.float32(self.artifacts.blend_weight)
                trained_candidates = [np.where(rows < n_trained, rows, 0) for rows in candidates]
                knn_scores = item_knn.score_candidates(recent, trained_candidates)
                scores = [
                    ranker + weight * np.where(rows < n_trained, knn, 0.0).astype(np.float32)
                    for ranker, knn, rows in zip(scores, knn_scores, candidates, strict=True)
                ]
            ranked = {
                t.event.user_id: RankedCandidates.by_score(rows, row_scores, codes, source_names, items.item_ids)
                for t, rows, row_scores, codes in zip(warm, candidates, scores, origin, strict=True)
            }
        known = {t.event.user_id: len(history) for t, history in zip(warm, histories, strict=True)}
        return ranked, known

    def _excluded_rows(self, request: Request) -> set[int]:
        """Rows retrieval may skip at once: purchases, the current item, and the request's own exclusions."""
        row_of = self.items.row_of
        excluded = [*request.state.bought, request.trigger.item_id, *request.exclude_items]
        return {row for item in excluded if (row := row_of.get(item)) is not None}

    def _covisited(self, history: list[int], excluded: set[int]) -> np.ndarray:
        """Co-visitation candidates of the user's latest items, best first (the ranker orders the union)."""
        rows, _ = self.covisitation.candidates(history, self.settings.covisitation_candidates, excluded)
        return rows

    def _co_occurrence(self, anchors: list[int], rows: list[int]) -> np.ndarray:
        """``[anchors, rows]``: how strongly the collaborative sources tie each pair (for explanations)."""
        strength = self.covisitation.strengths(anchors, rows)
        item_knn = self.artifacts.item_knn
        if item_knn is not None:
            strength += item_knn.similarities_between(anchors, rows)
        return strength

    @staticmethod
    def _recent_interactions(history: list[int], n: int) -> list[int]:
        """Rows of the user's ``n`` latest interactions, most recent first: consecutive events on one item
        count once, as in the item-kNN's training (``model/baselines.py``)."""
        runs = [row for i, row in enumerate(history) if i + 1 == len(history) or history[i + 1] != row]
        return runs[::-1][:n]

    @contextmanager
    def _stage(self, name: str, timings: dict[str, float]) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _content_key(item: CatalogItem) -> tuple:
    return (item.title, item.category, item.attributes)
