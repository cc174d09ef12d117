"""The moving average of a model's weights: its pace, its update, and swapping it in and out."""

from __future__ import annotations

import math

import pytest
import torch

from streamrec.model.weight_average import UPDATES_PER_EPOCH, WeightAverage


def test_the_time_constant_in_epochs_sets_the_decay_per_step() -> None:
    average = WeightAverage([torch.zeros(2)], epochs=0.5)
    average.pace(steps_per_epoch=100)
    # After half an epoch (50 steps) the first step's weights have decayed by 1/e.
    assert average.decay**50 == pytest.approx(math.exp(-1))
    average.pace(steps_per_epoch=200)
    assert average.decay**100 == pytest.approx(math.exp(-1))


def test_long_epochs_fold_the_weights_in_every_few_steps_at_the_same_time_constant() -> None:
    weights = torch.nn.Parameter(torch.zeros(1))
    average = WeightAverage([weights], epochs=1.0)
    steps = 10 * UPDATES_PER_EPOCH
    average.restart(steps_per_epoch=steps)
    assert average.interval == 10
    assert average.decay ** (steps / 10) == pytest.approx(math.exp(-1))
    with torch.no_grad():
        weights.fill_(1.0)
    for _ in range(9):
        average.update()
    assert average.average[0].item() == 0.0  # not due yet
    average.update()
    assert average.average[0].item() == pytest.approx(1.0 - average.decay)


def test_the_average_follows_the_weights_at_its_decay_and_restarts_at_them() -> None:
    weights = torch.nn.Parameter(torch.zeros(3))
    average = WeightAverage([weights], epochs=1.0)
    average.restart(steps_per_epoch=4)
    decay = average.decay
    with torch.no_grad():
        weights.fill_(1.0)
    average.update()
    assert torch.allclose(average.average[0], torch.full((3,), 1.0 - decay))
    with torch.no_grad():
        weights.fill_(3.0)
    average.update()
    assert torch.allclose(average.average[0], torch.full((3,), decay * (1.0 - decay) + 3.0 * (1.0 - decay)))
    average.restart(steps_per_epoch=4)
    assert torch.equal(average.average[0], weights.detach())


def test_the_average_is_swapped_in_for_a_block_and_kept_at_the_end() -> None:
    model = torch.nn.Linear(2, 1)
    average = WeightAverage(list(model.parameters()), epochs=1.0)
    average.restart(steps_per_epoch=1)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    average.update()
    live = [p.detach().clone() for p in model.parameters()]
    expected = [b + (1.0 - average.decay) for b in before]
    with average.swapped_in():
        for parameter, wanted in zip(model.parameters(), expected, strict=True):
            assert torch.allclose(parameter, wanted)
    for parameter, wanted in zip(model.parameters(), live, strict=True):
        assert torch.equal(parameter.detach(), wanted)  # training goes on from the live weights
    average.apply()
    for parameter, wanted in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(parameter, wanted)


def test_a_time_constant_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        WeightAverage([torch.zeros(1)], epochs=0.0)
