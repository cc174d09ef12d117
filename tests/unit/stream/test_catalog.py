from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamrec.stream.catalog import Catalog, CatalogChange, CatalogItem, parse_catalog_item
from streamrec.stream.rejection import InvalidEvent
from streamrec.stream.validate import ValidationRules

RULES = ValidationRules()
MAX_BYTES = 10_000


def raw(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def parse(value: bytes | None, key: bytes | None = None) -> CatalogItem:
    return parse_catalog_item(value, key, RULES, MAX_BYTES)


def reason_of(value: bytes | None, key: bytes | None = None) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse(value, key)
    return info.value.reason


def item(item_id: str = "i1", ts: float = 100.0, **overrides: Any) -> CatalogItem:
    fields: dict[str, Any] = dict(
        title="Red shoe", category="shoes", price=10.0, available=True, ts=ts, attributes=("color:red",)
    )
    fields.update(overrides)
    return CatalogItem(item_id=item_id, **fields)


# --- parsing ---------------------------------------------------------------------------------------------------


def test_valid_record_with_list_attributes_is_parsed_field_by_field() -> None:
    parsed = parse(
        raw(
            item_id="i1", title="  Red shoe ", category="shoes", price=19, available=False, ts=5, attributes=["a", " "]
        ),
        key=b"i1",
    )
    assert parsed == CatalogItem(
        item_id="i1", title="Red shoe", category="shoes", price=19.0, available=False, ts=5.0, attributes=("a",)
    )
    assert isinstance(parsed.price, float)
    assert parsed.content() == {"title": "Red shoe", "category": "shoes", "attributes": ["a"]}


def test_dict_attributes_become_key_value_pairs_and_non_scalars_are_dropped() -> None:
    parsed = parse(raw(item_id="i1", ts=1, attributes={"color": "red", "size": 42, "nested": {"x": 1}, "flag": True}))
    assert parsed.attributes == ("color:red", "size:42")


def test_attributes_of_the_wrong_shape_are_rejected() -> None:
    assert reason_of(raw(item_id="i1", ts=1, attributes="red")) == "invalid_type"
    assert reason_of(raw(item_id="i1", ts=1, attributes=["red", 3])) == "invalid_type"


def test_optional_fields_default_and_available_defaults_to_true() -> None:
    parsed = parse(raw(item_id=7, ts=1))
    assert parsed.item_id == "7"
    assert parsed.available is True
    assert (parsed.title, parsed.category, parsed.price, parsed.attributes) == ("", None, None, ())


def test_missing_item_id_or_ts_is_a_missing_field() -> None:
    assert reason_of(raw(ts=1)) == "missing_field"
    assert reason_of(raw(item_id=None, ts=1)) == "missing_field"
    assert reason_of(raw(item_id="i1")) == "missing_field"
    assert reason_of(raw(item_id="i1", ts=None)) == "missing_field"


def test_non_boolean_available_is_an_invalid_type() -> None:
    assert reason_of(raw(item_id="i1", ts=1, available="yes")) == "invalid_type"
    assert reason_of(raw(item_id="i1", ts=1, available=1)) == "invalid_type"


@pytest.mark.parametrize("price", [-0.01, -5, "10", True])
def test_negative_or_non_numeric_price_is_an_invalid_value(price: Any) -> None:
    assert reason_of(raw(item_id="i1", ts=1, price=price)) == "invalid_value"


def test_nan_or_infinite_price_never_reaches_the_catalog() -> None:
    # JSON has no NaN or infinity: the decoder already rejects them before the price check.
    assert reason_of(b'{"item_id": "i1", "ts": 1, "price": NaN}') == "not_json"
    assert reason_of(b'{"item_id": "i1", "ts": 1, "price": 1e400}') == "not_json"


def test_zero_price_is_accepted() -> None:
    assert parse(raw(item_id="i1", ts=1, price=0)).price == 0.0


def test_message_key_must_match_the_item_id() -> None:
    assert reason_of(raw(item_id="i1", ts=1), key=b"i2") == "key_mismatch"
    assert parse(raw(item_id="i1", ts=1), key=None).item_id == "i1"


def test_key_mismatch_is_allowed_when_the_rules_say_so() -> None:
    lenient = ValidationRules(reject_key_mismatch=False)
    assert parse_catalog_item(raw(item_id="i1", ts=1), b"i2", lenient, MAX_BYTES).item_id == "i1"


def test_payload_that_is_not_json_is_rejected() -> None:
    assert reason_of(b"{not json") == "not_json"


def test_iso_timestamps_are_accepted_and_naive_ones_are_utc() -> None:
    assert parse(raw(item_id="i1", ts="2024-01-01T00:00:00Z")).ts == 1_704_067_200.0
    assert parse(raw(item_id="i1", ts="2024-01-01T01:00:00+01:00")).ts == 1_704_067_200.0
    assert parse(raw(item_id="i1", ts="2024-01-01T00:00:00")).ts == 1_704_067_200.0
    assert reason_of(raw(item_id="i1", ts="yesterday")) == "invalid_timestamp"


# --- the catalog -----------------------------------------------------------------------------------------------


def test_first_record_of_an_item_is_new() -> None:
    catalog = Catalog()
    assert catalog.upsert(item()) is CatalogChange.NEW
    assert len(catalog) == 1 and "i1" in catalog
    assert catalog.get("i1") == item()


@pytest.mark.parametrize(
    "change", [{"title": "Blue shoe"}, {"category": "boots"}, {"attributes": ("color:blue",)}], ids=str
)
def test_title_category_or_attribute_change_is_a_content_change(change: dict[str, Any]) -> None:
    catalog = Catalog()
    catalog.upsert(item(ts=1.0))
    assert catalog.upsert(item(ts=2.0, **change)) is CatalogChange.CONTENT
    assert catalog.get("i1") == item(ts=2.0, **change)


def test_availability_flip_is_reported_as_such() -> None:
    catalog = Catalog()
    catalog.upsert(item(ts=1.0))
    assert catalog.upsert(item(ts=2.0, available=False)) is CatalogChange.AVAILABILITY
    assert not catalog.is_available("i1")


def test_price_only_change_is_other_and_does_not_ask_for_a_reembedding() -> None:
    catalog = Catalog()
    catalog.upsert(item(ts=1.0))
    assert catalog.upsert(item(ts=2.0, price=99.0)) is CatalogChange.OTHER
    held = catalog.get("i1")
    assert held is not None and held.price == 99.0


def test_older_record_is_stale_and_the_newer_value_is_kept() -> None:
    catalog = Catalog()
    catalog.upsert(item(ts=10.0, title="New title"))
    assert catalog.upsert(item(ts=5.0, title="Old title", available=False)) is CatalogChange.STALE
    assert catalog.title_of("i1") == "New title"
    assert catalog.is_available("i1")
    assert catalog.n_unavailable == 0


def test_unavailable_count_follows_flips_in_both_directions() -> None:
    catalog = Catalog()
    catalog.upsert(item("a", ts=1.0, available=False))
    catalog.upsert(item("b", ts=1.0))
    assert catalog.n_unavailable == 1
    catalog.upsert(item("b", ts=2.0, available=False))
    assert catalog.n_unavailable == 2
    catalog.upsert(item("b", ts=3.0, available=False, price=1.0))  # still unavailable: not counted twice
    assert catalog.n_unavailable == 2
    catalog.upsert(item("a", ts=2.0))
    catalog.upsert(item("b", ts=4.0))
    assert catalog.n_unavailable == 0
    assert sum(not entry.available for entry in catalog) == catalog.n_unavailable


def test_tombstone_makes_an_item_unavailable_but_keeps_its_metadata() -> None:
    catalog = Catalog()
    catalog.upsert(item(ts=1.0))
    assert catalog.remove("i1") is CatalogChange.REMOVED
    assert not catalog.is_available("i1")
    assert catalog.n_unavailable == 1
    assert catalog.category_of("i1") == "shoes"
    assert catalog.remove("i1") is CatalogChange.REMOVED
    assert catalog.n_unavailable == 1  # removing twice does not count twice


def test_newer_record_after_a_tombstone_brings_the_item_back() -> None:
    catalog = Catalog()
    catalog.upsert(item(ts=1.0))
    catalog.remove("i1")
    assert catalog.upsert(item(ts=0.5)) is CatalogChange.STALE
    assert not catalog.is_available("i1")
    catalog.upsert(item(ts=2.0))
    assert catalog.is_available("i1")
    assert catalog.n_unavailable == 0


def test_removing_an_unknown_item_is_stale_and_changes_nothing() -> None:
    catalog = Catalog()
    assert catalog.remove("ghost") is CatalogChange.STALE
    assert len(catalog) == 0 and catalog.n_unavailable == 0


def test_items_the_catalog_never_mentioned_count_as_available_without_metadata() -> None:
    catalog = Catalog()
    assert catalog.is_available("unknown")
    assert catalog.get("unknown") is None
    assert catalog.category_of("unknown") is None
    assert catalog.title_of("unknown") is None


def test_category_and_title_lookups_with_an_empty_title_as_none() -> None:
    catalog = Catalog()
    catalog.upsert(item("a", title="Lamp", category="home"))
    catalog.upsert(item("b", title="", category=None))
    assert (catalog.category_of("a"), catalog.title_of("a")) == ("home", "Lamp")
    assert (catalog.category_of("b"), catalog.title_of("b")) == (None, None)


def test_a_record_from_the_far_future_is_rejected_so_its_item_stays_withdrawable() -> None:
    now = 1_800_000_000.0
    with pytest.raises(InvalidEvent) as caught:
        parse_catalog_item(raw(item_id="i1", ts=now + 2 * 86_400), None, RULES, MAX_BYTES, now=now)
    assert caught.value.reason == "timestamp_out_of_range"
    assert parse_catalog_item(raw(item_id="i1", ts=now + 3600), None, RULES, MAX_BYTES, now=now).ts == now + 3600


@pytest.mark.parametrize("item_id", ["i\x001", "evil\u202etxt.exe", "zero\u200bwidth"])
def test_ids_with_control_or_format_characters_are_rejected(item_id: str) -> None:
    assert reason_of(raw(item_id=item_id, ts=1)) == "invalid_characters"
    assert reason_of(raw(item_id="i1", ts=1, category=f"shoes{item_id}")) == "invalid_characters"
