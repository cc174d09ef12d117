"""Shared aggregates: two workers that exchange their records hold what one worker consuming everything holds."""

from __future__ import annotations

import time

import orjson
import pytest

from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.events import Event
from streamrec.stream.aggregates import MAX_RECORD_BYTES, WORKER_HEADER, AggregateDeltas, apply_deltas
from streamrec.stream.events import SourceRecord
from streamrec.stream.explore import ExposureStats
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.settings import Settings
from streamrec.stream.trending import TrendingBoard

NOW = time.time()
SETTINGS = Settings(exploration_share=0.0, random_seed=0, user_idle_ttl_s=None)


def _records(events: list[Event], partition: int, first_offset: int) -> list[SourceRecord]:
    return [
        SourceRecord(orjson.dumps(event.to_json_dict()), event.user_id.encode(), partition, first_offset + i, NOW)
        for i, event in enumerate(events)
    ]


def _same_ranking(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [item for item, _ in got] == [item for item, _ in want]
    assert [score for _, score in got] == pytest.approx([score for _, score in want], rel=1e-9)


def test_two_workers_exchanging_records_hold_what_one_worker_holds(
    artifacts: ModelArtifacts, shop: tuple[list[Event], list[dict]]
) -> None:
    events = shop[0][:3_000]
    workers = [Pipeline(SETTINGS, artifacts, worker_id="a"), Pipeline(SETTINGS, artifacts, worker_id="b")]
    alone = Pipeline(SETTINGS, artifacts)
    parts = [[e for e in events if int(e.user_id[1:]) % 2 == p] for p in (0, 1)]
    for begin in range(0, max(map(len, parts)), 250):
        batches = [_records(part[begin : begin + 250], p, begin) for p, part in enumerate(parts)]
        results = [worker.process(batch, now=NOW) for worker, batch in zip(workers, batches, strict=True)]
        alone.process(batches[0] + batches[1], now=NOW)
        assert alone.process([], now=NOW).shared == []  # a pipeline without a worker id shares nothing
        for worker, other in ((workers[0], results[1]), (workers[1], results[0])):
            for message in other.shared:
                assert dict(message.headers)[WORKER_HEADER] == message.key
                worker.apply_shared(orjson.loads(message.value))

    a, b = workers
    _same_ranking(a.trending.top(60), alone.trending.top(60))
    _same_ranking(b.trending.top(60), alone.trending.top(60))
    category = shop[1][0]["category"]
    _same_ranking(a.trending.top_in_category(category, 20), alone.trending.top_in_category(category, 20))
    for row in range(0, len(artifacts.item_ids), 7):
        assert a.primary.model.covisitation.similar(row) == pytest.approx(alone.primary.model.covisitation.similar(row))
        assert b.primary.model.covisitation.similar(row) == pytest.approx(alone.primary.model.covisitation.similar(row))
    # Exposure depends on the lists each worker showed; after the exchange both hold every worker's counts.
    for item in artifacts.item_ids:
        assert a.exposure.counts(item) == b.exposure.counts(item)
    assert sum(a.exposure.counts(item)[0] for item in artifacts.item_ids) > 0


def test_a_record_holds_everything_since_the_last_and_then_starts_afresh() -> None:
    deltas = AggregateDeltas("w1")
    deltas.count("i1", 2.0, 100.0, "shoes", 3)
    deltas.covisit(["i0", "i9"], "i1")
    deltas.shown.update(["i1", "i1", "i2"])
    deltas.engaged["i2"] += 1
    [message] = deltas.take("aggregates")
    assert (message.topic, message.key) == ("aggregates", b"w1") and not deltas
    trending, exposure = TrendingBoard(3_600.0), ExposureStats()
    assert apply_deltas(orjson.loads(message.value), trending, exposure) == 1
    assert trending.top(5) == [("i1", 1.0)] and trending.top_in_category("shoes", 5) == [("i1", 1.0)]
    assert exposure.counts("i1") == (2.0, 0.0) and exposure.counts("i2") == (1.0, 1.0)
    deltas.count("i1", 1.0, 101.0, None, None)
    assert orjson.loads(deltas.take("aggregates")[0].value)["sequence"] == 2


def test_a_large_record_is_split_and_nothing_is_lost() -> None:
    deltas = AggregateDeltas("w1")
    for n in range(20_000):
        deltas.count(f"item-{n}", 1.0, 100.0, "a-rather-long-category-name", n % 7)
        deltas.shown[f"item-{n}"] += 1
    messages = deltas.take("aggregates")
    assert len(messages) > 1 and all(len(m.value) <= MAX_RECORD_BYTES for m in messages)
    trending, exposure = TrendingBoard(3_600.0), ExposureStats()
    counted = sum(apply_deltas(orjson.loads(m.value), trending, exposure) for m in messages)
    assert counted == 20_000 and exposure.counts("item-19999") == (1.0, 0.0)
    assert len({orjson.loads(m.value)["sequence"] for m in messages}) == len(messages)


def test_a_record_of_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        apply_deltas({"format": 99}, TrendingBoard(1.0), ExposureStats())
