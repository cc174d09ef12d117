"""Stage 6a — filter: the candidates a user may be shown, in ranked order, with duplicates removed.

Rules here are the last line of defence: whatever a candidate source proposed, an item a rule blocks (a purchase,
the item the user just touched, an unavailable or denied item) never reaches the output, and no item appears
twice. Diversity (``stream/diversify.py``) and exploration (``stream/explore.py``) then choose from this pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamrec.stream.rules import Request, RuleSet


@dataclass(slots=True)
class ScoredItem:
    """A candidate on its way to the output, with where it came from (for explanations and metrics).

    ``source`` is the candidate source (``ann``, ``covisitation``, ``item_knn``, ``trending``, ``trending_in``,
    ``trending_segment``) or ``explore``; ``context`` the category or segment of a trending source; ``row`` the
    item's row in the item table (-1 when the model does not know it).
    """

    item_id: str
    score: float
    source: str
    row: int = -1
    context: str | None = None
    explore: bool = False
    reason: str = ""
    reason_code: str = ""


def allowed_pool(candidates: Sequence[ScoredItem], request: Request, rules: RuleSet, size: int) -> list[ScoredItem]:
    """The first ``size`` candidates (best first) that no rule blocks, each item once."""
    unique: dict[str, ScoredItem] = {}
    for item in candidates:
        unique.setdefault(item.item_id, item)
    listed = list(unique.values())
    return [listed[i] for i in rules.first_allowed(list(unique), request, size).tolist()]
