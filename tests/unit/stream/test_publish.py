import json

import jsonschema
import orjson

from streamrec.model.events import Event, EventType
from streamrec.stream.filters import ScoredItem
from streamrec.stream.publish import recommendation_message
from tests.paths import REPO

SCHEMAS = REPO / "stream" / "schemas"


def test_message_follows_the_output_contract() -> None:
    trigger = Event("u1", "i3", EventType.CLICK, 1_800_000_000.5, event_id="e7")
    similar = ScoredItem("i9", 0.5, "ann", reason="Similar to item i3, which you clicked")
    similar.reason_code = "similar_to_recent:i3"
    explored = ScoredItem("i2", 0.25, "trending", explore=True, reason="Something new", reason_code="explore")
    value = recommendation_message("u1", [similar, explored], "v1", trigger, 1.8e9 + 1, segment=4)
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
