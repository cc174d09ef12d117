import json
from pathlib import Path

import jsonschema
import orjson

from stream.events import Event, EventType
from stream.filters import ScoredItem
from stream.publish import recommendation_message

SCHEMAS = Path(__file__).resolve().parents[2] / "stream" / "schemas"


def test_message_follows_the_output_contract() -> None:
    trigger = Event("u1", "i3", EventType.CLICK, 1_800_000_000.5, event_id="e7")
    value = recommendation_message(
        "u1", [ScoredItem("i9", 0.5, "personalized"), ScoredItem("i2", 0.25, "trending")], "v1", trigger, 1.8e9 + 1
    )
    message = orjson.loads(value)
    assert message == {
        "user_id": "u1",
        "items": [
            {"item_id": "i9", "score": 0.5, "reason": "personalized"},
            {"item_id": "i2", "score": 0.25, "reason": "trending"},
        ],
        "model_version": "v1",
        "trigger": {"event_id": "e7", "item_id": "i3", "event_type": "click", "ts": 1_800_000_000.5},
        "generated_at": 1.8e9 + 1,
    }
    schema = json.loads((SCHEMAS / "recommendation.schema.json").read_text())
    jsonschema.validate(message, schema)
