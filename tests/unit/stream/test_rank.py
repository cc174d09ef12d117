import numpy as np
import pytest
import torch

from streamrec.model.ranker import RankerConfig, SequenceRanker
from streamrec.stream.rank import RankedCandidates, rank_candidates


class RecordingScorer:
    """Scores candidate r as r + the most recent history row, and keeps the tensors it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        self.calls.append((history.clone(), candidates.clone()))
        return candidates.float() + history[:, -1:].float()


def test_histories_are_left_padded_and_truncated_to_the_most_recent() -> None:
    scorer = RecordingScorer()
    scores = rank_candidates(scorer, [[1, 2, 3, 4], [9]], [np.array([5, 6]), np.array([7])], max_history=3)
    history, candidates = scorer.calls[0]
    assert len(scorer.calls) == 1  # one forward for the whole batch
    assert history.tolist() == [[2, 3, 4], [-1, -1, 9]]
    assert candidates.tolist() == [[5, 6], [7, 0]]
    assert [s.tolist() for s in scores] == [[9.0, 10.0], [16.0]]


def test_real_ranker_scores_every_candidate_finitely() -> None:
    torch.manual_seed(0)
    ranker = SequenceRanker(RankerConfig(n_items=30, dim=16, max_len=8, n_layers=1, n_heads=2, dropout=0.0)).eval()
    scores = rank_candidates(ranker, [[1, 2, 3], [], [4]], [np.arange(10), np.array([3, 4]), np.array([29])], 8)
    assert [len(s) for s in scores] == [10, 2, 1]
    assert all(np.isfinite(s).all() for s in scores)


def test_ranked_candidates_are_ordered_by_score_with_their_sources() -> None:
    ranked = RankedCandidates.by_score(
        np.array([4, 1, 7, 2]),
        np.array([0.1, 0.9, 0.5, 0.9], dtype=np.float32),
        np.array([0, 1, 0, 2], dtype=np.int8),
        ("ann", "covisitation", "item_knn"),
    )
    assert len(ranked) == 4 and len(RankedCandidates()) == 0
    # Best first; equal scores keep the candidates' order.
    assert ranked.rows.tolist() == [1, 2, 7, 4]
    assert [ranked.source_names[code] for code in ranked.sources.tolist()] == ["covisitation", "item_knn", "ann", "ann"]
    assert ranked.scores.tolist() == pytest.approx([0.9, 0.9, 0.5, 0.1])
