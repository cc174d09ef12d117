"""Stage 6b — diversify: choose K items from the allowed pool, trading relevance for variety.

Maximal marginal relevance (Carbonell & Goldstein, 1998): items are picked greedily, each time the one maximising
``(1 − λ) · relevance − λ · max similarity to the items already picked``, with relevance the pool's scores scaled
to [0, 1] and similarity the cosine of the item embeddings (items without an embedding are similar when they share
a category). ``λ = 0`` keeps the ranked order exactly. A category cap, when set, is enforced in the same loop so the
two never fight: a capped category's items are skipped and the next best item takes the slot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def diversify(
    scores: np.ndarray,
    vectors: np.ndarray,
    categories: Sequence[str | None],
    k: int,
    weight: float,
    max_per_category: int = 0,
) -> list[int]:
    """Indices into the pool of the ``k`` items to show, in display order.

    ``scores`` ``[M]`` (higher is better, pool in ranked order), ``vectors`` ``[M, d]`` unit-norm item embeddings
    (zero rows for items without one), ``categories`` ``[M]``; ``max_per_category`` 0 means no cap.
    """
    size = len(scores)
    if k <= 0 or size == 0:
        return []
    if weight <= 0 and max_per_category <= 0:
        return list(range(min(k, size)))
    relevance = _unit_range(np.asarray(scores, dtype=np.float64))
    similarity = _similarity(vectors, categories) if weight > 0 else None
    max_similarity = np.full(size, -np.inf if similarity is None else 0.0)
    available = np.ones(size, dtype=bool)
    per_category: dict[str, int] = {}
    chosen: list[int] = []
    while len(chosen) < k and available.any():
        objective = (1.0 - weight) * relevance - weight * np.maximum(max_similarity, 0.0)
        objective[~available] = -np.inf
        best = int(np.argmax(objective))  # ties resolve to the better-ranked item
        available[best] = False
        category = categories[best]
        if max_per_category > 0 and category is not None:
            if per_category.get(category, 0) >= max_per_category:
                continue
            per_category[category] = per_category.get(category, 0) + 1
        chosen.append(best)
        if similarity is not None:
            np.maximum(max_similarity, similarity[best], out=max_similarity)
    return chosen


def _unit_range(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if not np.isfinite(low) or not np.isfinite(high) or high == low:
        # Degenerate or -inf scores: fall back to rank order, which is what the pool's order means.
        return np.linspace(1.0, 0.0, len(values)) if len(values) > 1 else np.ones(1)
    return (values - low) / (high - low)


def _similarity(vectors: np.ndarray, categories: Sequence[str | None]) -> np.ndarray:
    similarity = (vectors @ vectors.T).astype(np.float64)
    has_vector = np.abs(vectors).sum(axis=1) > 0
    if not has_vector.all():
        names = np.array([c if c is not None else "" for c in categories], dtype=object)
        same = (names[:, None] == names[None, :]) & (names[:, None] != "")
        missing = ~(has_vector[:, None] & has_vector[None, :])
        similarity[missing] = same[missing].astype(np.float64)
    return similarity
