"""The read path: a user's last list from the worker that owns them, or where to ask instead."""

from __future__ import annotations

import random
from collections import deque

import orjson
from kafka.partitioner.default import murmur2 as kafka_murmur2
from prometheus_client import CollectorRegistry

from streamrec.stream.health import Health, health_app
from streamrec.stream.read_path import ReadPath, murmur2, partition_of
from streamrec.stream.user_state import ShownList, UserState, UserStateStore


def test_murmur2_is_kafkas_default_partitioner_hash() -> None:
    rng = random.Random(7)
    for _ in range(2_000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
        assert murmur2(data) & 0xFFFFFFFF == kafka_murmur2(data)
    assert partition_of("user-42", 24) == (kafka_murmur2(b"user-42") & 0x7FFFFFFF) % 24


def _read_path(owned: set[int], n_partitions: int = 8) -> tuple[ReadPath, UserStateStore]:
    store = UserStateStore()
    titles = {"i1": "Red Shoes"}
    owners = {p: f"10.0.0.{p}:9400" for p in range(n_partitions)}
    return ReadPath(store, titles.get, n_partitions, lambda: owned, owners.get), store


def test_an_owned_user_gets_their_last_list() -> None:
    user = "alice"
    partition = partition_of(user, 8)
    read_path, store = _read_path({partition})
    state = UserState(user, deque())
    state.last_list = ShownList.of(("i1", "i2"), ("ann", "trending"), ("similar_to_recent", "trending"), "b", 5.0)
    store.put(partition, state)
    status, body = read_path.answer(user)
    assert status == 200
    assert body["variant"] == "b" and body["trigger_ts"] == 5.0
    assert body["items"][0] == {"item_id": "i1", "title": "Red Shoes", "source": "ann", "reason": "similar_to_recent"}
    assert body["items"][1]["title"] is None


def test_an_owned_user_without_a_list_is_not_found_and_others_are_redirected() -> None:
    user = "bob"
    partition = partition_of(user, 8)
    read_path, _ = _read_path({partition})
    assert read_path.answer(user)[0] == 404
    elsewhere, _ = _read_path(set(range(8)) - {partition})
    status, body = elsewhere.answer(user)
    assert (status, body["partition"], body["owner"]) == (421, partition, f"10.0.0.{partition}:9400")
    assert elsewhere.answer("")[0] == 400


def test_the_http_server_routes_and_quotes_user_ids() -> None:
    user = "ü ser/1"
    partition = partition_of(user, 8)
    read_path, store = _read_path({partition})
    state = UserState(user, deque())
    state.last_list = ShownList.of(("i1",), ("ann",), ("trending",), "default", 1.0)
    store.put(partition, state)
    health = Health()
    app = health_app(health, CollectorRegistry())
    statuses: list[str] = []

    def get(path: str) -> bytes:
        return b"".join(app({"PATH_INFO": path}, lambda status, _headers: statuses.append(status)))

    get("/recommendations/x")
    assert statuses[-1].startswith("404")  # no read path yet (the worker is starting)
    health.read_path = read_path
    # As a WSGI server hands over /recommendations/%C3%BC%20ser%2F1: percent-decoded, as latin-1 text.
    body = orjson.loads(get("/recommendations/" + user.encode().decode("latin-1")))
    assert statuses[-1] == "200 OK" and body["user_id"] == user
