"""Stage 5 — rank: re-score every user's candidates with the sequence ranker, one forward per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch


class SequenceScorer(Protocol):
    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor: ...

    def encode(self, history: torch.Tensor) -> torch.Tensor: ...


def rank_candidates(
    ranker: SequenceScorer,
    histories: Sequence[Sequence[int]],
    candidates: Sequence[np.ndarray],
    max_history: int,
    item_table: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Ranker scores aligned with ``candidates``: one float32 array per user.

    Histories are item rows oldest first; they are left-padded with -1 to a common length (the last column is
    the most recent item), and candidate lists are right-padded with row 0, whose scores are dropped.
    Candidates past the ranker's own item table (items added live from the catalog) are scored the same way,
    ``h · E[item]``, against ``item_table``, whose first rows are the ranker's table.
    """
    if not candidates:
        return []
    batch = len(candidates)
    history_len = max(1, min(max_history, max((len(h) for h in histories), default=1)))
    history = np.full((batch, history_len), -1, dtype=np.int64)
    for i, rows in enumerate(histories):
        recent = list(rows)[-history_len:]
        if recent:
            history[i, history_len - len(recent) :] = recent
    width = max(1, max(len(c) for c in candidates))
    padded = np.zeros((batch, width), dtype=np.int64)
    for i, rows in enumerate(candidates):
        padded[i, : len(rows)] = rows
    with torch.inference_mode():
        if item_table is not None and len(item_table) > 0 and padded.max() >= _trained_items(ranker):
            user = ranker.encode(torch.from_numpy(history))
            vectors = torch.from_numpy(item_table)[torch.from_numpy(padded)]
            scores = torch.einsum("bd,bcd->bc", user, vectors).float().numpy()
        else:
            scores = ranker.score(torch.from_numpy(history), torch.from_numpy(padded)).float().numpy()
    return [scores[i, : len(rows)] for i, rows in enumerate(candidates)]


def _trained_items(ranker: SequenceScorer) -> int:
    config = getattr(ranker, "config", None)
    return int(config.n_items) if config is not None else 2**62
