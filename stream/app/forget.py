"""Erasure (the right to be forgotten): ``streamrec forget --user U``.

A ``forget`` command travels on the **events topic**, keyed by the user id like the user's events, so it reaches the
worker that owns the user and is applied after every event the shop produced before it (a command on a topic of its
own could overtake events still in flight and be undone by them). The worker then

* drops the user's state from memory, so their history no longer shapes anything;
* writes a tombstone for the user to the state changelog (compaction then deletes every earlier state record);
* writes a tombstone for the user to the recommendations topic (compacted consumers drop the last list);
* does not answer the user's events that came before the command in the same batch.

An event from the user after the command starts a new, empty history. See the README's "Erasure" section for what
remains elsewhere (the events topic and the dead letters until their retention ends) and why.
"""

from __future__ import annotations

import time

import orjson

from streamrec.stream.app.replay import _DeliveringProducer
from streamrec.stream.errors import StreamrecError
from streamrec.stream.settings import Settings
from streamrec.stream.validate import FORBIDDEN_ID_CHARACTERS


def forget_message(user_id: str, request_id: str | None = None, now: float | None = None) -> tuple[bytes, bytes]:
    """``(key, value)`` of the command that erases ``user_id``."""
    body: dict[str, object] = {"command": "forget", "user_id": user_id, "ts": time.time() if now is None else now}
    if request_id is not None:
        body["request_id"] = request_id
    return user_id.encode(), orjson.dumps(body)


def check_user_ids(user_ids: list[str], settings: Settings) -> None:
    """Raise :class:`StreamrecError` for an id no worker could ever have accepted, so that a typo fails here rather
    than in the dead letters."""
    if not user_ids:
        raise StreamrecError("no user id given; pass --user at least once")
    for user_id in user_ids:
        if not user_id.strip() or user_id != user_id.strip():
            raise StreamrecError(
                f"user id {user_id!r} is empty or has surrounding spaces; pass the id as events carry it"
            )
        if len(user_id) > settings.max_id_length or FORBIDDEN_ID_CHARACTERS.search(user_id):
            raise StreamrecError(f"user id {user_id!r} could never have been accepted by a worker; check it")


def send_forget(user_ids: list[str], settings: Settings, request_id: str | None = None) -> int:
    """Produce a ``forget`` command for each user to the events topic; returns how many were acknowledged."""
    check_user_ids(user_ids, settings)
    from streamrec.stream.runtime.security import kafka_python_options

    with _DeliveringProducer(
        settings.bootstrap_servers, settings.events_topic, "forget commands", kafka_python_options(settings)
    ) as producer:
        for user_id in user_ids:
            producer.send(*forget_message(user_id, request_id))
    return producer.sent
