"""Worker metrics: every labelled series a dashboard reads exists from the start, with the labels the output uses."""

from __future__ import annotations

import json
import re

from prometheus_client import CollectorRegistry

from streamrec.model.events import EVENT_TYPES
from streamrec.stream.metrics import ONLINE_HIT_DEPTHS, REASON_KINDS, SOURCES, WorkerMetrics
from tests.paths import REPO

SCHEMA = json.loads((REPO / "stream" / "schemas" / "recommendation.schema.json").read_text())


def test_sources_and_explanation_kinds_are_those_of_the_output_contract() -> None:
    item = SCHEMA["properties"]["items"]["items"]["properties"]
    assert set(SOURCES) == set(item["source"]["enum"])
    kinds = set(re.findall(r"([a-z_]+)(?::\.\+)?", item["reason_code"]["pattern"].strip("^$()")))
    assert set(REASON_KINDS) == kinds


def test_every_variant_series_exists_at_zero_before_anything_happens() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.declare_variants(["control", "fresh"])

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("streamrec_online_evaluated_total", variant="default", event_type="view") is None  # not served
    for variant in ("control", "fresh"):
        for event_type in EVENT_TYPES:
            assert value("streamrec_online_evaluated_total", variant=variant, event_type=event_type) == 0
            for k in ONLINE_HIT_DEPTHS:
                assert value("streamrec_online_hits_total", variant=variant, event_type=event_type, k=str(k)) == 0
        for source in SOURCES:
            assert value("streamrec_online_source_hits_total", variant=variant, source=source) == 0
        for reason in REASON_KINDS:
            assert value("streamrec_online_reason_hits_total", variant=variant, reason=reason) == 0
        assert value("streamrec_recommendations_published_total", kind="trending", variant=variant) == 0
        assert value("streamrec_model_load_failures_total", variant=variant) == 0
    for reason in REASON_KINDS:
        assert value("streamrec_items_recommended_total", reason=reason) == 0
