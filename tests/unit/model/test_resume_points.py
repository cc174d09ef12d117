"""The first fit's epochs a refit may resume from: whatever epoch early stopping ends on, its resume epoch is kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrec.model.resume_points import ResumePoints, resume_epoch


def weights_of(epoch: int) -> torch.nn.Module:
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.fill_(float(epoch))
        layer.bias.fill_(-float(epoch))
    return layer


@pytest.mark.parametrize("share", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("seed", range(6))
def test_the_resume_epoch_of_the_final_best_is_kept_whatever_the_scores(share: float, seed: int) -> None:
    scores = np.random.default_rng(seed).random(30).cumsum() * np.random.default_rng(seed + 100).random(30)
    best, best_score = 0, -1.0
    most_kept = 0
    with ResumePoints(share) as points:
        for epoch, score in enumerate(scores, start=1):
            if score > best_score:
                best, best_score = epoch, score
            points.after_epoch(epoch, best, weights_of(epoch))
            most_kept = max(most_kept, len(points.epochs))
            if epoch - best >= 3:
                break
        resumed = resume_epoch(share, best)
        if resumed == 0:
            assert 0 not in points.epochs
            return
        loaded = torch.nn.Linear(3, 2)
        points.load(resumed, loaded)
        assert torch.all(loaded.weight == resumed) and torch.all(loaded.bias == -resumed)
    # Only the epochs some best epoch could still map to: about (1 - share) of those run, never all of them.
    assert most_kept <= (1 - share) * epoch + 3


def test_an_epoch_no_best_can_map_to_is_dropped_and_the_directory_removed() -> None:
    with ResumePoints(0.5) as points:
        for epoch in range(1, 11):  # the best keeps improving: only epochs 5 or later can still be resumed from
            points.after_epoch(epoch, epoch, weights_of(epoch))
        assert points.epochs == [5, 6, 7, 8, 9, 10]
        directory = points.directory
        assert {path.name for path in directory.iterdir()} == {f"epoch-{e}.safetensors" for e in range(5, 11)}
        with pytest.raises(KeyError, match="epoch 2 was not kept"):
            points.load(2, weights_of(0))
    assert not directory.exists()


def test_resume_epoch_rounds_down_and_never_reaches_the_best() -> None:
    assert [resume_epoch(0.5, best) for best in (1, 2, 3, 23)] == [0, 1, 1, 11]
    assert all(resume_epoch(share, best) < best for share in (0.0, 0.5, 0.99) for best in range(1, 50))
