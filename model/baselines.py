"""Reference recommenders the trained model has to beat, behind the one scoring contract the evaluator uses.

Every model scored by ``model/evaluate.py`` — the trained ranker, its interest-vector retrieval and the
baselines here — implements :class:`Scorer`: ``score_users(histories)`` returns a ``[B, n_items]`` matrix of
scores for a batch of users, so full ranking, sampled ranking and the beyond-accuracy measures treat them alike.

* :class:`PopularityModel` — interaction counts over the training data; the floor any recommender must clear.
* :class:`ItemKNNModel` — recency-weighted item-to-item neighbourhood: cosine-normalised co-occurrence of items
  in users' histories (plus, optionally, directed item-to-next-item transitions), scored from the user's last few
  interactions. On Amazon Beauty this simple method beats every published deep model (``shared/README.md``), which
  makes it the baseline that matters.

Both fit on the part of a :class:`~streamrec.model.splits.LeaveOneOutSplit` that precedes the evaluated stage's target,
the same data the trained model sees as input at that stage.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

import numpy as np

from streamrec.model.event_log import EVENT_TYPE_CODES
from streamrec.model.events import EventType
from streamrec.model.splits import LeaveOneOutSplit, Stage

PAIRS_PER_CHUNK = 1 << 23
"""Item pairs materialised at once while counting co-occurrences (~200 MB of temporaries at most)."""

TRANSITION_STEPS: tuple[tuple[int, float], ...] = ((1, 1.0), (2, 0.5), (3, 0.25))
"""(interactions later, weight) of the item transitions counted: the very next item counts most, the two after it
less, so a shopper who looks at one item between two others still ties them."""


@dataclass(frozen=True)
class Histories:
    """A batch of users' histories: user ``b``'s events are positions ``starts[b]:ends[b]`` of ``split``.

    A view rather than a copy: the evaluator scores thousands of batches and every model reads the same events.
    """

    split: LeaveOneOutSplit
    starts: np.ndarray  # int64 [B]
    ends: np.ndarray  # int64 [B], exclusive

    @classmethod
    def of_users(cls, split: LeaveOneOutSplit, users: slice | np.ndarray, stage: Stage) -> Histories:
        """The histories before ``stage``'s target of the given users (indexes into ``split``'s users)."""
        return cls(split, split.offsets[:-1][users], split.history_end(stage)[users])

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    def positions(self) -> np.ndarray:
        """int64: every history's event positions, batch row after batch row."""
        lengths = self.lengths
        return np.repeat(self.ends - lengths.cumsum(), lengths) + np.arange(lengths.sum())

    def rows(self) -> np.ndarray:
        """int64: the batch row of each entry of :meth:`positions`."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def item_sets(self) -> list[np.ndarray]:
        """The distinct items of each history: what a full-ranking evaluation excludes from the ranking."""
        return [np.unique(self.split.items[a:b]) for a, b in zip(self.starts, self.ends, strict=True)]

    def served_exclusions(self) -> list[np.ndarray]:
        """The items the served pipeline leaves out of each user's list after the history: the bought ones and the
        item of the last event. Other history items compete with the target, as they do in the served lists."""
        bought = EVENT_TYPE_CODES[EventType.BUY.value]
        split = self.split
        return [
            np.unique(np.append(split.items[a:b][split.event_types[a:b] == bought], split.items[b - 1 : b]))
            for a, b in zip(self.starts, self.ends, strict=True)
        ]

    def recent_interactions(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last ``n`` interactions of each history as ``(batch rows, items, steps back)``.

        An interaction is a run of events on one item (``model/splits.py``), so a view → cart → buy funnel counts
        once; step 0 is the most recent interaction.
        """
        positions, rows = self.positions(), self.rows()
        items = self.split.items[positions]
        opens = np.ones(len(positions), dtype=bool)
        opens[1:] = (items[1:] != items[:-1]) | (rows[1:] != rows[:-1])
        # Interactions opening at or after each position, within its own history: the row's total minus those
        # opened strictly before.
        seen = np.cumsum(opens)
        row_total = np.zeros(len(self), dtype=np.int64)
        has_events = self.lengths > 0
        row_total[has_events] = seen[np.cumsum(self.lengths)[has_events] - 1]
        steps = row_total[rows] - seen + opens - 1
        keep = opens & (steps < n)
        return rows[keep], items[keep], steps[keep]


class Scorer(Protocol):
    """What the evaluator needs from a model: a score for every catalogue item, for a batch of users."""

    def score_users(self, histories: Histories) -> np.ndarray:
        """Scores ``[len(histories), n_items]``, higher is better; a fresh array the caller may modify."""
        ...


def interaction_counts(split: LeaveOneOutSplit, ends: np.ndarray, n_items: int) -> np.ndarray:
    """float32 [n_items]: how many interactions each item has in every user's history before ``ends``."""
    before = np.arange(split.n_events) < np.repeat(ends, np.diff(split.offsets))
    counted = split.items[split.interaction_starts() & before]
    return np.bincount(counted, minlength=n_items).astype(np.float32)


def item_transitions(split: LeaveOneOutSplit, ends: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed transition strengths between items in every history before ``ends``: sorted pair keys
    ``i · n_items + j`` and, for each, how often an interaction with ``j`` came 1, 2 or 3 interactions after one with
    ``i`` (weighted by :data:`TRANSITION_STEPS`) over ``sqrt(i's outgoing weight · j's incoming weight)``.

    Interactions, not events: a view → cart → buy funnel on one item is one step, as the item-kNN's memory reads it.
    An item followed by itself is left out, as the co-occurrences leave it out, so every pair here co-occurs.
    """
    user_of = split.user_of
    opening = split.interaction_starts() & (np.arange(split.n_events) < ends[user_of])
    items, owners = split.items[opening].astype(np.int64), user_of[opening]
    key_parts, weight_parts = [], []
    for gap, weight in TRANSITION_STEPS:
        later = np.flatnonzero(owners[gap:] == owners[: len(owners) - gap])
        source, target = items[later], items[later + gap]
        distinct = source != target
        key_parts.append(source[distinct] * n_items + target[distinct])
        weight_parts.append(np.full(int(distinct.sum()), weight))
    keys, which = np.unique(np.concatenate(key_parts), return_inverse=True)
    counts = np.bincount(which, weights=np.concatenate(weight_parts), minlength=len(keys))
    sources, targets = np.divmod(keys, n_items)
    outgoing = np.bincount(sources, weights=counts, minlength=n_items)
    incoming = np.bincount(targets, weights=counts, minlength=n_items)
    return keys, counts / np.sqrt(outgoing[sources] * incoming[targets])


def user_item_pairs(split: LeaveOneOutSplit, ends: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``(user, item)`` pairs of every history before ``ends``, sorted by user then item."""
    user_of = split.user_of
    before = np.arange(split.n_events) < ends[user_of]
    keys = np.unique(user_of[before] * n_items + split.items[before])
    return keys // n_items, keys % n_items


@dataclass(frozen=True)
class PopularityModel:
    """Recommends the items with the most training interactions, to everyone alike."""

    counts: np.ndarray  # float32 [n_items]

    @classmethod
    def fit(cls, split: LeaveOneOutSplit, n_items: int, stage: Stage = "test") -> PopularityModel:
        return cls(interaction_counts(split, split.history_end(stage), n_items))

    @property
    def n_items(self) -> int:
        return len(self.counts)

    def score_users(self, histories: Histories) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


def blend_scores(ranker_scores: np.ndarray, item_knn_scores: np.ndarray, weight: float) -> np.ndarray:
    """The served score: ranker logits plus ``weight`` times the item-kNN score (float32). Ranking is per user, so
    adding to the logits equals adding to their log-softmax. Training picks ``weight`` with it, the worker ranks
    with it, the evaluation measures it."""
    return ranker_scores + np.float32(weight) * np.asarray(item_knn_scores, dtype=np.float32)


@dataclass(frozen=True)
class ItemKNNModel:
    """Recency-weighted item-kNN over a sparse item-item similarity (CSR, one row per item).

    ``sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| · |U_j|) + ρ · trans(i → j)`` where ``U_i`` is the set of users whose
    history holds ``i``: the cosine of the binary user-item columns, plus, with a transition weight ``ρ > 0``, the
    directed strength of ``j`` following ``i`` (:func:`item_transitions`). The cosine says two items share shoppers;
    the transition says which one comes next, where shoppers move through a catalogue in an order (accessories
    after the device). A user's score for item ``j`` is
    ``Σ_s decay^s · sim(r_s, j)`` over the last ``n_recent`` interactions ``r_0`` (most recent), ``r_1``, ...
    Recent items predict the next one far better than the whole history on shopping data, and the decay lets
    the latest item lead while older ones break ties. No dense ``n_items²`` matrix is ever built: the
    similarity is as sparse as the co-occurrences, and scoring gathers only the rows of the recent items.
    """

    indptr: np.ndarray  # int64 [n_items + 1]: row i is entries indptr[i]:indptr[i + 1]
    neighbors: np.ndarray  # int32 [nnz]: column (neighbour item) of each entry
    similarities: np.ndarray  # float32 [nnz]
    n_recent: int = 3
    decay: float = 0.6

    def __post_init__(self) -> None:
        _check_memory(self.n_recent, self.decay)
        # Each row's neighbours in ascending order, so a pair is found by binary search (fit already builds
        # them so; a model built otherwise is put in order once here).
        owner = np.repeat(np.arange(self.n_items, dtype=np.int64), np.diff(self.indptr))
        keys = owner * max(self.n_items, 1) + self.neighbors
        if len(keys) > 1 and not np.all(keys[1:] > keys[:-1]):
            order = np.lexsort((self.neighbors, owner))
            object.__setattr__(self, "neighbors", self.neighbors[order])
            object.__setattr__(self, "similarities", self.similarities[order])

    @property
    def n_items(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def fit(
        cls,
        split: LeaveOneOutSplit,
        n_items: int,
        stage: Stage = "test",
        *,
        n_recent: int = 3,
        decay: float = 0.6,
        max_neighbors: int | None = None,
        transition_weight: float = 0.0,
    ) -> ItemKNNModel:
        """Count co-occurrences in every user's history before ``stage``'s target and normalise them.

        ``max_neighbors`` keeps only each item's most similar items, bounding memory at
        ``n_items · max_neighbors`` entries on logs with very long histories; None keeps every co-occurrence
        (exact, and small on the shared data sets: 3.3 M pairs on Beauty). ``transition_weight`` (``ρ``) adds the
        directed transition strengths of the same histories before the pruning, which then keeps the most similar
        by the sum.
        """
        if not 0.0 <= transition_weight < math.inf:
            raise ValueError("transition_weight must be non-negative and finite")
        ends = split.history_end(stage)
        users, items = user_item_pairs(split, ends, n_items)
        transitions = item_transitions(split, ends, n_items) if transition_weight > 0 else None
        degree = np.bincount(items, minlength=n_items).astype(np.float64)
        rows_per_item = np.zeros(n_items, dtype=np.int64)
        neighbor_parts, similarity_parts = [], []
        # Each part holds whole rows (items first in a pair), so similarities and pruning are exact per part, and
        # only one part's float64 temporaries are alive at a time.
        for first, second, together in _co_occurrences(users, items, n_items):
            similarity = together / np.sqrt(degree[first] * degree[second])
            if transitions is not None:
                similarity += transition_weight * _values_at(*transitions, first * n_items + second)
            if max_neighbors is not None:
                keep = _top_per_row(first, similarity, max_neighbors)
                first, second, similarity = first[keep], second[keep], similarity[keep]
            rows_per_item += np.bincount(first, minlength=n_items)
            neighbor_parts.append(second.astype(np.int32))
            similarity_parts.append(similarity.astype(np.float32))
        indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(rows_per_item, out=indptr[1:])
        neighbors = np.concatenate(neighbor_parts) if neighbor_parts else np.zeros(0, dtype=np.int32)
        similarities = np.concatenate(similarity_parts) if similarity_parts else np.zeros(0, dtype=np.float32)
        return cls(indptr, neighbors, similarities, n_recent, decay)

    @classmethod
    def of_transitions(cls, split: LeaveOneOutSplit, n_items: int, stage: Stage = "test") -> ItemKNNModel:
        """The transition strengths alone as the similarity (:func:`item_transitions`, histories before ``stage``'s
        target): scoring is linear in the similarity, so ``fit(..., transition_weight=ρ)`` without pruning scores
        exactly as the cosine fit plus ``ρ`` times this one, and training tries every ``ρ`` from two fits."""
        keys, strengths = item_transitions(split, split.history_end(stage), n_items)
        sources, targets = np.divmod(keys, n_items)
        indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(np.bincount(sources, minlength=n_items), out=indptr[1:])
        return cls(indptr, targets.astype(np.int32), strengths.astype(np.float32))

    def with_memory(self, n_recent: int, decay: float) -> ItemKNNModel:
        """The same similarities (shared, not copied) scored from the last ``n_recent`` interactions with
        ``decay``: the memory does not change what co-occurs, so one fit serves every memory."""
        _check_memory(n_recent, decay)
        twin = copy.copy(self)  # no __post_init__: the arrays are already in order, and sorting them costs O(nnz)
        object.__setattr__(twin, "n_recent", n_recent)
        object.__setattr__(twin, "decay", decay)
        return twin

    def neighbors_of(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """``(neighbour items, similarities)`` of one item, most similar first."""
        row = slice(int(self.indptr[item]), int(self.indptr[item + 1]))
        order = np.argsort(-self.similarities[row], kind="stable")
        return self.neighbors[row][order].astype(np.int64), self.similarities[row][order]

    def score_users(self, histories: Histories) -> np.ndarray:
        rows, items, steps = histories.recent_interactions(self.n_recent)
        flat, contributions = self._contributions(rows, items, steps)
        # bincount sums duplicate (row, item) cells: an item near two recent items adds up both similarities.
        scores = np.bincount(flat, weights=contributions, minlength=len(histories) * self.n_items)
        return scores.reshape(len(histories), self.n_items)

    def score_candidates(self, recent: Sequence[Sequence[int]], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The scores of :meth:`score_users` for just each user's ``candidates`` rows, from ``recent``: the
        user's latest interaction rows, most recent first (only the first ``n_recent`` count). Vectorised over
        the whole batch; returns one float32 array per user, aligned with its candidates."""
        flat_rows, items, steps = _flatten(recent, self.n_recent)
        flat, contributions = self._contributions(flat_rows, items, steps)
        keys, inverse = np.unique(flat, return_inverse=True)
        sums = np.bincount(inverse, weights=contributions, minlength=len(keys))
        lengths = np.fromiter((len(c) for c in candidates), dtype=np.int64, count=len(candidates))
        wanted = np.repeat(np.arange(len(candidates), dtype=np.int64), lengths) * self.n_items
        if lengths.sum():
            wanted += np.concatenate([np.asarray(c, dtype=np.int64) for c in candidates])
        scores = _values_at(keys, sums, wanted).astype(np.float32)
        return np.split(scores, np.cumsum(lengths)[:-1]) if len(candidates) else []

    def similarities_between(self, rows: Sequence[int], others: Sequence[int]) -> np.ndarray:
        """``[rows, others]`` stored similarities (0 for pairs that never co-occurred or lie outside the model)."""
        anchors, columns = np.asarray(rows, dtype=np.int64), np.asarray(others, dtype=np.int64)
        pairs = self.similarities_of_pairs(np.repeat(anchors, len(columns)), np.tile(columns, len(anchors)))
        return pairs.reshape(len(anchors), len(columns))

    def similarities_of_pairs(self, rows: np.ndarray, others: np.ndarray) -> np.ndarray:
        """The stored similarity of each pair ``(rows[i], others[i])`` (0 as in :meth:`similarities_between`)."""
        rows, others = np.asarray(rows, dtype=np.int64), np.asarray(others, dtype=np.int64)
        out = np.zeros(len(rows))
        inside = (rows >= 0) & (rows < self.n_items) & (others >= 0) & (others < self.n_items)
        if not inside.any():
            return out
        anchors, owner_of_pair = np.unique(rows[inside], return_inverse=True)
        begins, ends = self.indptr[anchors], self.indptr[anchors + 1]
        lengths = ends - begins
        if not lengths.sum():
            return out
        # All the anchors' rows as one sorted key array (anchor position, neighbour): one binary search for all pairs.
        owner = np.repeat(np.arange(len(anchors), dtype=np.int64), lengths)
        entries = np.arange(lengths.sum(), dtype=np.int64) + np.repeat(begins - (np.cumsum(lengths) - lengths), lengths)
        keys = owner * self.n_items + self.neighbors[entries]
        wanted = owner_of_pair * self.n_items + others[inside]
        out[inside] = _values_at(keys, self.similarities[entries], wanted)
        return out

    def top_neighbors(self, recent: Sequence[int], n: int, excluded: set[int]) -> np.ndarray:
        """The ``n`` best-scored rows for one user whose latest interaction rows are ``recent`` (most recent
        first), without ``excluded`` rows; best first, ties by row."""
        rows, items, steps = _flatten([recent], self.n_recent)
        flat, contributions = self._contributions(rows, items, steps)
        if len(flat) == 0 or n <= 0:
            return np.zeros(0, dtype=np.int64)
        unique, inverse = np.unique(flat, return_inverse=True)
        scores = np.bincount(inverse, weights=contributions)
        if excluded:
            keep = ~np.isin(unique, np.fromiter(excluded, dtype=np.int64, count=len(excluded)))
            unique, scores = unique[keep], scores[keep]
        return unique[np.lexsort((unique, -scores))[:n]]

    def _contributions(self, rows: np.ndarray, items: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(row · n_items + neighbour, decay^step · similarity)`` of every neighbour of every recent item."""
        weights = self.decay ** steps.astype(np.float64)
        begin, end = self.indptr[items], self.indptr[items + 1]
        counts = end - begin
        entries = np.repeat(end - counts.cumsum(), counts) + np.arange(counts.sum())
        flat = np.repeat(rows, counts) * self.n_items + self.neighbors[entries]
        return flat, np.repeat(weights, counts) * self.similarities[entries]


def _check_memory(n_recent: int, decay: float) -> None:
    if n_recent < 1 or not 0.0 < decay <= 1.0:
        raise ValueError("n_recent must be >= 1 and decay in (0, 1]")


def _flatten(recent: Sequence[Sequence[int]], n_recent: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(batch rows, items, steps back)`` of each user's first ``n_recent`` recent rows."""
    kept = [list(rows)[:n_recent] for rows in recent]
    lengths = np.fromiter((len(rows) for rows in kept), dtype=np.int64, count=len(kept))
    rows = np.repeat(np.arange(len(kept), dtype=np.int64), lengths)
    items = np.fromiter((row for user in kept for row in user), dtype=np.int64, count=int(lengths.sum()))
    steps = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, items, steps


def _co_occurrences(
    users: np.ndarray, items: np.ndarray, n_items: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(item a, item b, number of users holding both)`` for every ordered pair ``a != b`` that co-occurs, in parts
    ordered by ``a`` (then ``b``), each part holding every pair of a range of items ``a``.

    ``users``/``items`` are distinct pairs sorted by user. Each user contributes its ``m²`` item pairs; users are
    processed in chunks of about :data:`PAIRS_PER_CHUNK` pairs, each chunk reduced to distinct pair keys and split
    by item range; each range is then reduced on its own. The peak memory follows the distinct pairs (kept compact
    until their range is reduced) plus one range's temporaries, not the total.
    """
    user_start = np.flatnonzero(np.diff(users, prepend=-1)) if len(users) else np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.append(user_start, len(users)))
    squares = sizes * sizes
    # Chunk boundaries where the running pair count crosses a multiple of the chunk size.
    chunk_of = np.cumsum(squares) // PAIRS_PER_CHUNK
    bounds = [0, *np.flatnonzero(np.diff(chunk_of)) + 1, len(sizes)]
    n_ranges = max(1, int(squares.sum()) // PAIRS_PER_CHUNK)
    edges = np.linspace(0, n_items, n_ranges + 1).astype(np.int64) * n_items  # key bounds of the item ranges

    key_parts: list[list[np.ndarray]] = [[] for _ in range(n_ranges)]
    count_parts: list[list[np.ndarray]] = [[] for _ in range(n_ranges)]
    for lo, hi in pairwise(bounds):
        if lo == hi:
            continue
        start, size, square = user_start[lo:hi], sizes[lo:hi], squares[lo:hi]
        owner = np.repeat(np.arange(hi - lo), square)
        local = np.arange(square.sum()) - np.repeat(square.cumsum() - square, square)
        a = items[start[owner] + local // size[owner]]
        b = items[start[owner] + local % size[owner]]
        keys = a[a != b] * n_items + b[a != b]
        chunk_keys, chunk_counts = np.unique(keys, return_counts=True)
        cuts = np.searchsorted(chunk_keys, edges)
        for r in range(n_ranges):
            if cuts[r] < cuts[r + 1]:
                key_parts[r].append(chunk_keys[cuts[r] : cuts[r + 1]])
                count_parts[r].append(chunk_counts[cuts[r] : cuts[r + 1]].astype(np.int32))
    for r in range(n_ranges):
        if not key_parts[r]:
            continue
        keys = np.concatenate(key_parts[r])
        counts = np.concatenate(count_parts[r])
        key_parts[r], count_parts[r] = [], []  # this range's chunk pieces are no longer needed
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
        distinct = np.flatnonzero(np.diff(keys, prepend=-1))
        totals = np.add.reduceat(counts.astype(np.int64), distinct).astype(np.float64)
        keys = keys[distinct]
        yield keys // n_items, keys % n_items, totals


def _values_at(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``values`` of the sorted ``keys`` at each ``wanted`` key, 0 where absent."""
    found = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    out = np.zeros(len(wanted))
    if len(keys):
        hit = keys[found] == wanted
        out[hit] = values[found[hit]]
    return out


def _top_per_row(rows: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """bool mask keeping the ``k`` largest ``values`` of each row (``rows`` sorted ascending)."""
    order = np.lexsort((-values, rows))
    sorted_rows = rows[order]
    row_start = np.flatnonzero(np.diff(sorted_rows, prepend=-1))
    rank = np.arange(len(rows)) - np.repeat(row_start, np.diff(np.append(row_start, len(rows))))
    keep = np.zeros(len(rows), dtype=bool)
    keep[order[rank < k]] = True
    return keep
