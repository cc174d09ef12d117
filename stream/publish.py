"""Stage 7 — publish: a batch's messages, the output contract on topic ``recommendations`` (key = user id).

Each user's list is also kept in their state (``UserState.last_list``) for the online evaluation and the read path.
Besides each user's list, the batch publishes the users' new states to the changelog (after the lists: the state
records what was just shown) and, for users a ``forget`` command erased, tombstones on both topics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import orjson

from streamrec.model.events import Event
from streamrec.stream.aggregates import AggregateDeltas
from streamrec.stream.explore import ExposureStats
from streamrec.stream.filters import ScoredItem
from streamrec.stream.online_eval import shown_list
from streamrec.stream.results import OutgoingMessage, PublishedRecommendation
from streamrec.stream.settings import Settings
from streamrec.stream.update_state import Trigger
from streamrec.stream.user_state import encode_state
from streamrec.stream.variants import DEFAULT_VARIANT


class Publisher:
    """Turns a batch's chosen lists and changed states into messages, and records what each user was shown."""

    def __init__(
        self,
        settings: Settings,
        exposure: ExposureStats,
        deltas: AggregateDeltas | None = None,
    ) -> None:
        self.recommendations_topic = settings.recommendations_topic
        self.state_topic = settings.state_topic
        self.exposure = exposure
        self.deltas = deltas

    def recommendations(
        self,
        triggers: Sequence[Trigger],
        chosen: Mapping[str, Sequence[ScoredItem]],
        personalized: Mapping[str, object],
        versions: Mapping[str, str],
    ) -> tuple[list[OutgoingMessage], list[PublishedRecommendation]]:
        """One message per trigger; ``personalized`` holds the users whose list the model ranked, ``versions``
        the model version each variant serves."""
        generated_at = time.time()
        messages, published = [], []
        for trigger in triggers:
            user_id, variant = trigger.event.user_id, trigger.variant
            items = chosen[user_id]
            value = recommendation_message(
                user_id, items, versions[variant], trigger.event, generated_at, trigger.segment, variant
            )
            messages.append(OutgoingMessage(self.recommendations_topic, user_id.encode(), value))
            kind = "personalized" if user_id in personalized else "trending"
            published.append(PublishedRecommendation(kind, trigger.event.ts, trigger.received_at, variant))
            trigger.state.record_shown([item.item_id for item in items])
            # Kept with the state: the online evaluation reads it at the user's next event, the read path serves it.
            trigger.state.last_list = shown_list(items, variant, trigger.event)
            for item in items:
                self.exposure.shown(item.item_id)
            if self.deltas is not None:
                self.deltas.shown.update(item.item_id for item in items)
        return messages, published

    def state_updates(
        self, triggers: Sequence[Trigger], forgotten: Mapping[str, int], evicted: Mapping[str, int] | None = None
    ) -> tuple[list[OutgoingMessage], list[OutgoingMessage]]:
        """The changed users' states and the forgotten users' tombstones: (changelog messages, recommendation
        tombstones). Evicted idle users get a changelog tombstone only: their last list stays valid."""
        states = [
            OutgoingMessage(self.state_topic, t.event.user_id.encode(), encode_state(t.state), partition=t.partition)
            for t in triggers
        ]
        states += [
            OutgoingMessage(self.state_topic, user_id.encode(), None, partition)
            for user_id, partition in (evicted or {}).items()
        ]
        answered = {t.event.user_id for t in triggers}
        tombstones = []
        # A forgotten user's tombstones, unless events after the `forget` already started a new state: its record
        # supersedes the old ones just as well, and one message per key keeps retries order-free.
        for user_id, partition in forgotten.items():
            if user_id not in answered:
                states.append(OutgoingMessage(self.state_topic, user_id.encode(), None, partition))
                tombstones.append(OutgoingMessage(self.recommendations_topic, user_id.encode(), None))
        return states, tombstones


def recommendation_message(
    user_id: str,
    items: Sequence[ScoredItem],
    model_version: str,
    trigger: Event,
    generated_at: float,
    segment: int | None = None,
    variant: str = DEFAULT_VARIANT,
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
            "variant": variant,
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
