"""Evaluation of a model version against strong baselines, offline; the served pipeline's part is in
:mod:`streamrec.stream.app.served_eval`, whose :func:`~streamrec.stream.app.served_eval.evaluate` joins both.

One call answers "does the model beat the state of the art, and is that what users get?":

* **offline** — leave-one-out per user (``model/splits.py``): the last interaction is the test target, the
  history is everything before it. Every model scores the whole catalogue through the one contract of
  :class:`streamrec.model.baselines.Scorer`, and three protocols read the same score matrix: *full* ranking (history
  items excluded, as in the published tables of ``shared/README.md``), 99 *uniformly sampled* negatives (the
  older protocol of the same tables) and 99 *popularity-sampled* negatives (harder: popular items are the
  ones a weak model ranks high). Catalogue coverage, intra-list diversity and novelty of each model's top-10
  show what the accuracy costs or buys.
* **served** — each user's history is replayed through a real :class:`streamrec.stream.pipeline.Pipeline`, the exact
  code path of the worker (ANN retrieval, ranker, filters), and the user's last published list is scored.
  The gap between the two is what approximation and business rules cost.

Models: ``model`` (what the worker ranks with: the sequence ranker's logits plus the artifact's
``blend_weight`` times the item-kNN score), ``ranker`` (the sequence ranker alone), ``retrieval`` (the interest vector
``v · E``, what the worker retrieves with), ``retrieve_rerank`` (the worker's two stages with exact search),
and the baselines ``popularity`` and ``item_knn``. Everything is batched over users and vectorised over
items; on Amazon Beauty (22k users × 12k items) the offline part takes seconds per model on two cores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamrec.index.item_index import exact_recall, unit_rows
from streamrec.index.params import DEFAULT_N_CANDIDATES
from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.baselines import Histories, ItemKNNModel, PopularityModel, Scorer, blend_scores, user_item_pairs
from streamrec.model.event_log import EventLog
from streamrec.model.events import DEFAULT_EVENT_WEIGHTS, DEFAULT_HALF_LIFE_S, EVENT_TYPES
from streamrec.model.metrics import (
    full_ranks,
    intra_list_distances,
    mask_history,
    sampled_ranks,
    summarize,
    target_ranks,
)
from streamrec.model.ranker import PAD, SequenceRanker
from streamrec.model.splits import LeaveOneOutSplit, leave_one_out

logger = logging.getLogger(__name__)

N_NEGATIVES = 99
LIST_LENGTH = 10  # the top-N of coverage, diversity and novelty
SERVED_TOP_K = 20
ANN_RECALL_K = 200
RECALL_SAMPLE = 2_000  # queries used to measure the ANN index's recall against exact search
EVAL_MAX_SCORES = 1 << 23  # scores per batch and model (32 MiB of float32): several such matrices are alive
SERVED_BATCH_EVENTS = 4_096  # events per pipeline micro-batch in the served replay

PROTOCOL = (
    "leave-one-out per user over interactions (consecutive events on one item are one interaction): the last "
    "interaction is the test target, every event before it is the history; users with fewer than 3 interactions "
    "are dropped; events on items outside the model's vocabulary are ignored. A user whose real test target (the"
    " item of the user's last event in the log) is outside the vocabulary counts as a miss for every model under "
    "every protocol and in the served replay (full rank = n_items, sampled rank = last); these users are counted"
    " in unknown_target_users, and users left with fewer than 3 interactions on known items in "
    "dropped_users_few_known_interactions. full: the target is ranked against "
    "the whole catalogue with the user's history items excluded (never the target itself); rank = number of items"
    " scoring strictly higher, plus a uniformly random share of the items scoring exactly the same (seeded; "
    "sparse scorers such as item-kNN tie on most items). full_history_kept: the same with no item excluded, so "
    "that a re-visit target competes with the user's other history items as it does in the served lists (the "
    "full protocol removes those competitors but keeps the target). full_as_served: what the served lists leave "
    "out is excluded, the user's bought items and the item of the last event, the other history items compete; a "
    "target among the left-out items is a miss: the offline figure the served lists are held to. "
    "*_by_target_kind: HR@10 and NDCG@10 by "
    "whether the target is new to the user, a re-visit, or outside the vocabulary. sampled_uniform_99: against 99 "
    "negatives drawn without "
    "replacement, uniformly from the items the user never interacted with; sampled_popularity_99: the same, drawn"
    " proportionally to training interaction counts; negatives are drawn once per user from the seed and shared "
    "by all models. coverage, intra_list_diversity@10 (mean pairwise 1 - cosine of the model version's item "
    "embeddings, for every model) and novelty@10 (mean -log2 of the share of users holding the item in training; "
    "unseen items count as held by one) are computed on each user's top-10 with history excluded. Baselines fit "
    "on every user's history before the test target; the trained model was trained on the events before the "
    "validation target, or, with a refit (training.trained_before = test), on the events before the test target "
    "for the number of epochs early stopping chose on the validation split, or, with validation users "
    "(training.trained_before = test except the validation users), on the events before the test target of every "
    "user but the validation users, whose validation item it was stopped on."
)


# --- the trained model behind the scoring contract --------------------------------------------------------------


def last_items(split: LeaveOneOutSplit, starts: np.ndarray, ends: np.ndarray, max_len: int) -> np.ndarray:
    """The ranker's input: the last ``max_len`` history events of each user, left-padded with -1."""
    width = int(min(max_len, (ends - starts).max()))
    positions = ends[:, None] - width + np.arange(width)[None, :]
    valid = positions >= starts[:, None]
    return np.where(valid, split.items[np.where(valid, positions, 0)], PAD).astype(np.int64)


def interest_vectors(
    split: LeaveOneOutSplit,
    starts: np.ndarray,
    ends: np.ndarray,
    table: np.ndarray,
    type_weights: np.ndarray,
    half_life_s: float,
) -> np.ndarray:
    """The worker's interest vector over each user's whole history, decayed to the user's newest event."""
    lengths = ends - starts
    positions = np.repeat(ends - lengths.cumsum(), lengths) + np.arange(lengths.sum())
    newest = np.repeat(split.timestamps[ends - 1], lengths)
    factors = type_weights[split.event_types[positions]] * np.exp2((split.timestamps[positions] - newest) / half_life_s)
    contributions = factors[:, None].astype(np.float32) * table[split.items[positions]]
    return np.add.reduceat(contributions, np.cumsum(lengths) - lengths, axis=0).astype(np.float32)


#: Users per ranker forward in evaluation: small enough that a group's longest history is close to the others'.
ENCODE_GROUP = 64


@dataclass(frozen=True)
class RankerScorer:
    """The sequence ranker over the last ``max_len`` history events: what the worker ranks with."""

    ranker: SequenceRanker
    max_len: int

    def score_users(self, histories: Histories) -> np.ndarray:
        users = self.user_states(histories)
        with torch.inference_mode():
            return (torch.from_numpy(users) @ self.ranker.item_embeddings().T).numpy()

    def user_states(self, histories: Histories) -> np.ndarray:
        """float32 ``[len(histories), dim]``: the ranker's state of each history, what it scores an item row by."""
        history = last_items(histories.split, histories.starts, histories.ends, self.max_len)
        lengths = np.count_nonzero(history != PAD, axis=1)
        users = np.empty((len(history), self.ranker.config.dim), dtype=np.float32)
        # Users of similar history length encoded together, each group cut to its longest history: positions are
        # aligned to the most recent item, so the padding a group drops changes nothing but the work.
        order = np.argsort(lengths, kind="stable")
        with torch.inference_mode():
            for group in np.array_split(order, max(1, -(-len(order) // ENCODE_GROUP))):
                width = max(1, int(lengths[group].max()))
                users[group] = self.ranker.encode(torch.from_numpy(history[group, -width:])).numpy()
        return users


@dataclass(frozen=True)
class RetrievalScorer:
    """The interest vector ``v`` scored against the item table, ``v · E``: what the worker retrieves with."""

    embeddings: np.ndarray  # float32 [n_items, dim]
    type_weights: np.ndarray  # float32 [n_event_types]
    half_life_s: float

    def queries(self, histories: Histories) -> np.ndarray:
        h = histories
        return interest_vectors(h.split, h.starts, h.ends, self.embeddings, self.type_weights, self.half_life_s)

    def score_users(self, histories: Histories) -> np.ndarray:
        return self.queries(histories) @ self.embeddings.T


@dataclass(frozen=True)
class BlendedScorer:
    """``ranker + weight · item_knn``: the score the worker ranks its candidates by (``stream/pipeline.py``).

    Ranking is per user, so adding to the raw logits equals adding to their log-softmax. The offline row uses
    the evaluation's own item-kNN (fit before the test target, like the served one; the served one keeps only
    each item's top neighbours).
    """

    ranker: Scorer
    item_knn: Scorer
    weight: float

    def score_users(self, histories: Histories) -> np.ndarray:
        scores = self.ranker.score_users(histories)
        if self.weight > 0:
            scores = blend_scores(scores, self.item_knn.score_users(histories), self.weight)
        return scores


def retrieve_rerank_ranks(
    retrieval_scores: np.ndarray,
    ranker_scores: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[np.ndarray],
    n_candidates: int,
) -> np.ndarray:
    """Ranks of the worker's two stages: the top ``n_candidates`` of retrieval, re-ordered by the ranker.

    A target that retrieval misses gets the last rank of the catalogue.
    """
    n_items = retrieval_scores.shape[1]
    rows = np.arange(len(targets))
    masked = retrieval_scores.copy()
    lengths = [len(e) for e in exclude]
    masked[np.repeat(rows, lengths), np.concatenate(exclude)] = -np.inf
    masked[rows, targets] = retrieval_scores[rows, targets]
    k = min(n_candidates, n_items)
    candidates = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    retrieved = (candidates == targets[:, None]).any(axis=1)
    candidate_scores = np.take_along_axis(ranker_scores, candidates, axis=1)
    # Excluded items that still made the cut (fewer than k allowed items) cannot outrank the target.
    candidate_scores[~np.isfinite(np.take_along_axis(masked, candidates, axis=1))] = -np.inf
    target_scores = ranker_scores[rows, targets]
    ranks = np.count_nonzero(candidate_scores > target_scores[:, None], axis=1)
    return np.where(retrieved, ranks, n_items - 1).astype(np.int64)


# --- protocols ---------------------------------------------------------------------------------------------------


def unknown_target_users(log: EventLog, split: LeaveOneOutSplit, row_of: Mapping[str, int]) -> np.ndarray:
    """bool [U]: the users of ``split`` whose real test target, the item of their last event in ``log``, is
    outside the vocabulary ``row_of``. The split drops such events, so its test target for these users is an
    earlier interaction on a known item: evaluating that instead would silently swap the hardest targets for
    easier ones."""
    last_item = dict(zip(log.user_ids.tolist(), log.item_ids.tolist(), strict=True))  # a user's last event wins
    return np.fromiter((last_item[user] not in row_of for user in split.users), dtype=bool, count=split.n_users)


def sample_negatives(
    interacted: Sequence[np.ndarray],
    n_items: int,
    n: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
    max_rounds: int = 4,
) -> np.ndarray:
    """``n`` negative items per user, without replacement, from the items that user never interacted with.

    ``weights`` (non-negative, one per item) makes the draw proportional to them — items of weight 0 are never
    drawn; None draws uniformly. Returns int64 ``[len(interacted), n]``; when a user has fewer than ``n``
    allowed items, all of them are returned and the row is padded with -1.

    Users are served together by rejection: draw about ``2n`` items per user, drop the interacted ones and
    repeats, keep the first ``n`` left. Dropping repeats of i.i.d. draws is exactly sequential sampling
    without replacement, so this is the same distribution as drawing one by one. The few users it leaves
    short (huge histories on small catalogues) are drawn exactly, one by one.
    """
    n_users = len(interacted)
    out = np.full((n_users, n), -1, dtype=np.int64)
    if n_users == 0 or n == 0:
        return out
    lengths = np.fromiter((len(items) for items in interacted), dtype=np.int64, count=n_users)
    flat = np.concatenate([np.asarray(items, dtype=np.int64) for items in interacted])
    keys = np.unique(np.repeat(np.arange(n_users, dtype=np.int64), lengths) * n_items + flat)
    if weights is None:
        probabilities = None
        drawable = np.ones(n_items, dtype=bool)
    else:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (n_items,) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError("weights must be non-negative, one per item, and not all zero")
        probabilities = weights / weights.sum()
        drawable = weights > 0
    # Allowed items per user: the drawable ones minus those the user holds.
    held_drawable = np.bincount(keys // n_items, weights=drawable[keys % n_items], minlength=n_users)
    allowed = int(drawable.sum()) - held_drawable.astype(np.int64)

    pending = np.flatnonzero(allowed >= 3 * n)  # others would mostly be rejected: draw them exactly
    width = 2 * n + 16
    for _ in range(max_rounds):
        if len(pending) == 0:
            break
        shape = (len(pending), width)
        draws = (
            rng.integers(0, n_items, shape) if probabilities is None else rng.choice(n_items, shape, p=probabilities)
        )
        valid = ~_is_member(pending[:, None] * n_items + draws, keys) & ~_repeats(draws)
        enough = valid.sum(axis=1) >= n
        take = valid[enough] & (np.cumsum(valid[enough], axis=1) <= n)
        out[pending[enough]] = draws[enough][take].reshape(-1, n)
        pending = pending[~enough]
    exact = np.union1d(np.flatnonzero(allowed < 3 * n), pending)
    starts = np.cumsum(lengths) - lengths
    for user in exact:
        candidates = np.flatnonzero(drawable)
        candidates = np.setdiff1d(candidates, flat[starts[user] : starts[user] + lengths[user]], assume_unique=False)
        size = min(n, len(candidates))
        if size == 0:
            continue
        p = None if probabilities is None else probabilities[candidates] / probabilities[candidates].sum()
        out[user, :size] = rng.choice(candidates, size, replace=False, p=p)
    return out


def _is_member(queries: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(queries.shape, dtype=bool)
    found = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return sorted_keys[found] == queries


def _repeats(draws: np.ndarray) -> np.ndarray:
    """bool, same shape: entries equal to an earlier entry of their row."""
    order = np.argsort(draws, axis=1, kind="stable")  # stable: the first drawn of equal items sorts first
    ordered = np.take_along_axis(draws, order, axis=1)
    repeated = np.zeros(draws.shape, dtype=bool)
    np.put_along_axis(repeated, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
    return repeated


def top_items(scores: np.ndarray, exclude: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Each row's ``k`` best items, best first, excluded items left out; -1 pads rows with fewer allowed items."""
    return _top_of_masked(mask_history(scores, exclude), k)


def _top_of_masked(masked: np.ndarray, k: int) -> np.ndarray:
    k = min(k, masked.shape[1])
    best = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    best_scores = np.take_along_axis(masked, best, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    best = np.take_along_axis(best, order, axis=1)
    return np.where(np.take_along_axis(best_scores, order, axis=1) > -np.inf, best, -1)


def coverage(lists: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one list."""
    return len(np.unique(lists[lists >= 0])) / n_items


def list_novelty(lists: np.ndarray, self_information: np.ndarray) -> np.ndarray:
    """float64 [B]: each list's mean self-information ``-log2 share`` of its items (NaN for empty lists)."""
    real = lists >= 0
    total = np.where(real, self_information[np.maximum(lists, 0)], 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / real.sum(axis=1)


# --- the evaluation ------------------------------------------------------------------------------------------

TARGET_KINDS = ("new_item", "earlier_item", "outside_vocabulary")
"""What a user's test target is to them: an item they never touched, one from their history (a re-visit; never the
item of their last event, since consecutive events on one item are one interaction), or an item the model does not
know (a miss for every model)."""


def target_kinds(split: LeaveOneOutSplit, unknown: np.ndarray | None = None) -> np.ndarray:
    """int8 [U]: each user's test target as an index of :data:`TARGET_KINDS`; ``unknown`` (bool [U], see
    :func:`unknown_target_users`) flags the users whose target is outside the vocabulary."""
    targets = split.targets("test")
    ends = split.history_end("test")
    kinds = np.zeros(split.n_users, dtype=np.int8)
    for user in range(split.n_users):
        kinds[user] = np.any(split.items[int(split.offsets[user]) : int(ends[user])] == targets[user])
    if unknown is not None:
        kinds[unknown] = 2
    return kinds


def by_target_kind(ranks: np.ndarray, kinds: np.ndarray) -> dict[str, dict[str, float]]:
    """HR@10, NDCG@10 and the user count for each kind of test target (:data:`TARGET_KINDS`)."""
    out: dict[str, dict[str, float]] = {}
    for code, kind in enumerate(TARGET_KINDS):
        chosen = ranks[kinds == code]
        summary = summarize(chosen, (10,), with_mrr=False) if len(chosen) else {"HR@10": 0.0, "NDCG@10": 0.0}
        out[kind] = {"users": len(chosen), **summary}
    return out


@dataclass(frozen=True)
class OfflineEvaluation:
    """The offline part of an evaluation report, and what the served part and the ANN recall need from it."""

    report: dict[str, Any]
    split: LeaveOneOutSplit
    unknown_targets: np.ndarray  # bool [U]: the user's real test target is outside the vocabulary
    retrieval_queries: np.ndarray  # float32 [U, dim]: the offline interest vectors
    target_kinds: np.ndarray  # int8 [U]: see target_kinds()


def evaluate_offline(log: EventLog, artifacts: ModelArtifacts, *, seed: int = 0) -> OfflineEvaluation:
    """Offline metrics of the model and the baselines under every protocol (see the module docstring and
    :data:`PROTOCOL`); :func:`streamrec.stream.app.served_eval.evaluate` adds the served pipeline's metrics."""
    started = time.perf_counter()
    n_items = len(artifacts.item_ids)
    split = leave_one_out(log, artifacts.row_of)
    if split.n_users == 0:
        raise ValueError("no user has the 3 interactions leave-one-out needs")
    unknown = unknown_target_users(log, split, artifacts.row_of)
    every_item = dict.fromkeys(log.item_ids.tolist(), 0)
    n_users_in_log = leave_one_out(log, {item: row for row, item in enumerate(every_item)}).n_users
    if unknown.any() or n_users_in_log > split.n_users:
        logger.warning(
            "%d of %d users have a test target outside the model's vocabulary (counted as misses); %d more users"
            " have fewer than 3 interactions on known items (dropped)",
            int(unknown.sum()), split.n_users, n_users_in_log - split.n_users,
        )  # fmt: skip
    models = _models(split, artifacts)
    kinds = target_kinds(split, unknown)
    offline, retrieval_queries = _offline(split, artifacts, models, seed, unknown, kinds)
    offline_seconds = time.perf_counter() - started
    logger.info("offline evaluation of %d users took %.1f s", split.n_users, offline_seconds)
    report: dict[str, Any] = {
        "dataset": log.name,
        "model_version": artifacts.version,
        "protocol": PROTOCOL,
        "seed": seed,
        "n_users": split.n_users,
        "n_items": n_items,
        "n_events": split.n_events,
        "unknown_target_users": int(unknown.sum()),
        "dropped_users_few_known_interactions": n_users_in_log - split.n_users,
        "results": offline,
        "training": training_summary(artifacts.manifest),
        "seconds": {"offline": round(offline_seconds, 2)},
    }
    return OfflineEvaluation(report, split, unknown, retrieval_queries, kinds)


def training_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """How the evaluated version was trained (from its manifest), so that a report carries its training cost."""
    training = manifest.get("training", {})
    refit = training.get("refit")
    return {
        "seconds": training.get("seconds"),
        "torch_threads": training.get("torch_threads"),
        "epochs": training.get("epochs"),
        "best_epoch": training.get("best_epoch"),
        "refit_epochs": refit["epochs"] if refit else None,
        "refit_seconds": refit["seconds"] if refit else None,
        "refit_from": refit.get("from", "fresh weights") if refit else None,
        "trained_before": "test" if refit else _first_fit_end(training),
        "blend_weight": manifest.get("blend_weight"),
        # The served item-kNN's memory and transition weight, and the validation NDCG@10 that chose them with the
        # blend weight (per transition weight, then per blend weight, at the chosen memory).
        "item_knn": {
            key: value
            for key, value in manifest.get("item_knn", {}).items()
            if key in ("n_recent", "decay", "transition_weight")
        },
        "blend_validation_ndcg@10": manifest.get("blend_validation", {}).get("NDCG@10_by_transition_weight"),
    }


def _first_fit_end(training: dict[str, Any]) -> str:
    held = training.get("validation_users")
    return f"test except the {held} validation users" if held else "validation"


def ann_recall(artifacts: ModelArtifacts, queries: np.ndarray, source: str, seed: int = 0) -> dict[str, Any]:
    """Recall of the served ANN index against exact search, over a seeded sample of ``queries`` (users' interest
    vectors; all-zero rows, users never warmed, are left out), as report fields."""
    recall_k = min(ANN_RECALL_K, len(artifacts.item_ids))
    queries = queries[np.any(queries != 0, axis=1)]
    sample = queries[np.random.default_rng(seed).permutation(len(queries))[:RECALL_SAMPLE]]
    return {
        f"ann_recall@{recall_k}": round(exact_recall(artifacts.index, artifacts.item_embeddings, sample, recall_k), 6),
        "ann_recall_queries": f"{len(sample)} {source}; index {artifacts.index!r}",
    }


@dataclass(frozen=True)
class _Models:
    """The evaluated scorers, fit or loaded once per evaluation."""

    ranker: RankerScorer
    retrieval: RetrievalScorer
    item_knn: ItemKNNModel
    popularity: PopularityModel
    n_candidates: int  # retrieval candidates the worker re-ranks (for ``retrieve_rerank``)
    blend_weight: float = 0.0  # the artifact's weight of the item-kNN in the served score
    served_item_knn: ItemKNNModel | None = None  # the artifact's own item-kNN (its memory and neighbours)

    def scorers(self) -> dict[str, Scorer]:
        return {
            "model": BlendedScorer(self.ranker, self.served_item_knn or self.item_knn, self.blend_weight),
            "ranker": self.ranker,
            "retrieval": self.retrieval,
            "item_knn": self.item_knn,
            "popularity": self.popularity,
        }


def _models(split: LeaveOneOutSplit, artifacts: ModelArtifacts) -> _Models:
    """The trained model's two scorers as trained (the manifest's event weights and half-life, which the
    manifest's own metrics used), its blend as served (the version's own item-kNN, whose memory validation chose),
    and the baselines fit on the same split (the item-kNN baseline with its classic memory, 3 items · 0.6)."""
    n_items = len(artifacts.item_ids)
    train_config = artifacts.manifest.get("train_config", {})
    event_weights = {**DEFAULT_EVENT_WEIGHTS, **train_config.get("event_weights", {})}
    return _Models(
        ranker=RankerScorer(artifacts.ranker, artifacts.ranker.config.max_len),
        retrieval=RetrievalScorer(
            artifacts.item_embeddings,
            np.array([event_weights[name] for name in EVENT_TYPES], dtype=np.float32),
            float(train_config.get("half_life_s", DEFAULT_HALF_LIFE_S)),
        ),
        item_knn=ItemKNNModel.fit(split, n_items),
        popularity=PopularityModel.fit(split, n_items),
        n_candidates=int(train_config.get("n_candidates", DEFAULT_N_CANDIDATES)),
        blend_weight=artifacts.blend_weight,
        served_item_knn=artifacts.item_knn,
    )


def _offline(
    split: LeaveOneOutSplit,
    artifacts: ModelArtifacts,
    models: _Models,
    seed: int,
    unknown: np.ndarray | None = None,
    kinds: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Every model's results under every protocol (full ranking also by kind of target, given ``kinds``); also the
    retrieval queries ``[U, dim]``. Users flagged in ``unknown`` (bool [U], see :func:`unknown_target_users`) are a
    miss for every model and protocol."""
    n_items = len(artifacts.item_ids)
    targets = split.targets("test")
    interacted = np.split(split.items, split.offsets[1:-1])  # every item of each user, target included
    negatives = {
        "sampled_uniform_99": sample_negatives(interacted, n_items, N_NEGATIVES, np.random.default_rng([seed, 0])),
        "sampled_popularity_99": sample_negatives(
            interacted, n_items, N_NEGATIVES, np.random.default_rng([seed, 1]), weights=models.popularity.counts
        ),
    }
    scorers = models.scorers()
    tie_rng = np.random.default_rng([seed, 2])
    ranks: dict[str, dict[str, list[np.ndarray]]] = {
        name: {"full": [], "full_history_kept": [], "full_as_served": [], **{protocol: [] for protocol in negatives}}
        for name in scorers
    }
    ranks["retrieve_rerank"] = {"full": []}
    lists: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    queries = np.empty((split.n_users, artifacts.dim), dtype=np.float32)

    step = max(1, min(512, EVAL_MAX_SCORES // n_items))
    for begin in range(0, split.n_users, step):
        users = slice(begin, begin + step)
        histories = Histories.of_users(split, users, "test")
        exclude = histories.item_sets()
        nothing_excluded = [np.zeros(0, dtype=np.int64)] * len(exclude)
        batch_targets = targets[users]
        as_served = histories.served_exclusions()
        # A target the pipeline would leave out (an item the user bought) is a miss, as in the served lists.
        served_misses = np.array([np.isin(t, left_out) for t, left_out in zip(batch_targets, as_served, strict=True)])
        queries[users] = models.retrieval.queries(histories)
        scores: dict[str, np.ndarray] = {}
        for name, scorer in scorers.items():
            scores[name] = scorer.score_users(histories)
            full, masked = full_ranks(scores[name], batch_targets, exclude, tie_rng)
            ranks[name]["full"].append(full)
            kept = target_ranks(scores[name], batch_targets, nothing_excluded, tie_rng)
            ranks[name]["full_history_kept"].append(kept)
            served_ranks = target_ranks(scores[name], batch_targets, as_served, tie_rng)
            ranks[name]["full_as_served"].append(np.where(served_misses, n_items, served_ranks))
            lists[name].append(_top_of_masked(masked, LIST_LENGTH))
            for protocol, drawn in negatives.items():
                ranks[name][protocol].append(sampled_ranks(scores[name], batch_targets, drawn[users], tie_rng))
        ranks["retrieve_rerank"]["full"].append(
            retrieve_rerank_ranks(scores["retrieval"], scores["model"], batch_targets, exclude, models.n_candidates)
        )

    unit = unit_rows(artifacts.item_embeddings)
    users_holding = np.bincount(user_item_pairs(split, split.history_end("test"), n_items)[1], minlength=n_items)
    self_information = -np.log2(np.maximum(users_holding, 1) / split.n_users)
    results: dict[str, Any] = {}
    for name, by_protocol in ranks.items():
        results[name] = {}
        for protocol, parts in by_protocol.items():
            protocol_ranks = np.concatenate(parts)
            if unknown is not None:
                protocol_ranks[unknown] = n_items if protocol.startswith("full") else N_NEGATIVES
            results[name][protocol] = summarize(protocol_ranks)
            if protocol.startswith("full") and kinds is not None:
                results[name][f"{protocol}_by_target_kind"] = by_target_kind(protocol_ranks, kinds)
        if name in lists:
            top = np.concatenate(lists[name])
            results[name] |= {
                "coverage": round(coverage(top, n_items), 6),
                f"intra_list_diversity@{LIST_LENGTH}": round(float(np.nanmean(intra_list_distances(top, unit))), 6),
                f"novelty@{LIST_LENGTH}": round(float(np.nanmean(list_novelty(top, self_information))), 6),
            }
    return results, queries


# --- presentation ----------------------------------------------------------------------------------------------

_TABLE_COLUMNS: tuple[tuple[str, Callable[[Mapping[str, Any]], float | None]], ...] = (
    ("HR@5", lambda r: r.get("full", {}).get("HR@5")),
    ("HR@10", lambda r: r.get("full", {}).get("HR@10")),
    ("HR@20", lambda r: r.get("full", {}).get("HR@20")),
    ("NDCG@5", lambda r: r.get("full", {}).get("NDCG@5")),
    ("NDCG@10", lambda r: r.get("full", {}).get("NDCG@10")),
    ("NDCG@20", lambda r: r.get("full", {}).get("NDCG@20")),
    ("MRR", lambda r: r.get("full", {}).get("MRR")),
    ("uni HR@10", lambda r: r.get("sampled_uniform_99", {}).get("HR@10")),
    ("uni NDCG@10", lambda r: r.get("sampled_uniform_99", {}).get("NDCG@10")),
    ("pop HR@10", lambda r: r.get("sampled_popularity_99", {}).get("HR@10")),
    ("pop NDCG@10", lambda r: r.get("sampled_popularity_99", {}).get("NDCG@10")),
    ("coverage", lambda r: r.get("coverage")),
)


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table: one row per model (and the served pipeline), full ranking first."""
    rows: list[tuple[str, Mapping[str, Any]]] = list(report["results"].items())
    served = report.get("served")
    if served:
        # The served list is the top-20 of the pipeline: its HR/NDCG sit in the full-ranking columns, MRR@20 in MRR.
        mrr_at_k = served.get(f"MRR@{served['top_k']}")
        rows.append((f"served (top-{served['top_k']})", {"full": {**served, "MRR": mrr_at_k}}))
    name_width = max(len(name) for name, _ in rows)
    header = ["model".ljust(name_width), *(title.rjust(max(len(title), 7)) for title, _ in _TABLE_COLUMNS)]
    lines = ["  ".join(header)]
    for name, result in rows:
        cells = [name.ljust(name_width)]
        for title, read in _TABLE_COLUMNS:
            value = read(result)
            cells.append(("—" if value is None else f"{value:.4f}").rjust(max(len(title), 7)))
        lines.append("  ".join(cells))
    notes = [
        f"{report['dataset']}: {report['n_users']} users, {report['n_items']} items, model {report['model_version']}"
    ]
    notes.append("full = whole catalogue, history excluded; uni/pop = 99 negatives sampled uniformly/by popularity")
    training = report.get("training") or {}
    if training.get("seconds") is not None:
        refit = (
            f", then a refit of {training['refit_epochs']} epochs from {training.get('refit_from') or 'fresh weights'}"
            if training.get("refit_epochs")
            else ""
        )
        notes.append(
            f"trained in {training['seconds']:,.0f} s on {training['torch_threads']} torch threads: "
            f"{training['epochs']} epochs (best {training['best_epoch']}){refit}"
        )
    if report.get("unknown_target_users") or report.get("dropped_users_few_known_interactions"):
        notes.append(
            f"{report.get('unknown_target_users', 0)} users' test target is outside the model's vocabulary: a miss "
            f"for every row; {report.get('dropped_users_few_known_interactions', 0)} users dropped (fewer than 3 "
            "interactions on known items)"
        )
    recall = next((key for key in report if key.startswith("ann_recall@")), None)
    if recall:
        notes.append(f"{recall} = {report[recall]:.4f} ({report['ann_recall_queries']})")
    return "\n".join([*lines, "", *notes])
