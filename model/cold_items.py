"""The cold-start item protocol: where new items land for the shoppers who pick them, before any retraining.

A seeded share of the catalogue is held out entirely: every event on those items is removed before training
(``streamrec train --hold-out-items SHARE``), so the model has never seen them, as with items listed after the last
training. Evaluation then reads the whole log and stops at every interaction whose item is a held-out one (the new
items' events): given the user's history before it, where does the served score put that item?

The served score is the worker's: the sequence ranker's state of the user's trained items (the ranker reads no
other), times an item's row, plus the blend weight times the item-kNN score, which is 0 for an item the model never
saw. Only the new items' rows differ between the placements compared:

* ``content``: the row the worker gives a new item, the artifact's content projection of its catalogue text
  (``model/content.py``); an item without a catalogue record or text gets no row and is never recommended;
* ``random``: a seeded random direction at the median item norm, the floor any placement must beat;
* ``content+shoppers``: the content row moved toward the row the shoppers who interacted with the item before that
  moment say (``model/shoppers.py``: a map from their mean ranker state, fitted at training on the trained items),
  weighted ``count : prior``: what a worker learns of a new item from its first events, without a retrain. The
  states are the users' before each interaction; rows are refreshed once per batch of targets in time order (a
  worker re-embeds in batches too), from interactions strictly earlier than the batch's first. Only for versions
  that hold the map (trained with a catalogue);
* ``popularity``: no row at all, the new items ranked by how many interactions they had before that moment (what
  the stream's trending counts know), so it ranks among the new items only. On logs whose times carry no meaning
  across users (the Amazon files number each user's purchases by day), "before" is by place in the sequence.

Ranks are taken among the new items (which new item will this shopper pick?) and in the whole catalogue, trained and
new items together (does it reach the shopper's list?), history items excluded but never the target, ties broken at
random. Targets whose user has no event on a trained item before them are counted but not ranked: the worker serves
such a user trending items, not a model score. Users with fewer than 3 interactions are left out, as everywhere in
the evaluation (``model/splits.py``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.baselines import Histories, blend_scores
from streamrec.model.config import DEFAULT_OPTIMISM, DEFAULT_SHOPPER_PRIOR
from streamrec.model.content import item_text, load_encoder
from streamrec.model.evaluate import RankerScorer
from streamrec.model.event_log import EventLog
from streamrec.model.metrics import summarize, target_ranks
from streamrec.model.shoppers import ShopperProjection, learned_rows
from streamrec.model.splits import LeaveOneOutSplit, leave_one_out

BATCH_TARGETS = 512


@dataclass(frozen=True)
class HeldOutItems:
    """The items a cold-start run keeps out of training: a seeded share of the log's distinct items."""

    share: float
    seed: int
    items: tuple[str, ...]  # sorted

    @classmethod
    def choose(cls, log: EventLog, share: float, seed: int) -> HeldOutItems:
        """``round(share · items)`` of ``log``'s distinct items (at least one), drawn with ``seed``."""
        if not 0 < share < 1:
            raise ValueError(f"the held-out share must lie strictly between 0 and 1, got {share!r}")
        distinct = np.unique(np.asarray(log.item_ids, dtype=str))
        count = min(len(distinct) - 1, max(1, round(share * len(distinct))))
        if count < 1:
            raise ValueError("the log needs at least two distinct items to hold one out")
        chosen = np.random.default_rng([seed, 17]).choice(len(distinct), count, replace=False)
        return cls(share, seed, tuple(sorted(distinct[chosen].tolist())))

    def remove_from(self, log: EventLog) -> EventLog:
        """``log`` without any event on a held-out item."""
        keep = ~np.isin(np.asarray(log.item_ids, dtype=str), np.asarray(self.items, dtype=str))
        return EventLog(log.user_ids[keep], log.item_ids[keep], log.event_types[keep], log.timestamps[keep], log.name)

    @property
    def fingerprint(self) -> str:
        """A SHA-256 of the held-out ids: ties a model to the items it was kept from."""
        return hashlib.sha256("\x1f".join(self.items).encode()).hexdigest()

    def manifest(self) -> dict[str, Any]:
        """What a model's manifest records of the hold-out, enough for evaluation to draw the same items again."""
        return {"share": self.share, "seed": self.seed, "count": len(self.items), "fingerprint": self.fingerprint}

    @classmethod
    def recorded(cls, log: EventLog, record: Mapping[str, Any]) -> HeldOutItems:
        """The held-out items a manifest's ``record`` describes, drawn again from ``log``; ValueError when ``log``
        is not the log the model was trained from (another draw)."""
        held = cls.choose(log, float(record["share"]), int(record["seed"]))
        if held.fingerprint != record.get("fingerprint"):
            raise ValueError(
                "the held-out items drawn from this log differ from the ones the model was trained without; "
                "evaluate on the log it was trained from"
            )
        return held


@dataclass(frozen=True)
class ColdTargets:
    """Every interaction on a new item that can be ranked, and the histories before it."""

    split: LeaveOneOutSplit  # the whole log; rows from n_trained on are the new items
    trained_view: LeaveOneOutSplit  # the same users' events on trained items only: what the ranker reads
    positions: np.ndarray  # int64 [T]: event position (in ``split``) of each target
    trained_ends: np.ndarray  # int64 [T]: exclusive end of the target's history in ``trained_view``
    n_trained: int
    n_new: int  # new items ranked among (every held-out item in the log, whether or not a kept user touched it)
    without_trained_history: int  # targets left out: no event on a trained item before them

    @property
    def users(self) -> np.ndarray:
        return self.split.user_of[self.positions]

    @functools.cached_property
    def new_item_timeline(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, new-item index) of every interaction on a new item, in time order."""
        split = self.split
        opens = np.flatnonzero(split.interaction_starts() & (split.items >= self.n_trained))
        order = np.argsort(split.timestamps[opens], kind="stable")
        return split.timestamps[opens][order], split.items[opens][order] - self.n_trained

    def histories(self, batch: np.ndarray) -> Histories:
        """The trained-item histories of targets ``batch`` (indexes into :attr:`positions`)."""
        users = self.users[batch]
        return Histories(self.trained_view, self.trained_view.offsets[users], self.trained_ends[batch])

    def excluded(self, batch: np.ndarray) -> list[np.ndarray]:
        """Each target's history items (all rows), what a full ranking leaves out; never the target itself."""
        split = self.split
        users, positions = self.users[batch], self.positions[batch]
        return [np.unique(split.items[split.offsets[u] : p]) for u, p in zip(users, positions, strict=True)]


def cold_targets(log: EventLog, trained_row_of: Mapping[str, int], new_items: Sequence[str]) -> ColdTargets:
    """The rankable interactions on ``new_items`` in ``log``: the first event of each run of events on a new item
    with at least one earlier event of the user on a trained item."""
    n_trained = len(trained_row_of)
    new_row_of = {item: n_trained + k for k, item in enumerate(new_items)}
    split = leave_one_out(log, {**trained_row_of, **new_row_of})
    user_of = split.user_of
    trained = split.items < n_trained
    trained_before = np.cumsum(trained) - trained  # trained events before each position, over all users
    first_of_user = split.offsets[:-1]
    trained_before_user = trained_before - trained_before[first_of_user][user_of]
    opens = split.interaction_starts() & ~trained
    positions = np.flatnonzero(opens & (trained_before_user > 0))
    kept = np.flatnonzero(trained)
    view_offsets = np.searchsorted(kept, split.offsets).astype(np.int64)
    trained_view = LeaveOneOutSplit(
        users=split.users,
        offsets=view_offsets,
        items=split.items[kept],
        event_types=split.event_types[kept],
        timestamps=split.timestamps[kept],
        # A view for scoring histories: it holds no training or evaluation targets of its own.
        next_item=np.full(len(kept), -1, dtype=np.int64),
        next_start=np.repeat(view_offsets[1:], np.diff(view_offsets)),
        valid_start=view_offsets[1:].copy(),
        test_start=view_offsets[1:].copy(),
    )
    return ColdTargets(
        split=split,
        trained_view=trained_view,
        positions=positions.astype(np.int64),
        trained_ends=np.searchsorted(kept, positions).astype(np.int64),
        n_trained=n_trained,
        n_new=len(new_items),
        without_trained_history=int(np.count_nonzero(opens)) - len(positions),
    )


def random_rows(n: int, reference: np.ndarray, seed: int) -> np.ndarray:
    """``n`` seeded random directions at the median norm of ``reference``'s rows: a placement that knows nothing."""
    rows = np.random.default_rng([seed, 23]).standard_normal((n, reference.shape[1])).astype(np.float32)
    norm = float(np.median(np.linalg.norm(reference, axis=1)))
    return rows * (norm / np.linalg.norm(rows, axis=1, keepdims=True).clip(min=1e-12))


def popularity_before(targets: ColdTargets, batch: np.ndarray) -> np.ndarray:
    """float32 ``[len(batch), new items]``: each new item's interactions before each target's moment."""
    times, items = targets.new_item_timeline
    ends = np.searchsorted(times, targets.split.timestamps[targets.positions[batch]], side="left")
    counts = np.zeros((len(batch), targets.n_new), dtype=np.float32)
    for row, end in enumerate(ends):
        counts[row] = np.bincount(items[:end], minlength=targets.n_new)
    return counts


def evaluate_cold_items(
    log: EventLog,
    artifacts: ModelArtifacts,
    held: HeldOutItems,
    content_rows: np.ndarray | None,
    seed: int = 0,
    batch_targets: int = BATCH_TARGETS,
    shopper_prior: float = DEFAULT_SHOPPER_PRIOR,
    optimism: float = DEFAULT_OPTIMISM,
) -> dict[str, Any]:
    """The protocol's report for ``artifacts`` trained without ``held`` (see the module docstring); targets are
    ranked ``batch_targets`` at a time, in time order, and the shoppers' rows refreshed between batches, served
    with ``optimism`` (:meth:`ShopperProjection.with_optimism`) as a worker's ``new_item_optimism`` serves them.

    ``content_rows``: float32 ``[len(held.items), dim]``, the row the worker gives each held-out item from its
    catalogue text (all-zero: none); None when the model has no content projection or there is no catalogue.
    """
    leaked = [item for item in held.items if item in artifacts.row_of]
    if leaked:
        raise ValueError(
            f"the model was trained on {len(leaked)} of the {len(held.items)} held-out items (e.g. {leaked[0]!r}); "
            "train it on the log without them"
        )
    in_log = set(np.asarray(log.item_ids, dtype=str).tolist())
    new_items = [item for item in held.items if item in in_log]
    targets = cold_targets(log, artifacts.row_of, new_items)
    n_trained, n_new = len(artifacts.item_ids), len(new_items)
    placements: dict[str, np.ndarray] = {"random": random_rows(n_new, artifacts.item_embeddings, seed)}
    with_content = 0
    if content_rows is not None:
        rows = np.asarray(content_rows, dtype=np.float32)[[held.items.index(item) for item in new_items]]
        placements["content"] = rows
        with_content = int(np.count_nonzero(np.any(rows != 0, axis=1)))
    learned = "content+shoppers" if "content" in placements else "shoppers"
    learning = [learned] if artifacts.shoppers is not None else []
    ranks: dict[str, dict[str, list[np.ndarray]]] = {
        **{name: {"among_new": [], "catalogue": []} for name in [*placements, *learning]},
        "popularity": {"among_new": []},
    }
    tie_rng = np.random.default_rng([seed, 2])
    ranker = RankerScorer(artifacts.ranker, artifacts.ranker.config.max_len)
    shoppers = None
    if artifacts.shoppers is not None:
        projection = artifacts.shoppers.with_optimism(optimism)
        shoppers = _Shoppers(placements.get("content"), n_new, projection, shopper_prior)
    times = targets.split.timestamps[targets.positions]
    in_time_order = np.argsort(times, kind="stable")
    for begin in range(0, len(targets.positions), batch_targets):
        batch = in_time_order[begin : begin + batch_targets]
        histories = targets.histories(batch)
        states = ranker.user_states(histories)
        trained_scores = states @ artifacts.item_embeddings.T
        if artifacts.blend_weight > 0 and artifacts.item_knn is not None:
            trained_scores = blend_scores(
                trained_scores, artifacts.item_knn.score_users(histories), artifacts.blend_weight
            )
        wanted = targets.split.items[targets.positions[batch]]
        excluded = targets.excluded(batch)
        excluded_new = [e[e >= n_trained] - n_trained for e in excluded]
        moving = {learned: shoppers.rows_before(times[batch[0]])} if shoppers is not None else {}
        for name, rows in {**placements, **moving}.items():
            new_scores = states @ rows.T
            # An item without a row is never recommended: below every other item, and a miss as the target.
            placed = np.any(rows != 0, axis=1)
            new_scores[:, ~placed] = -np.inf
            missed = ~placed[wanted - n_trained]
            among_new = target_ranks(new_scores, wanted - n_trained, excluded_new, tie_rng)
            ranks[name]["among_new"].append(np.where(missed, n_new, among_new))
            catalogue = target_ranks(np.concatenate([trained_scores, new_scores], axis=1), wanted, excluded, tie_rng)
            ranks[name]["catalogue"].append(np.where(missed, n_trained + n_new, catalogue))
        if shoppers is not None:
            shoppers.seen(times[batch], wanted - n_trained, states)
        popular = popularity_before(targets, batch)
        ranks["popularity"]["among_new"].append(target_ranks(popular, wanted - n_trained, excluded_new, tie_rng))
    return {
        "held_out": held.manifest(),
        "new_items_in_log": n_new,
        "new_items_with_content": with_content if content_rows is not None else None,
        "targets": len(targets.positions),
        "targets_without_trained_history": targets.without_trained_history,
        "shopper_prior": shopper_prior,
        "optimism": optimism,
        "results": {
            name: {scope: summarize(np.concatenate(parts)) if parts else None for scope, parts in by.items()}
            for name, by in ranks.items()
        },
    }


class _Shoppers:
    """The states of the shoppers of each new item seen so far, folded into rows only for later moments."""

    def __init__(self, content: np.ndarray | None, n_new: int, projection: ShopperProjection, prior: float) -> None:
        self.content = content if content is not None else np.zeros((n_new, projection.dim), dtype=np.float32)
        self.projection, self.prior = projection, prior
        self.sums = np.zeros((n_new, projection.dim), dtype=np.float64)
        self.counts = np.zeros(n_new, dtype=np.float64)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def seen(self, times: np.ndarray, items: np.ndarray, states: np.ndarray) -> None:
        """Interactions on new items ``items`` at ``times`` by users in ``states``."""
        self._pending.append((times, items, states))

    def rows_before(self, moment: float) -> np.ndarray:
        """Every new item's row from the interactions strictly before ``moment`` (``model/shoppers.py``)."""
        waiting = []
        for times, items, states in self._pending:
            earlier = times < moment
            np.add.at(self.sums, items[earlier], states[earlier])
            self.counts += np.bincount(items[earlier], minlength=len(self.counts))
            if not earlier.all():
                waiting.append((times[~earlier], items[~earlier], states[~earlier]))
        self._pending = waiting
        shoppers = self.projection.project(self.sums, self.counts)
        return learned_rows(self.content, shoppers, self.counts, self.prior)


def content_rows(
    items: Sequence[str], artifacts: ModelArtifacts, catalog: Sequence[Mapping[str, Any]] | None
) -> np.ndarray | None:
    """float32 ``[len(items), dim]``: the row the worker gives each item from its ``catalog`` record (the
    artifact's text encoder and content projection), all-zero for an item the catalogue does not describe; None
    without a catalogue or a content projection."""
    if artifacts.content is None or not catalog:
        return None
    records = {str(record.get("item_id")): record for record in catalog}
    described = [k for k, item in enumerate(items) if item in records]
    rows = np.zeros((len(items), artifacts.dim), dtype=np.float32)
    if described:
        encoder = load_encoder(artifacts.content.encoder_name)
        described_records = [records[items[k]] for k in described]
        texts = encoder.encode([item_text(record) for record in described_records])
        rows[described] = artifacts.content.served_rows(texts, described_records)
    return rows


def format_cold_items(report: Mapping[str, Any]) -> str:
    """The protocol's results as a plain-text table: one row per placement and scope."""
    lines = [
        f"cold-start items: {report['new_items_in_log']} held-out items ({report['held_out']['share']:.0%} of the "
        f"catalogue), {report['targets']} interactions ranked, {report['targets_without_trained_history']} without "
        "a trained item before them (left out)",
        f"{'placement':<18}{'ranked among':<14}{'HR@10':>8}{'NDCG@10':>9}{'HR@20':>8}",
    ]
    for name, scopes in report["results"].items():
        for scope, metrics in scopes.items():
            if metrics is not None:
                row = f"{name:<18}{scope.replace('_', ' '):<14}{metrics['HR@10']:>8.4f}{metrics['NDCG@10']:>9.4f}"
                lines.append(row + f"{metrics['HR@20']:>8.4f}")
    return "\n".join(lines)
