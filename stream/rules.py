"""Business rules: small, composable checks that keep an item out of one user's recommendations.

Each rule answers one question about one item for one request, so a merchandiser's policy is a list of rules
(:class:`RuleSet`) that is easy to read, test and extend. List-level limits that depend on what was already chosen
(category caps) live in the selection stage (``stream/filters.py``), which asks the rule set about every candidate.

Per-request input comes from the triggering event's ``context`` object:

* ``context.tenant`` — the shop or storefront the event belongs to; selects a per-tenant deny list;
* ``context.exclude_items`` — items this request must not show (e.g. what is already on the page).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from streamrec.model.events import Event
from streamrec.stream.catalog import Catalog
from streamrec.stream.settings import Settings
from streamrec.stream.user_state import UserState

MAX_REQUEST_EXCLUSIONS = 1_000


@dataclass(slots=True)
class Request:
    """One recommendation to build: the user, their state after the trigger event, and request-level inputs."""

    user_id: str
    state: UserState
    trigger: Event
    tenant: str | None = None
    exclude_items: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, state: UserState, trigger: Event) -> Request:
        context = trigger.context or {}
        tenant = context.get("tenant")
        excluded = context.get("exclude_items")
        items: frozenset[str] = frozenset()
        if isinstance(excluded, list):
            items = frozenset(str(item) for item in excluded[:MAX_REQUEST_EXCLUSIONS] if isinstance(item, str | int))
        return cls(
            user_id=trigger.user_id,
            state=state,
            trigger=trigger,
            tenant=str(tenant) if isinstance(tenant, str | int) and not isinstance(tenant, bool) else None,
            exclude_items=items,
        )


class ItemRule(Protocol):
    """A rule that may block one item for one request. ``name`` labels the metric of blocked items."""

    name: str

    def blocks(self, item_id: str, request: Request) -> bool: ...


class ManyItemRule(ItemRule, Protocol):
    """A rule that can also judge a whole list at once (the list builder's hot path asks rules for lists)."""

    def blocks_many(self, item_ids: Sequence[str], request: Request) -> list[bool]: ...


class ExcludeBought:
    """A purchased item is not recommended again (the user state remembers the latest purchases)."""

    name = "bought"

    def blocks(self, item_id: str, request: Request) -> bool:
        return item_id in request.state.bought

    def blocks_many(self, item_ids: Sequence[str], request: Request) -> list[bool]:
        bought = request.state.bought
        return [item_id in bought for item_id in item_ids]


class ExcludeCurrentItem:
    """The item the user is looking at right now is not recommended back to them."""

    name = "current_item"

    def blocks(self, item_id: str, request: Request) -> bool:
        return item_id == request.trigger.item_id

    def blocks_many(self, item_ids: Sequence[str], request: Request) -> list[bool]:
        current = request.trigger.item_id
        return [item_id == current for item_id in item_ids]


class ExcludeUnavailable:
    """Items the catalog marks unavailable (or deleted) are never recommended."""

    name = "unavailable"

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def blocks(self, item_id: str, request: Request) -> bool:
        return not self.catalog.is_available(item_id)

    def blocks_many(self, item_ids: Sequence[str], request: Request) -> list[bool]:
        if not self.catalog.n_unavailable:
            return [False] * len(item_ids)
        available = self.catalog.is_available
        return [not available(item_id) for item_id in item_ids]


class DenyList:
    """Items no user may see (``deny_items``), items one tenant's users may not see, and the request's own list."""

    name = "deny_list"

    def __init__(self, items: Sequence[str] = (), per_tenant: Mapping[str, Sequence[str]] | None = None) -> None:
        self.items = frozenset(items)
        self.per_tenant = {tenant: frozenset(denied) for tenant, denied in (per_tenant or {}).items()}

    def blocks(self, item_id: str, request: Request) -> bool:
        if item_id in self.items or item_id in request.exclude_items:
            return True
        tenant_items = self.per_tenant.get(request.tenant) if request.tenant is not None else None
        return tenant_items is not None and item_id in tenant_items

    def blocks_many(self, item_ids: Sequence[str], request: Request) -> list[bool]:
        denied = [self.items, request.exclude_items]
        if request.tenant is not None and (tenant_items := self.per_tenant.get(request.tenant)) is not None:
            denied.append(tenant_items)
        denied = [items for items in denied if items]
        return [any(item_id in items for items in denied) for item_id in item_ids]


class ExcludeIgnored:
    """An item recommended ``max_impressions`` times without the user touching it stops being recommended.

    Impressions are counted per user from the published recommendations and reset when the user interacts
    with the item (``UserState.shown``).
    """

    name = "ignored"

    def __init__(self, max_impressions: int) -> None:
        if max_impressions < 1:
            raise ValueError("max_impressions must be at least 1")
        self.max_impressions = max_impressions

    def blocks(self, item_id: str, request: Request) -> bool:
        return request.state.shown.get(item_id, 0) >= self.max_impressions

    def blocks_many(self, item_ids: Sequence[str], request: Request) -> list[bool]:
        shown, limit = request.state.shown, self.max_impressions
        return [shown.get(item_id, 0) >= limit for item_id in item_ids]


class RuleSet:
    """Rules applied in order; the first that blocks an item names the reason. Counts what each rule blocked."""

    def __init__(self, rules: Sequence[ItemRule]) -> None:
        self.rules = list(rules)
        self.blocked: dict[str, int] = {rule.name: 0 for rule in self.rules}

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Catalog) -> RuleSet:
        """The rules every list obeys, then the deny lists and the ignored-item cap where configured."""
        rules: list[ItemRule] = [ExcludeBought(), ExcludeCurrentItem(), ExcludeUnavailable(catalog)]
        if settings.deny_items or settings.tenant_deny_items:
            rules.append(DenyList(settings.deny_items, settings.tenant_deny_items))
        if settings.max_impressions_without_engagement:
            rules.append(ExcludeIgnored(settings.max_impressions_without_engagement))
        return cls(rules)

    def blocking_rule(self, item_id: str, request: Request) -> str | None:
        for rule in self.rules:
            if rule.blocks(item_id, request):
                self.blocked[rule.name] += 1
                return rule.name
        return None

    def allows(self, item_id: str, request: Request) -> bool:
        return self.blocking_rule(item_id, request) is None

    def first_allowed(self, item_ids: Sequence[str], request: Request, size: int) -> np.ndarray:
        """Positions of the first ``size`` of ``item_ids`` that no rule blocks, in order.

        Counts what :meth:`blocking_rule` would have counted asking item by item until ``size`` were allowed: each
        blocked item before the last allowed one, under the first rule that blocks it.
        """
        if size <= 0 or not item_ids:
            return np.empty(0, dtype=np.int64)
        blocked_by = np.full(len(item_ids), -1, dtype=np.int64)
        for number, rule in enumerate(self.rules):
            many = getattr(rule, "blocks_many", None)
            verdicts = (
                many(item_ids, request) if many is not None else [rule.blocks(item, request) for item in item_ids]
            )
            blocked_by[(blocked_by < 0) & np.asarray(verdicts, dtype=bool)] = number
        allowed = np.flatnonzero(blocked_by < 0)[:size]
        scanned = blocked_by[: allowed[-1] + 1] if len(allowed) == size else blocked_by
        for number, count in enumerate(np.bincount(scanned[scanned >= 0], minlength=len(self.rules)).tolist()):
            self.blocked[self.rules[number].name] += count
        return allowed

    def take_counts(self) -> dict[str, int]:
        """Items blocked per rule since the last call (for the metrics), resetting the counts."""
        counts, self.blocked = self.blocked, {rule.name: 0 for rule in self.rules}
        return counts
