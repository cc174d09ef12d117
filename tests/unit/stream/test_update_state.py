"""Stage 3 — update user state: events in order, once each; forget commands; the stream's aggregates fed once."""

from __future__ import annotations

from dataclasses import dataclass

from streamrec.index.covisitation import CoVisitation
from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.events import Event, EventType
from streamrec.stream.events import Command, CommandType, SourceRecord
from streamrec.stream.explore import ExposureStats
from streamrec.stream.settings import Settings
from streamrec.stream.trending import TrendingBoard
from streamrec.stream.update_state import StateUpdater
from streamrec.stream.user_state import InterestModel, UserStateStore

NOW = 1_800_000_000.0


@dataclass
class _Model:
    interest: InterestModel
    counted_covisitation: CoVisitation | None
    segments: None = None


def _updater(artifacts: ModelArtifacts) -> StateUpdater:
    settings = Settings()
    interest = InterestModel.from_settings(settings, artifacts.item_embeddings, artifacts.row_of, artifacts.version)
    return StateUpdater(
        UserStateStore(),
        {"default": _Model(interest, CoVisitation(len(artifacts.item_ids)))},
        lambda user_id: "default",
        ExposureStats(),
        TrendingBoard(settings.trending_half_life_s),
        lambda item_id: None,
        settings.event_weights,
    )


def _record(offset: int, user: str = "u1") -> SourceRecord:
    return SourceRecord(value=None, key=user.encode(), partition=0, offset=offset, received_at=NOW)


def test_the_latest_event_of_each_user_is_answered_and_every_event_counted_once(artifacts: ModelArtifacts) -> None:
    updater = _updater(artifacts)
    items = artifacts.item_ids
    batch = [
        (_record(0), Event("u1", items[0], EventType.VIEW, NOW)),
        (_record(1, "u2"), Event("u2", items[1], EventType.BUY, NOW)),
        (_record(2), Event("u1", items[2], EventType.CART, NOW + 1)),
    ]
    triggers, forgotten = updater.apply(batch, NOW)
    assert forgotten == {} and list(triggers) == ["u2", "u1"]
    assert triggers["u1"].event.item_id == items[2]
    state = updater.store.get(0, "u1")
    assert state is not None and state.n_events == 2 and state.updated_at == NOW
    trending_before = dict(updater.trending.top(10))
    # Redelivered after a crash: answered again, but neither the state nor trending counts it twice.
    triggers, _ = updater.apply(batch[2:], NOW + 5)
    assert list(triggers) == ["u1"] and updater.store.get(0, "u1").n_events == 2
    assert dict(updater.trending.top(10)) == trending_before


def test_forget_erases_the_user_and_their_earlier_events_go_unanswered(artifacts: ModelArtifacts) -> None:
    updater = _updater(artifacts)
    items = artifacts.item_ids
    updater.apply([(_record(0), Event("u1", items[0], EventType.BUY, NOW))], NOW)
    batch = [
        (_record(1), Event("u1", items[1], EventType.VIEW, NOW + 1)),
        (_record(2), Command("u1", CommandType.FORGET, NOW + 2, "req-1")),
        (_record(3, "u2"), Event("u2", items[2], EventType.VIEW, NOW + 3)),
    ]
    triggers, forgotten = updater.apply(batch, NOW + 3)
    assert forgotten == {"u1": 0} and list(triggers) == ["u2"]
    assert updater.store.get(0, "u1") is None
    # A later event starts a new, empty history.
    triggers, _ = updater.apply([(_record(4), Event("u1", items[3], EventType.VIEW, NOW + 4))], NOW + 4)
    assert triggers["u1"].state.n_events == 1 and not triggers["u1"].state.bought
