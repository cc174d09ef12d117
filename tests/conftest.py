"""Shared fixtures: a small simulated shop and a model trained on it (once per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.model.artifacts import ModelArtifacts, load_artifacts
from streamrec.model.event_log import EventLog
from streamrec.model.events import Event


@pytest.fixture(scope="session")
def shop() -> tuple[list[Event], list[dict]]:
    from streamrec.stream.app.simulate import simulate_shop

    return simulate_shop(n_users=400, n_items=300, n_events=30_000, seed=11)


@pytest.fixture(scope="session")
def catalog_categories(shop: tuple[list[Event], list[dict]]) -> dict[str, str]:
    return {item["item_id"]: item["category"] for item in shop[1]}


@pytest.fixture(scope="session")
def trained_artifacts(shop: tuple[list[Event], list[dict]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model trained on the simulated shop: small and quick, but learned. Without a refit, so that its blend
    weight can be chosen again (``streamrec reblend``); model/test_train.py covers the refit."""
    from streamrec.model.config import TrainConfig
    from streamrec.model.train import train_artifacts

    out = tmp_path_factory.mktemp("artifacts")
    config = TrainConfig(
        dim=32,
        max_len=20,
        layers=1,
        heads=2,
        max_epochs=8,
        patience=3,
        seed=3,
        n_segments=8,
        content_encoder="hashed",
        refit=False,
    )
    log = EventLog.from_events(shop[0], name="test-shop")
    return train_artifacts(log, out, config, progress=False, catalog=shop[1])


@pytest.fixture(scope="module")
def artifacts(trained_artifacts: Path) -> ModelArtifacts:
    """The trained model loaded afresh for each test module (modules may grow its index or swap it)."""
    return load_artifacts(trained_artifacts)
