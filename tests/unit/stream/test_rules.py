from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from streamrec.model.events import Event, EventType
from streamrec.stream.catalog import Catalog, CatalogItem
from streamrec.stream.rules import (
    MAX_REQUEST_EXCLUSIONS,
    DenyList,
    ExcludeBought,
    ExcludeCurrentItem,
    ExcludeIgnored,
    ExcludeUnavailable,
    Request,
    RuleSet,
)
from streamrec.stream.user_state import UserState


def state() -> UserState:
    return UserState(user_id="u", recent=deque(maxlen=50))


def request(item_id: str = "current", context: dict[str, Any] | None = None, user: UserState | None = None) -> Request:
    trigger = Event(user_id="u", item_id=item_id, event_type=EventType.VIEW, ts=0.0, context=context)
    return Request.of(user or state(), trigger)


def catalog_item(item_id: str, available: bool) -> CatalogItem:
    return CatalogItem(item_id, title="", category=None, price=None, available=available, ts=0.0)


# --- Request.of ------------------------------------------------------------------------------------------------


def test_request_reads_tenant_and_exclusions_from_the_trigger_context() -> None:
    req = request(context={"tenant": "shop-eu", "exclude_items": ["a", 7, "b"]})
    assert req.user_id == "u"
    assert req.tenant == "shop-eu"
    assert req.exclude_items == frozenset({"a", "7", "b"})


def test_request_without_context_has_no_tenant_and_no_exclusions() -> None:
    req = request(context=None)
    assert req.tenant is None
    assert req.exclude_items == frozenset()


def test_numeric_tenant_is_a_string_and_other_types_are_ignored() -> None:
    assert request(context={"tenant": 12}).tenant == "12"
    assert request(context={"tenant": True}).tenant is None
    assert request(context={"tenant": {"id": "x"}}).tenant is None


@pytest.mark.parametrize("excluded", ["a", {"a": 1}, 5, None])
def test_exclusions_that_are_not_a_list_are_ignored(excluded: Any) -> None:
    assert request(context={"exclude_items": excluded}).exclude_items == frozenset()


def test_exclusion_entries_of_bad_types_are_skipped() -> None:
    req = request(context={"exclude_items": ["a", None, 1.5, {"id": "b"}, ["c"], 3]})
    assert req.exclude_items == frozenset({"a", "3"})


def test_request_exclusions_are_capped() -> None:
    many = [f"i{n}" for n in range(MAX_REQUEST_EXCLUSIONS + 50)]
    req = request(context={"exclude_items": many})
    assert len(req.exclude_items) == MAX_REQUEST_EXCLUSIONS
    assert f"i{MAX_REQUEST_EXCLUSIONS - 1}" in req.exclude_items
    assert f"i{MAX_REQUEST_EXCLUSIONS}" not in req.exclude_items


# --- single rules ----------------------------------------------------------------------------------------------


def test_bought_items_are_blocked() -> None:
    user = state()
    user.bought["a"] = None
    req = request(user=user)
    assert ExcludeBought().blocks("a", req)
    assert not ExcludeBought().blocks("b", req)


def test_the_item_of_the_trigger_event_is_blocked() -> None:
    req = request(item_id="x")
    assert ExcludeCurrentItem().blocks("x", req)
    assert not ExcludeCurrentItem().blocks("y", req)


def test_unavailable_items_are_blocked_and_unknown_items_pass() -> None:
    catalog = Catalog()
    catalog.upsert(catalog_item("gone", available=False))
    catalog.upsert(catalog_item("here", available=True))
    rule = ExcludeUnavailable(catalog)
    req = request()
    assert rule.blocks("gone", req)
    assert not rule.blocks("here", req)
    assert not rule.blocks("never-heard-of", req)


def test_unavailable_rule_sees_catalog_updates_after_it_was_built() -> None:
    catalog = Catalog()
    rule = ExcludeUnavailable(catalog)
    catalog.upsert(catalog_item("a", available=True))
    assert not rule.blocks("a", request())
    catalog.remove("a")
    assert rule.blocks("a", request())


def test_global_deny_list_blocks_for_every_tenant() -> None:
    rule = DenyList(items=["banned"])
    assert rule.blocks("banned", request(context={"tenant": "t1"}))
    assert rule.blocks("banned", request())
    assert not rule.blocks("fine", request())


def test_tenant_deny_list_applies_only_to_that_tenant() -> None:
    rule = DenyList(per_tenant={"t1": ["alcohol"], "t2": ["pork"]})
    assert rule.blocks("alcohol", request(context={"tenant": "t1"}))
    assert not rule.blocks("alcohol", request(context={"tenant": "t2"}))
    assert not rule.blocks("alcohol", request())
    assert rule.blocks("pork", request(context={"tenant": "t2"}))


def test_request_exclusions_block_only_that_request() -> None:
    rule = DenyList()
    assert rule.blocks("on-page", request(context={"exclude_items": ["on-page"]}))
    assert not rule.blocks("on-page", request())


def test_item_ignored_max_impressions_times_is_blocked_until_the_user_engages() -> None:
    user = state()
    rule = ExcludeIgnored(max_impressions=3)
    user.record_shown(["a", "b"])
    user.record_shown(["a", "b"])
    user.record_shown(["a"])
    req = request(user=user)
    assert rule.blocks("a", req)  # shown 3 times
    assert not rule.blocks("b", req)  # shown twice
    assert not rule.blocks("c", req)  # never shown
    assert user.record_engaged("a")
    assert not rule.blocks("a", req)
    assert not user.record_engaged("never-shown")


def test_ignored_rule_needs_a_positive_threshold() -> None:
    with pytest.raises(ValueError):
        ExcludeIgnored(max_impressions=0)


# --- the rule set ----------------------------------------------------------------------------------------------


def test_rule_set_names_the_first_blocking_rule_and_counts_it_only() -> None:
    user = state()
    user.bought["x"] = None
    rules = RuleSet([ExcludeBought(), ExcludeCurrentItem(), DenyList(items=["x", "d"])])
    req = request(item_id="x", user=user)
    assert rules.blocking_rule("x", req) == "bought"  # bought, current and denied: the first rule wins
    assert rules.blocking_rule("d", req) == "deny_list"
    assert rules.blocking_rule("ok", req) is None
    assert rules.allows("ok", req)
    assert not rules.allows("d", req)
    assert rules.blocked == {"bought": 1, "current_item": 0, "deny_list": 2}


def test_rule_order_decides_which_rule_is_blamed() -> None:
    user = state()
    user.bought["x"] = None
    rules = RuleSet([ExcludeCurrentItem(), ExcludeBought()])
    assert rules.blocking_rule("x", request(item_id="x", user=user)) == "current_item"


def test_take_counts_returns_counts_since_last_call_and_resets() -> None:
    rules = RuleSet([ExcludeCurrentItem(), DenyList(items=["d"])])
    req = request(item_id="x")
    for item_id in ["x", "x", "d", "ok"]:
        rules.allows(item_id, req)
    assert rules.take_counts() == {"current_item": 2, "deny_list": 1}
    assert rules.take_counts() == {"current_item": 0, "deny_list": 0}
    rules.allows("d", req)
    assert rules.take_counts() == {"current_item": 0, "deny_list": 1}


def test_empty_rule_set_allows_everything() -> None:
    rules = RuleSet([])
    assert rules.allows("anything", request())
    assert rules.take_counts() == {}
