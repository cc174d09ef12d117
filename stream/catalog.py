"""The live catalog: what the shop sells right now, from the compacted topic ``items`` (key = item id).

Every worker keeps the *whole* catalog (as a Kafka Streams global table would): any user may be recommended any
item, whatever partition the user's events arrive on. A record carries the full item, so the latest record of an
item replaces what came before; an older record (by ``ts``) arriving late is ignored, and a tombstone (a message
with no value, as compaction deletes) removes the item.

The catalog is metadata for the stream path: availability (an unavailable item is never recommended), the category
(trending per category, category caps, explanations), the title (explanations, content embeddings of new items).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from streamrec.stream.decode import decode
from streamrec.stream.rejection import InvalidEvent
from streamrec.stream.validate import FORBIDDEN_ID_CHARACTERS, ValidationRules, parse_timestamp

MAX_TITLE_LENGTH = 1_000
MAX_ATTRIBUTES = 64


@dataclass(slots=True, frozen=True)
class CatalogItem:
    """One item as the shop describes it. ``ts`` is the time of this version of the record."""

    item_id: str
    title: str
    category: str | None
    price: float | None
    available: bool
    ts: float
    attributes: tuple[str, ...] = ()

    def content(self) -> dict[str, Any]:
        """The fields a content embedding reads (see ``model/content.py``)."""
        return {"title": self.title, "category": self.category, "attributes": list(self.attributes)}


class CatalogChange(StrEnum):
    """What an update did; the pipeline re-embeds an item only when its content changed."""

    NEW = "new"
    CONTENT = "content"  # title, category or attributes changed
    AVAILABILITY = "availability"
    OTHER = "other"  # price or timestamp only
    STALE = "stale"  # older than the version held: ignored
    REMOVED = "removed"


def parse_catalog_item(
    value: bytes | None, key: bytes | None, rules: ValidationRules, max_payload_bytes: int, now: float | None = None
) -> CatalogItem:
    """One catalog record from the raw message value, or :class:`InvalidEvent` with the reason.

    ``ts`` may lie at most ``rules.max_clock_skew_s`` past ``now`` (the worker's clock), as for events: the latest
    ``ts`` wins, so a record from the far future would make its item impossible to update or withdraw.
    """
    payload = decode(value, max_payload_bytes)
    item_id = _text(payload, "item_id", rules.max_id_length, required=True)
    assert item_id is not None
    if key is not None and rules.reject_key_mismatch and key.decode("utf-8", "replace") != item_id:
        raise InvalidEvent("key_mismatch", "message key differs from `item_id`")
    if "ts" not in payload or payload["ts"] is None:
        raise InvalidEvent("missing_field", "`ts` is required")
    ts = parse_timestamp(payload["ts"])
    if ts > (time.time() if now is None else now) + rules.max_clock_skew_s:
        raise InvalidEvent(
            "timestamp_out_of_range", f"`ts` {ts:.3f} lies more than {rules.max_clock_skew_s:.0f} s ahead"
        )
    available = payload.get("available", True)
    if not isinstance(available, bool):
        raise InvalidEvent("invalid_type", "`available` must be true or false")
    price = payload.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price) or price < 0:
            raise InvalidEvent("invalid_value", "`price` must be a non-negative number")
        price = float(price)
    return CatalogItem(
        item_id=item_id,
        title=_text(payload, "title", MAX_TITLE_LENGTH, required=False) or "",
        category=_text(payload, "category", rules.max_id_length, required=False),
        price=price,
        available=available,
        ts=ts,
        attributes=_attributes(payload.get("attributes")),
    )


def _text(payload: Mapping[str, Any], name: str, max_length: int, *, required: bool) -> str | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise InvalidEvent("missing_field", f"`{name}` is required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent("invalid_type", f"`{name}` must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if required and not text:
        raise InvalidEvent("empty_id", f"`{name}` is empty")
    if len(text) > max_length:
        raise InvalidEvent("id_too_long", f"`{name}` has {len(text)} characters > {max_length}")
    if name != "title" and FORBIDDEN_ID_CHARACTERS.search(text):
        raise InvalidEvent("invalid_characters", f"`{name}` holds a control or format character")
    return text or None


def _attributes(value: Any) -> tuple[str, ...]:
    """Attributes as ``"key:value"`` strings: a list of strings or an object of scalars is accepted."""
    if value is None:
        return ()
    if isinstance(value, dict):
        pairs = [f"{k}:{v}" for k, v in value.items() if isinstance(v, str | int | float) and not isinstance(v, bool)]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        pairs = [v for v in value if v.strip()]
    else:
        raise InvalidEvent("invalid_type", "`attributes` must be a list of strings or an object")
    if len(pairs) > MAX_ATTRIBUTES:
        raise InvalidEvent("invalid_value", f"more than {MAX_ATTRIBUTES} attributes")
    return tuple(pair[:MAX_TITLE_LENGTH] for pair in pairs)


class Catalog:
    """The latest version of every item. Items the catalog never mentioned count as available."""

    def __init__(self) -> None:
        self._items: dict[str, CatalogItem] = {}
        self.n_unavailable = 0

    def upsert(self, item: CatalogItem) -> CatalogChange:
        held = self._items.get(item.item_id)
        if held is not None and item.ts < held.ts:
            return CatalogChange.STALE
        self._items[item.item_id] = item
        if held is None:
            self.n_unavailable += not item.available
            return CatalogChange.NEW
        self.n_unavailable += int(not item.available) - int(not held.available)
        if (item.title, item.category, item.attributes) != (held.title, held.category, held.attributes):
            return CatalogChange.CONTENT
        if item.available != held.available:
            return CatalogChange.AVAILABILITY
        return CatalogChange.OTHER

    def remove(self, item_id: str) -> CatalogChange:
        """A tombstone: the item is gone from the shop, so it is treated as unavailable from now on."""
        held = self._items.get(item_id)
        if held is None:
            return CatalogChange.STALE
        self._items[item_id] = CatalogItem(
            item_id, held.title, held.category, held.price, available=False, ts=held.ts, attributes=held.attributes
        )
        self.n_unavailable += held.available
        return CatalogChange.REMOVED

    def get(self, item_id: str) -> CatalogItem | None:
        return self._items.get(item_id)

    def is_available(self, item_id: str) -> bool:
        item = self._items.get(item_id)
        return item is None or item.available

    def category_of(self, item_id: str) -> str | None:
        item = self._items.get(item_id)
        return None if item is None else item.category

    def title_of(self, item_id: str) -> str | None:
        item = self._items.get(item_id)
        return None if item is None or not item.title else item.title

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[CatalogItem]:
        return iter(self._items.values())

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items
