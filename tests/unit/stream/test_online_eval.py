"""Online evaluation: each user's next event against the list they were last shown; coverage and diversity."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamrec.model.events import Event, EventType
from streamrec.stream.filters import ScoredItem
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.online_eval import ListStatistics, OnlineEvaluation, intra_list_diversity, shown_list
from streamrec.stream.user_state import UserState

T0 = 1_800_000_000.0


def _items(*ids: str) -> list[ScoredItem]:
    sources = ["ann", "covisitation", "trending"]
    return [
        ScoredItem(item, 1.0 / (n + 1), sources[n % 3], reason_code="similar_to_recent:x" if n % 3 == 0 else "trending")
        for n, item in enumerate(ids)
    ]


def _state(shown: list[ScoredItem] | None, variant: str = "a") -> UserState:
    state = UserState("u1", deque())
    if shown is not None:
        state.last_list = shown_list(shown, variant, Event("u1", "answered", EventType.VIEW, T0))
    return state


def _value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_hit_is_counted_at_its_rank_depths_source_and_explanation() -> None:
    online = OnlineEvaluation(window_s=600)
    ids = [f"i{n}" for n in range(20)]
    online.observe(_state(_items(*ids)), Event("u1", "i6", EventType.CART, T0 + 30))  # rank 7
    metrics = WorkerMetrics(CollectorRegistry())
    online.take().record(metrics)
    assert _value(metrics, "streamrec_online_evaluated_total", variant="a", event_type="cart") == 1
    assert _value(metrics, "streamrec_online_hits_total", variant="a", event_type="cart", k="5") == 0
    assert _value(metrics, "streamrec_online_hits_total", variant="a", event_type="cart", k="10") == 1
    assert _value(metrics, "streamrec_online_hits_total", variant="a", event_type="cart", k="20") == 1
    assert _value(metrics, "streamrec_online_hit_rank_sum", variant="a") == 7
    assert _value(metrics, "streamrec_online_source_hits_total", variant="a", source="ann") == 1  # 6 % 3 == 0
    assert _value(metrics, "streamrec_online_reason_hits_total", variant="a", reason="similar_to_recent") == 1


def test_a_miss_counts_as_evaluated_only() -> None:
    online = OnlineEvaluation(window_s=600)
    online.observe(_state(_items("a", "b")), Event("u1", "zzz", EventType.VIEW, T0 + 1))
    tally = online.take()
    assert tally.evaluated == {("a", "view"): 1} and not tally.hits and not tally.ranks


@pytest.mark.parametrize("delay", [-1.0, 601.0])
def test_events_outside_the_window_are_not_evaluated(delay: float) -> None:
    online = OnlineEvaluation(window_s=600)
    online.observe(_state(_items("a")), Event("u1", "a", EventType.VIEW, T0 + delay))
    assert not online.take().evaluated


def test_only_the_first_event_after_a_list_is_evaluated() -> None:
    online = OnlineEvaluation(window_s=600)
    state = _state(_items("a", "b"))
    for ts in (T0 + 1, T0 + 2, T0 + 3):  # view, cart, buy of one item: one answer to one list
        online.observe(state, Event("u1", "a", EventType.VIEW, ts))
    tally = online.take()
    assert tally.evaluated == {("a", "view"): 1} and sum(tally.hits.values()) == 3  # k = 5, 10, 20
    assert not online.take().evaluated  # take() starts a new tally


def test_events_the_list_could_not_hold_are_not_evaluated() -> None:
    online = OnlineEvaluation(window_s=600)
    state = _state(_items("a", "b"))
    online.observe(state, Event("u1", "answered", EventType.CART, T0 + 1))  # the item the list answered
    state.bought["old"] = None
    online.observe(state, Event("u1", "old", EventType.BUY, T0 + 2))  # a repeat purchase
    assert not online.take().evaluated
    online.observe(state, Event("u1", "b", EventType.VIEW, T0 + 3))  # the list still answers the next event
    assert online.take().hits == {("a", "view", 5): 1, ("a", "view", 10): 1, ("a", "view", 20): 1}


def test_the_list_stays_for_the_read_path_after_it_is_evaluated() -> None:
    online = OnlineEvaluation(window_s=600)
    state = _state(_items("a"))
    online.observe(state, Event("u1", "a", EventType.VIEW, T0 + 1))
    assert state.last_list is not None and state.last_list.item_ids == ("a",)


def test_no_list_no_evaluation() -> None:
    online = OnlineEvaluation(window_s=600)
    online.observe(_state(None), Event("u1", "a", EventType.VIEW, T0))
    assert not online.take().evaluated


def test_intra_list_diversity_is_the_mean_pairwise_cosine_distance() -> None:
    same = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    orthogonal = np.eye(3, dtype=np.float32)
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    assert intra_list_diversity(same) == pytest.approx(0.0)
    assert intra_list_diversity(orthogonal) == pytest.approx(1.0)
    assert intra_list_diversity(opposite) == pytest.approx(2.0)
    assert intra_list_diversity(same[:1]) == 0.0


class _Table:
    """The parts of an item table the list statistics read."""

    def __init__(self, n: int) -> None:
        self.item_ids = [f"i{n}" for n in range(n)]
        self.row_of = {item: row for row, item in enumerate(self.item_ids)}
        self.unit_embeddings = np.eye(n, dtype=np.float32)
        self.index = self.item_ids

    def __len__(self) -> int:
        return len(self.item_ids)


def test_coverage_counts_distinct_items_and_diversity_every_sampled_list() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    statistics = ListStatistics("a", _Table(10), rng_seed=0)  # type: ignore[arg-type]
    statistics.observe([_items("i0", "i1"), _items("i1", "i2", "unknown")], metrics)
    assert _value(metrics, "streamrec_recommended_items", variant="a") == 3
    assert _value(metrics, "streamrec_catalog_coverage_ratio", variant="a") == pytest.approx(0.3)
    assert _value(metrics, "streamrec_list_diversity_count", variant="a") == 2
    assert _value(metrics, "streamrec_list_diversity_sum", variant="a") == pytest.approx(2.0)  # orthogonal rows
