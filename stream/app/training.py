"""Training with the serving settings: the bridge from :class:`~streamrec.stream.settings.Settings` to the
offline :class:`~streamrec.model.train.TrainConfig`, for ``streamrec train`` and the demo."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streamrec.model.config import TrainConfig
from streamrec.model.event_log import EventLog
from streamrec.model.train import train_artifacts
from streamrec.stream.settings import Settings


def train_from_settings(
    log: EventLog,
    out_dir: Path,
    settings: Settings,
    *,
    epochs: int | None = None,
    dim: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    catalog: Sequence[Mapping[str, Any]] | None = None,
    switch_latest: bool = True,
) -> Path:
    """Train with ``settings.train`` (``STREAMREC_TRAIN__*``), except where a serving setting has a training twin
    (event weights, half-life, history length, index search breadth): the serving value wins, so the model is
    trained as it will be served. ``epochs``, ``dim`` and ``seed`` (the command's options) win over both."""
    overrides: dict[str, Any] = {
        "event_weights": dict(settings.event_weights),
        "half_life_s": settings.interest_half_life_s,
        "max_len": settings.max_recent_items,
        "ef_search": settings.hnsw_ef_search,
        "nprobe": settings.ivf_nprobe,
        "n_candidates": settings.n_candidates,
    }
    if epochs is not None:
        overrides["max_epochs"] = epochs
    if dim is not None:
        overrides["dim"] = dim
    if seed is not None:
        overrides["seed"] = seed
    config = TrainConfig(**(settings.train.model_dump() | overrides))
    return train_artifacts(log, Path(out_dir), config, progress=progress, catalog=catalog, switch_latest=switch_latest)
