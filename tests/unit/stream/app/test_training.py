"""Training with the serving settings: ``streamrec train`` hands the worker's settings to the trainer."""

from pathlib import Path

import pytest

from streamrec.model.event_log import EventLog
from streamrec.stream.app.training import train_from_settings
from streamrec.stream.settings import Settings
from tests.unit.model.test_train import manifest_of, structured_log


@pytest.fixture(scope="module")
def log() -> EventLog:
    return structured_log()


def test_train_from_settings_uses_the_serving_settings(log: EventLog, tmp_path: Path) -> None:
    settings = Settings(
        event_weights={"view": 1.0, "click": 3.0, "cart": 5.0, "buy": 7.0},
        interest_half_life_s=1234.0,
        max_recent_items=12,
        hnsw_ef_search=77,
    )
    directory = train_from_settings(log, tmp_path, settings, epochs=1, dim=16, seed=1, progress=False)
    train_config = manifest_of(directory)["train_config"]
    assert train_config["event_weights"] == settings.event_weights
    assert (train_config["half_life_s"], train_config["max_len"], train_config["ef_search"]) == (1234.0, 12, 77)
    assert (train_config["max_epochs"], train_config["dim"], train_config["seed"]) == (1, 16, 1)


def test_the_train_section_of_the_settings_configures_training(
    log: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMREC_TRAIN__LAYERS", "1")
    monkeypatch.setenv("STREAMREC_TRAIN__BLEND_WEIGHTS", "[0.0, 3.0]")
    monkeypatch.setenv("STREAMREC_TRAIN__HALF_LIFE_S", "99.0")  # the serving setting's twin: serving wins
    settings = Settings()
    directory = train_from_settings(log, tmp_path, settings, epochs=1, dim=16, seed=1, progress=False)
    train_config = manifest_of(directory)["train_config"]
    assert train_config["layers"] == 1 and train_config["blend_weights"] == [0.0, 3.0]
    assert train_config["half_life_s"] == settings.interest_half_life_s != 99.0
