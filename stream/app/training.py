"""Training with the serving settings: the bridge from :class:`~streamrec.stream.settings.Settings` to the
offline :class:`~streamrec.model.train.TrainConfig`, for ``streamrec train``, ``reindex``, ``recontent`` and the
demo."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streamrec.model.config import TrainConfig
from streamrec.model.event_log import EventLog
from streamrec.model.train import recontent, reindex, train_artifacts
from streamrec.stream.settings import Settings


def config_from_settings(settings: Settings, **overrides: Any) -> TrainConfig:
    """``settings.train`` (``STREAMREC_TRAIN__*``) with the serving twins (event weights, half-life, history
    length, index search breadth, candidates) winning, then ``overrides``: a model is trained as it will be served."""
    twins: dict[str, Any] = {
        "event_weights": dict(settings.event_weights),
        "half_life_s": settings.interest_half_life_s,
        "max_len": settings.max_recent_items,
        "ef_search": settings.hnsw_ef_search,
        "nprobe": settings.ivf_nprobe,
        "n_candidates": settings.n_candidates,
    }
    return TrainConfig(**(settings.train.model_dump() | twins | overrides))


def train_from_settings(
    log: EventLog,
    out_dir: Path,
    settings: Settings,
    *,
    epochs: int | None = None,
    dim: int | None = None,
    seed: int | None = None,
    hold_out_items: float | None = None,
    progress: bool = True,
    catalog: Sequence[Mapping[str, Any]] | None = None,
    switch_latest: bool = True,
) -> Path:
    """Train with ``settings.train`` (``STREAMREC_TRAIN__*``), except where a serving setting has a training twin
    (event weights, half-life, history length, index search breadth): the serving value wins, so the model is
    trained as it will be served. ``epochs``, ``dim``, ``seed`` and ``hold_out_items`` (the command's options) win
    over both."""
    options = {"max_epochs": epochs, "dim": dim, "seed": seed, "hold_out_items": hold_out_items}
    config = config_from_settings(settings, **{key: value for key, value in options.items() if value is not None})
    return train_artifacts(log, Path(out_dir), config, progress=progress, catalog=catalog, switch_latest=switch_latest)


def reindex_from_settings(artifacts: Path, settings: Settings) -> Path:
    """A new version of ``artifacts`` with its index rebuilt as ``settings`` (``STREAMREC_TRAIN__INDEX_KIND`` and
    the other index fields, the serving search breadth) would build it; see :func:`~streamrec.model.train.reindex`."""
    return reindex(artifacts, config_from_settings(settings))


def recontent_from_settings(artifacts: Path, catalog: Sequence[Mapping[str, Any]], settings: Settings) -> Path:
    """A new version of ``artifacts`` with its content projection fitted again from ``catalog`` as ``settings``
    (``STREAMREC_TRAIN__CONTENT_*``) would fit it; see :func:`~streamrec.model.train.recontent`."""
    return recontent(artifacts, catalog, config_from_settings(settings))
