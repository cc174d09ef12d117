"""Stage 7 — publish: the output contract on topic ``recommendations`` (key = user id)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from streamrec.model.events import Event
from streamrec.stream.filters import ScoredItem


def recommendation_message(
    user_id: str,
    items: Sequence[ScoredItem],
    model_version: str,
    trigger: Event,
    generated_at: float,
    segment: int | None = None,
) -> bytes:
    """The JSON value of one recommendation message; see ``stream/schemas/recommendation.schema.json``."""
    return orjson.dumps(
        {
            "user_id": user_id,
            "items": [
                {
                    "item_id": item.item_id,
                    "score": round(item.score, 6),
                    "reason": item.reason,
                    "reason_code": item.reason_code,
                    "source": item.source,
                    "explore": item.explore,
                }
                for item in items
            ],
            "segment": segment,
            "model_version": model_version,
            "trigger": {
                "event_id": trigger.event_id,
                "item_id": trigger.item_id,
                "event_type": trigger.event_type.value,
                "ts": trigger.ts,
            },
            "generated_at": generated_at,
        }
    )
