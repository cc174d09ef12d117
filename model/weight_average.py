"""An exponential moving average of a model's weights: what training validates and publishes when it is on.

Adam at a constant learning rate ends every step near the optimum but not at it; the average of the last steps'
weights sits closer, as a decaying learning rate would bring them, without fixing the number of epochs in
advance (early stopping decides it). The average's time constant is set in epochs
(``TrainConfig.weight_average_epochs``) and turned into a per-step decay by the epoch's number of batches, so it
means the same on every catalogue. On long epochs it folds the weights in every few steps, so that averaging a
large item table costs a bounded share of the epoch (one pass over a million-row table takes about 0.1 s on this
project's 2-core machine, as long as a training step there).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

UPDATES_PER_EPOCH = 256
"""Most times per epoch the weights are folded in: every step on the benchmark datasets' 150 to 300 batches, every
30th on a million windows; the average's time constant is kept whatever the interval."""


class WeightAverage:
    """The moving average of ``parameters``: updated after each optimizer step, swapped in to be validated or kept.

    The average lives in copies of the parameters, so the live tensors (and their optimizer state) stay the ones
    training continues from; a refit that resumes the first fit (``refit_resume``) starts from the live weights the
    first fit kept for it, and its own average from there.
    """

    def __init__(self, parameters: Sequence[torch.Tensor], epochs: float) -> None:
        if epochs <= 0:
            raise ValueError("the average's time constant must be positive")
        self.parameters = list(parameters)
        self.epochs = epochs
        self.decay = 0.0
        self.interval = 1  # optimizer steps between two updates of the average
        self._steps = 0
        self.average = [p.detach().clone() for p in self.parameters]

    def restart(self, steps_per_epoch: int) -> None:
        """Start the average again at the current weights (a new softmax makes the old steps' weights stale)."""
        self.pace(steps_per_epoch)
        self._steps = 0
        _copy(self.average, self.parameters)

    def pace(self, steps_per_epoch: int) -> None:
        """Set the interval and the decay per update for an epoch of ``steps_per_epoch`` optimizer steps."""
        steps_per_epoch = max(1, steps_per_epoch)
        self.interval = max(1, steps_per_epoch // UPDATES_PER_EPOCH)
        self.decay = math.exp(-self.interval / (self.epochs * steps_per_epoch))

    def update(self) -> None:
        """After an optimizer step: fold the weights into the average, if this step is due."""
        self._steps += 1
        if self._steps % self.interval:
            return
        with torch.no_grad():
            for average, parameter in zip(self.average, self.parameters, strict=True):
                average.lerp_(parameter, 1.0 - self.decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model for the ``with`` block, the live ones back after it."""
        live = [p.detach().clone() for p in self.parameters]
        self.apply()
        try:
            yield
        finally:
            _copy(self.parameters, live)

    def apply(self) -> None:
        """Put the averaged weights into the model for good (the end of training)."""
        _copy(self.parameters, self.average)


def _copy(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> None:
    """Copy each source tensor into its target, outside autograd."""
    with torch.no_grad():
        for target, source in zip(targets, sources, strict=True):
            target.copy_(source)
