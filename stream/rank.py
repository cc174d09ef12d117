"""Stage 5 — rank: re-score every user's candidates with the sequence ranker, one forward per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch


class SequenceScorer(Protocol):
    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor: ...


def rank_candidates(
    ranker: SequenceScorer,
    histories: Sequence[Sequence[int]],
    candidates: Sequence[np.ndarray],
    max_history: int,
) -> list[np.ndarray]:
    """Ranker scores aligned with ``candidates``: one float32 array per user.

    Histories are item rows oldest first; they are left-padded with -1 to a common length (the last column is
    the most recent item), and candidate lists are right-padded with row 0, whose scores are dropped.
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
        scores = ranker.score(torch.from_numpy(history), torch.from_numpy(padded)).float().numpy()
    return [scores[i, : len(rows)] for i, rows in enumerate(candidates)]
