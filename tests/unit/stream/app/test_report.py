"""``streamrec report``: hit rates with intervals, from a worker's metrics or from the topics."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from streamrec.stream.app.report import (
    EventRecord,
    ShownRecord,
    difference_interval,
    format_report,
    parse_event,
    parse_recommendation,
    report_from_metrics,
    report_from_records,
    wilson_interval,
)
from streamrec.stream.metrics import WorkerMetrics


def test_wilson_interval_matches_the_textbook_values() -> None:
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(0.0552, abs=1e-4) and high == pytest.approx(0.1744, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 50)[0] == 0.0


def test_difference_interval_excludes_zero_only_for_a_clear_difference() -> None:
    delta, low, high = difference_interval(100, 1000, 150, 1000)
    assert delta == pytest.approx(0.05) and low > 0
    _, low, high = difference_interval(100, 1000, 104, 1000)
    assert low < 0 < high


def _worker_text(variant_hits: dict[str, tuple[int, int]], diversity: list[float]) -> str:
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.declare_variants(variant_hits)
    for variant, (evaluated, hits) in variant_hits.items():
        metrics.online_evaluated.labels(variant, "view").inc(evaluated)
        metrics.online_hits.labels(variant, "view", "10").inc(hits)
        metrics.recommendations_published.labels("personalized", variant).inc(evaluated + 5)
        for value in diversity:
            metrics.list_diversity.labels(variant).observe(value)
        metrics.catalog_coverage.labels(variant).set(0.25)
    return generate_latest(metrics.registry).decode()


def test_metrics_of_several_workers_are_summed_per_variant() -> None:
    one = _worker_text({"default": (100, 10), "b": (50, 10)}, [0.5, 0.7])
    two = _worker_text({"default": (300, 30), "b": (150, 30)}, [0.6])
    reports = {r.variant: r for r in report_from_metrics([one, two])}
    assert reports["default"].evaluated == 400 and reports["default"].hits[10] == 40
    assert reports["b"].hit_rate(10)[0] == pytest.approx(0.2)
    assert reports["default"].lists == 410
    assert reports["default"].diversity is not None and reports["default"].diversity.n == 3
    assert reports["default"].diversity.value == pytest.approx(0.6)
    assert reports["default"].coverage == pytest.approx(0.25)
    text = format_report(list(reports.values()), "test")
    assert "b vs default: HR@10 +0.1000" in text and "significant" in text


def _shown(user: str, trigger: str, ts: float, items: tuple[str, ...], variant: str = "default") -> ShownRecord:
    return ShownRecord(user, variant, trigger, ts, items)


def test_topics_are_joined_on_the_next_event_after_the_trigger() -> None:
    events = [
        EventRecord("u1", "e1", "a", 100.0),
        EventRecord("u1", "e2", "x", 110.0),  # hit at rank 2 of the list answering e1
        EventRecord("u1", "e3", "q", 5_000.0),  # outside the window after e2's list
        EventRecord("u2", "f1", "a", 100.0),
        EventRecord("u2", "f2", "zz", 120.0),  # a miss
    ]
    shown = [
        _shown("u1", "e1", 100.0, ("w", "x", "y")),
        _shown("u1", "e1", 100.0, ("w", "x", "y")),  # redelivered: counted once
        _shown("u1", "e2", 110.0, ("q", "r")),
        _shown("u2", "f1", 100.0, ("b", "c"), variant="b"),
    ]
    catalog = {"w": "c1", "x": "c1", "y": "c2", "q": None, "r": None, "a": None, "b": None, "c": None, "zz": None}
    reports = {r.variant: r for r in report_from_records(shown, events, 600.0, catalog)}
    default, b = reports["default"], reports["b"]
    assert (default.lists, default.evaluated, default.hits) == (2, 1, {5: 1, 10: 1, 20: 1})
    assert (b.lists, b.evaluated, b.hits) == (1, 1, {})
    assert default.covered_items == 5 and default.coverage == pytest.approx(5 / 9)
    assert default.diversity is not None and default.diversity.value == pytest.approx((2 / 3 + 1 / 2) / 2)
    without_catalog = {r.variant: r for r in report_from_records(shown, events, 600.0)}
    assert without_catalog["b"].coverage == pytest.approx(2 / 9)  # a, x, q, zz touched; w, y, r, b, c shown


def test_messages_are_parsed_and_garbage_skipped() -> None:
    message = {
        "user_id": "u1",
        "items": [{"item_id": "a"}, {"item_id": "b"}],
        "variant": "x",
        "trigger": {"event_id": "e1", "ts": 5.0},
    }
    assert parse_recommendation(orjson.dumps(message)) == ShownRecord("u1", "x", "e1", 5.0, ("a", "b"))
    assert parse_recommendation(b"{oops") is None
    assert parse_event(orjson.dumps({"user_id": "u", "item_id": "i", "ts": 1})) == EventRecord("u", None, "i", 1.0)
    assert parse_event(orjson.dumps({"command": "forget", "user_id": "u"})) is None


def test_the_topics_join_skips_what_a_list_could_not_hold_and_hostile_messages() -> None:
    events = [
        EventRecord("u1", "e1", "a", 100.0, "view"),
        EventRecord("u1", "e2", "a", 101.0, "cart"),  # the list answering e1 excluded "a"
        EventRecord("u2", "f1", "b", 100.0, "buy"),
        EventRecord("u2", "f2", "b", 101.0, "buy"),  # a repeat purchase
    ]
    shown = [
        ShownRecord("u1", "default", "e1", 100.0, ("x",), "a"),
        ShownRecord("u2", "default", "f1", 100.0, ("y",), "b"),
    ]
    (report,) = report_from_records(shown, events, 600.0)
    assert report.lists == 2 and report.evaluated == 0
    assert parse_event(orjson.dumps({"user_id": "u", "item_id": ["x"], "ts": 1})) is None
    assert parse_event(orjson.dumps({"user_id": "u", "item_id": "i", "ts": float("nan")})) is None
    assert (
        parse_recommendation(orjson.dumps({"user_id": "u", "items": [{"item_id": {}}], "trigger": {"ts": 1}})) is None
    )
