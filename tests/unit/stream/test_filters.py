from __future__ import annotations

from collections import deque

from streamrec.model.events import Event, EventType
from streamrec.stream.catalog import Catalog, CatalogItem
from streamrec.stream.filters import ScoredItem, allowed_pool
from streamrec.stream.rules import (
    DenyList,
    ExcludeBought,
    ExcludeCurrentItem,
    ExcludeIgnored,
    ExcludeUnavailable,
    Request,
    RuleSet,
)
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


def test_blocked_items_after_the_pool_is_full_are_not_counted() -> None:
    rules = RuleSet(RULES)
    assert ids(allowed_pool(items("now", "a", "b", "denied", "c"), request(), rules, size=2)) == ["a", "b"]
    assert rules.take_counts() == {"bought": 0, "current_item": 1, "deny_list": 0}


class OddLengthIds:
    """A rule written item by item only (no ``blocks_many``), as a shop's own rule may be."""

    name = "odd_length"

    def blocks(self, item_id: str, request: Request) -> bool:
        return len(item_id) % 2 == 1


def test_a_rule_without_a_list_form_is_asked_item_by_item_and_the_first_blocking_rule_counts() -> None:
    rules = RuleSet([*RULES, OddLengthIds()])
    pool = allowed_pool(items("now", "ab", "c", "denied", "de", "fgh"), request(), rules, size=10)
    assert ids(pool) == ["ab", "de"]
    # "now" and "denied" have odd lengths too, but an earlier rule blocked them first.
    assert rules.take_counts() == {"bought": 0, "current_item": 1, "deny_list": 1, "odd_length": 2}


def test_list_answers_of_the_built_in_rules_match_their_item_answers() -> None:
    the_request = request(current="x", bought=("b1", "b2"))
    the_request.state.shown.update({"s": 5, "t": 1})
    the_request.exclude_items = frozenset({"e"})
    catalog = Catalog()
    catalog.upsert(CatalogItem("gone", "Gone", None, None, available=False, ts=0.0))
    rules = [
        ExcludeBought(),
        ExcludeCurrentItem(),
        ExcludeUnavailable(catalog),
        DenyList(items=["d"], per_tenant={"t1": ["tenant-only"]}),
        ExcludeIgnored(max_impressions=3),
    ]
    candidates = ["x", "b1", "b2", "gone", "d", "e", "s", "t", "tenant-only", "free"]
    for tenant in (None, "t1"):
        the_request.tenant = tenant
        for rule in rules:
            expected = [rule.blocks(item, the_request) for item in candidates]
            assert rule.blocks_many(candidates, the_request) == expected
            assert any(expected), rule.name


def test_rule_counts_count_each_blocked_item_once_even_when_duplicated() -> None:
    rules = RuleSet(RULES)
    allowed_pool(items("now", "now", "denied", "a", "denied"), request(), rules, size=10)
    assert rules.take_counts() == {"bought": 0, "current_item": 1, "deny_list": 1}
