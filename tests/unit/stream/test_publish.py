import json
from collections import deque

import jsonschema
import orjson

from streamrec.model.events import Event, EventType
from streamrec.stream.explore import ExposureStats
from streamrec.stream.filters import ScoredItem
from streamrec.stream.publish import Publisher, recommendation_message
from streamrec.stream.settings import Settings
from streamrec.stream.update_state import Trigger
from streamrec.stream.user_state import UserState, decode_state
from tests.paths import REPO

SCHEMAS = REPO / "stream" / "schemas"


def test_message_follows_the_output_contract() -> None:
    trigger = Event("u1", "i3", EventType.CLICK, 1_800_000_000.5, event_id="e7")
    similar = ScoredItem("i9", 0.5, "ann", reason="Similar to item i3, which you clicked")
    similar.reason_code = "similar_to_recent:i3"
    explored = ScoredItem("i2", 0.25, "trending", explore=True, reason="Something new", reason_code="explore")
    value = recommendation_message("u1", [similar, explored], "v1", trigger, 1.8e9 + 1, segment=4, variant="fresh")
    message = orjson.loads(value)
    assert message == {
        "user_id": "u1",
        "items": [
            {
                "item_id": "i9",
                "score": 0.5,
                "reason": "Similar to item i3, which you clicked",
                "reason_code": "similar_to_recent:i3",
                "source": "ann",
                "explore": False,
            },
            {
                "item_id": "i2",
                "score": 0.25,
                "reason": "Something new",
                "reason_code": "explore",
                "source": "trending",
                "explore": True,
            },
        ],
        "segment": 4,
        "variant": "fresh",
        "model_version": "v1",
        "trigger": {"event_id": "e7", "item_id": "i3", "event_type": "click", "ts": 1_800_000_000.5},
        "generated_at": 1.8e9 + 1,
    }
    schema = json.loads((SCHEMAS / "recommendation.schema.json").read_text())
    jsonschema.validate(message, schema)


def test_the_schema_refuses_an_unknown_reason_code() -> None:
    trigger = Event("u1", "i3", EventType.VIEW, 1_800_000_000.0)
    item = ScoredItem("i9", 0.5, "ann", reason="?", reason_code="because")
    message = orjson.loads(recommendation_message("u1", [item], "v1", trigger, 1.8e9))
    schema = json.loads((SCHEMAS / "recommendation.schema.json").read_text())
    try:
        jsonschema.validate(message, schema)
    except jsonschema.ValidationError as error:
        assert "because" in str(error)
    else:
        raise AssertionError("an unknown reason code passed the schema")


def _trigger(user: str, partition: int = 0) -> Trigger:
    state = UserState(user, deque(maxlen=10))
    return Trigger(partition, Event(user, "i1", EventType.VIEW, 1.8e9), 1.8e9, state)


def test_the_publisher_answers_every_trigger_and_records_what_was_shown() -> None:
    exposure = ExposureStats()
    publisher = Publisher(Settings(), exposure)
    triggers = [_trigger("u1"), _trigger("u2")]
    chosen = {
        "u1": [ScoredItem("i9", 0.5, "ann"), ScoredItem("i8", 0.4, "ann")],
        "u2": [ScoredItem("i9", 1.0, "trending")],
    }

    messages, published = publisher.recommendations(triggers, chosen, {"u1": None}, {"default": "v1"})

    assert [(m.topic, m.key) for m in messages] == [("recommendations", b"u1"), ("recommendations", b"u2")]
    assert [orjson.loads(m.value)["model_version"] for m in messages] == ["v1", "v1"]
    assert [p.kind for p in published] == ["personalized", "trending"]
    assert triggers[0].state.shown == {"i9": 1, "i8": 1}
    assert exposure.counts("i9") == (2.0, 0.0)


def test_state_updates_keep_the_input_partition_and_forgotten_users_get_tombstones() -> None:
    publisher = Publisher(Settings(), ExposureStats())
    states, tombstones = publisher.state_updates([_trigger("u1", partition=3)], {"u1": 3, "u2": 1})
    # u1 was forgotten, then sent events again in the same batch: the new state supersedes the tombstone.
    assert [(m.key, m.partition, m.value is None) for m in states] == [(b"u1", 3, False), (b"u2", 1, True)]
    assert decode_state(states[0].value, 10).user_id == "u1"
    assert [(m.topic, m.key, m.value) for m in tombstones] == [("recommendations", b"u2", None)]
