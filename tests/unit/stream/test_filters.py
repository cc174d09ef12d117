from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from streamrec.model.events import Event, EventType
from streamrec.stream.filters import ScoredItem, allowed_pool
from streamrec.stream.rules import DenyList, ExcludeBought, ExcludeCurrentItem, Request, RuleSet
from streamrec.stream.user_state import UserState


def items(*ids: str, source: str = "ann") -> list[ScoredItem]:
    return [ScoredItem(item_id, 1.0 / (n + 1), source) for n, item_id in enumerate(ids)]


def request(current: str = "now", bought: tuple[str, ...] = ()) -> Request:
    state = UserState(user_id="u", recent=deque(maxlen=50))
    state.bought.update(dict.fromkeys(bought))
    return Request.of(state, Event(user_id="u", item_id=current, event_type=EventType.VIEW, ts=0.0))


RULES = [ExcludeBought(), ExcludeCurrentItem(), DenyList(items=["denied"])]


def ids(pool: list[ScoredItem]) -> list[str]:
    return [item.item_id for item in pool]


def test_scored_item_defaults_mark_an_unknown_exploited_item_without_explanation() -> None:
    item = ScoredItem("a", 0.5, "trending")
    assert (item.row, item.context, item.explore, item.reason, item.reason_code) == (-1, None, False, "", "")


def test_blocked_items_never_enter_the_pool_and_order_is_kept() -> None:
    pool = allowed_pool(
        items("a", "now", "b", "denied", "bought", "c"), request(bought=("bought",)), RuleSet(RULES), size=10
    )
    assert ids(pool) == ["a", "b", "c"]


def test_duplicates_are_kept_once_at_their_best_position() -> None:
    candidates = items("a", "b", "a", "c", "b")
    pool = allowed_pool(candidates, request(), RuleSet(RULES), size=10)
    assert ids(pool) == ["a", "b", "c"]
    assert pool[0] is candidates[0]  # the first (best) occurrence, with its own score and source


def test_pool_stops_at_size_and_blocked_items_do_not_use_up_slots() -> None:
    pool = allowed_pool(items("now", "a", "denied", "b", "c", "d"), request(), RuleSet(RULES), size=3)
    assert ids(pool) == ["a", "b", "c"]


def test_pool_is_shorter_than_size_when_few_items_are_allowed() -> None:
    assert ids(allowed_pool(items("a", "now", "a"), request(), RuleSet(RULES), size=5)) == ["a"]
    assert allowed_pool(items("a", "b"), request(), RuleSet(RULES), size=0) == []


def test_pool_reads_a_lazy_iterable_only_as_far_as_needed() -> None:
    consumed: list[str] = []

    def candidates() -> Iterator[ScoredItem]:
        for item in items("a", "b", "c", "d"):
            consumed.append(item.item_id)
            yield item

    assert ids(allowed_pool(candidates(), request(), RuleSet(RULES), size=2)) == ["a", "b"]
    assert "d" not in consumed


def test_rule_counts_count_each_blocked_item_once_even_when_duplicated() -> None:
    rules = RuleSet(RULES)
    allowed_pool(items("now", "now", "denied", "a", "denied"), request(), rules, size=10)
    assert rules.take_counts() == {"bought": 0, "current_item": 1, "deny_list": 1}
