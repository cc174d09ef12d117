import numpy as np
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


def test_ranked_candidates_order_by_score_and_build_objects_on_demand() -> None:
    ranked = RankedCandidates.by_score(
        np.array([4, 1, 7, 2]),
        np.array([0.1, 0.9, 0.5, 0.9], dtype=np.float32),
        np.array([0, 1, 0, 2], dtype=np.int8),
        ("ann", "covisitation", "item_knn"),
        [f"item-{row}" for row in range(8)],
    )
    assert len(ranked) == 4
    head = ranked.items(0, 2)
    # Best first; equal scores keep the candidates' order.
    assert [(i.item_id, i.source, i.row) for i in head] == [("item-1", "covisitation", 1), ("item-2", "item_knn", 2)]
    assert [i.item_id for i in ranked.items(2)] == ["item-7", "item-4"]
    assert [i.item_id for i in ranked.from_row(4)] == ["item-7", "item-4"]  # rows 4+ wherever they rank
    assert ranked.items(0, 1)[0] is not head[0]  # fresh objects each time: later stages mark them per list
    assert RankedCandidates().items(0, 10) == [] and RankedCandidates().from_row(0) == []
