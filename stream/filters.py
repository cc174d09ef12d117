"""Stage 6 — filter and diversify: turn ranked candidates into the final K items.

Rules here are the last line of defence: whatever a candidate source proposed, an excluded item (a purchase,
the item the user just touched) never reaches the output, and no item appears twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class ScoredItem:
    item_id: str
    score: float
    reason: str


def select_top_k(
    ranked: Iterable[ScoredItem],
    excluded: set[str] | dict[str, None],
    k: int,
    fallback: Iterable[ScoredItem] = (),
) -> list[ScoredItem]:
    """The first ``k`` allowed items of ``ranked`` (best first), topped up from ``fallback`` if short."""
    chosen: list[ScoredItem] = []
    seen: set[str] = set()
    for source in (ranked, fallback):
        for item in source:
            if len(chosen) == k:
                return chosen
            if item.item_id in excluded or item.item_id in seen:
                continue
            seen.add(item.item_id)
            chosen.append(item)
    return chosen
