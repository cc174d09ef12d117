"""The first fit's weights at the epoch a refit resumes from, kept while early stopping runs.

A refit with ``refit_resume = s`` starts from the first fit's weights after epoch ``⌊s · best⌋`` and trains the
remaining ``best − ⌊s · best⌋`` epochs on every interaction, the validation items included. The best epoch is known
only when early stopping ends, so while it runs every epoch some best epoch could still map to is kept: after
epoch ``e`` with ``b`` the best so far, the final best is ``b`` or a later epoch ``b' > e``, whose resume epochs
are ``⌊s · b⌋`` and every epoch from ``⌊s · (e + 1)⌋`` on. Those are about ``(1 − s) · e`` copies of the weights,
written to a temporary directory rather than held in memory (a large item table is hundreds of MiB).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from types import TracebackType

import torch
from safetensors.torch import load_file, save_file


def resume_epoch(share: float, best_epoch: int) -> int:
    """The first-fit epoch a refit with ``share`` resumes from when early stopping chose ``best_epoch`` (0: none,
    the refit starts from fresh weights)."""
    return math.floor(share * best_epoch)


class ResumePoints:
    """The weights of every first-fit epoch a refit may still resume from (their interest-vector temperatures are
    in the first fit's history).

    Use as a context manager: the directory and its files are removed on exit.
    """

    def __init__(self, share: float) -> None:
        self.share = share
        self._directory = tempfile.TemporaryDirectory(prefix="streamrec-resume-")
        self._kept: set[int] = set()

    def __enter__(self) -> ResumePoints:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._directory.cleanup()

    @property
    def directory(self) -> Path:
        """Where the weights are kept until the context ends."""
        return Path(self._directory.name)

    @property
    def epochs(self) -> list[int]:
        """The epochs kept now, in order."""
        return sorted(self._kept)

    def after_epoch(self, epoch: int, best_epoch: int, model: torch.nn.Module) -> None:
        """Keep ``epoch``'s weights if a final best epoch could still map to it, and drop those none can."""
        needed = {resume_epoch(self.share, best_epoch)} | set(range(resume_epoch(self.share, epoch + 1), epoch + 1))
        if epoch in needed:
            state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
            save_file(state, self._path(epoch))
            self._kept.add(epoch)
        for stale in self._kept - needed:
            self._path(stale).unlink()
        self._kept &= needed

    def load(self, epoch: int, model: torch.nn.Module) -> None:
        """Load ``epoch``'s weights into ``model``."""
        if epoch not in self._kept:
            raise KeyError(f"epoch {epoch} was not kept (kept: {self.epochs})")
        model.load_state_dict(load_file(self._path(epoch)))

    def _path(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch}.safetensors"
