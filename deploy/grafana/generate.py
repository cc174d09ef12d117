"""Writes ``streamrec.json`` beside it, the Grafana dashboard of streamrec workers: this script is its source.

    python deploy/grafana/generate.py           # rewrite streamrec.json
    python deploy/grafana/generate.py --check   # exit 1 when streamrec.json differs from what this writes

The dashboard uses Grafana's classic JSON model (schemaVersion 39: Grafana 10.3 and later). Import it with
Dashboards → New → Import and pick a Prometheus data source. Every query filters on the ``instance`` template
variable and, where the series carries it, on ``variant`` (both multi-valued with an "All" of ``.*``). Only metric
names declared in ``stream/metrics.py`` are used; ``tests/integration/test_observability.py`` runs every query
against a real worker scraped by a real Prometheus. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("streamrec.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE = 'instance=~"$instance"'
VARIANT = 'instance=~"$instance", variant=~"$variant"'
WINDOW = "$__rate_interval"


# --- PromQL -------------------------------------------------------------------------------------------------------
def rate(metric: str, selector: str = INSTANCE) -> str:
    return f"rate({metric}{{{selector}}}[{WINDOW}])"


def summed_rate(metric: str, by: str = "", selector: str = INSTANCE) -> str:
    return f"sum by ({by}) ({rate(metric, selector)})" if by else f"sum({rate(metric, selector)})"


def quantile(q: float, histogram: str, by: str, selector: str = INSTANCE) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) ({rate(histogram + '_bucket', selector)}))"


def mean(histogram: str, by: str = "", selector: str = INSTANCE) -> str:
    return f"{summed_rate(histogram + '_sum', by, selector)} / {summed_rate(histogram + '_count', by, selector)}"


def or_zero(expr: str, label: str = "") -> str:
    """A counter whose series only appear once something went wrong: 0 instead of "No data" while all is well."""
    zero = f'label_replace(vector(0), "{label}", "none", "", "")' if label else "vector(0)"
    return f"{expr} or {zero}"


def hit_rate(hits: str, by: str) -> str:
    """Hits per evaluated event (an event that followed a list shown to its user), per variant."""
    evaluated = summed_rate("streamrec_online_evaluated_total", "variant", VARIANT)
    if by == "variant":
        return f"{hits} / {evaluated}"
    return f"{hits} / on (variant) group_left {evaluated}"


# --- Panels -------------------------------------------------------------------------------------------------------
def target(expr: str, legend: str, *, instant: bool = False, table: bool = False) -> dict[str, Any]:
    query: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
    }
    if table:
        query["format"] = "table"
    return query


def timeseries(
    title: str, description: str, targets: list[dict[str, Any]], unit: str = "short", *, width: int = 8
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"},
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
        "_width": width,
    }


def stat(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    steps: list[tuple[str, float | None]],
    mappings: list[dict[str, Any]] | None = None,
    *,
    width: int = 4,
) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "unit": "short",
                "mappings": mappings or [],
                "thresholds": {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "value_and_name",
        },
        "targets": targets,
        "_width": width,
    }


def table(title: str, description: str, targets: list[dict[str, Any]], *, width: int = 8) -> dict[str, Any]:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}],
        "targets": targets,
        "_width": width,
    }


READY_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "not ready", "color": "red", "index": 0},
            "1": {"text": "ready", "color": "green", "index": 1},
        },
    }
]
RED_FROM_ONE = [("green", None), ("red", 1)]

ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    (
        "Service",
        [
            stat(
                "Ready",
                "streamrec_ready: 1 while /readyz answers 200 (group joined, partitions restored, output delivered).",
                [target(f"min by (instance) (streamrec_ready{{{INSTANCE}}})", "{{instance}}")],
                [("red", None), ("green", 1)],
                READY_MAPPINGS,
            ),
            stat(
                "Assigned partitions",
                "Input partitions each worker owns; 0 until it has joined its group.",
                [target(f"sum by (instance) (streamrec_assigned_partitions{{{INSTANCE}}})", "{{instance}}")],
                [("blue", None)],
            ),
            table(
                "Model version per variant",
                "streamrec_model_info: the model version each variant serves, per worker. Workers disagree for "
                "a model poll interval after a new version is written.",
                [
                    target(
                        f"max by (instance, variant, version) (streamrec_model_info{{{VARIANT}}})",
                        "",
                        instant=True,
                        table=True,
                    )
                ],
            ),
            stat(
                "Model load failures",
                "New model versions refused over the time range (unreadable, corrupt or incompatible); the "
                "previous version keeps serving. Look for the refusal in the worker's log.",
                [
                    target(
                        f"sum by (variant) (increase(streamrec_model_load_failures_total{{{VARIANT}}}[$__range]))",
                        "{{variant}}",
                    )
                ],
                RED_FROM_ONE,
            ),
            stat(
                "Pipeline errors",
                "Batches over the time range where a stage failed and users were served trending items instead.",
                [
                    target(
                        or_zero(f"sum(increase(streamrec_pipeline_errors_total{{{INSTANCE}}}[$__range]))"),
                        "batches",
                    )
                ],
                RED_FROM_ONE,
            ),
        ],
    ),
    (
        "Throughput and lag",
        [
            timeseries(
                "Events consumed / s",
                "Accepted events by type, and every message read (valid or not).",
                [
                    target(summed_rate("streamrec_events_consumed_total", "event_type"), "{{event_type}}"),
                    target(summed_rate("streamrec_messages_consumed_total"), "messages read"),
                ],
                "cps",
            ),
            timeseries(
                "Recommendations published / s",
                "Recommendation messages acknowledged by the broker, by variant and by how they were made "
                "(personalized or trending).",
                [
                    target(
                        summed_rate("streamrec_recommendations_published_total", "variant, kind", VARIANT),
                        "{{variant}} {{kind}}",
                    )
                ],
                "cps",
            ),
            timeseries(
                "Consumer lag",
                "Messages behind each input partition's end offset (committed offsets). A total that keeps "
                "growing means the workers cannot keep up.",
                [
                    target(
                        f"sum by (topic, partition) (streamrec_consumer_lag_messages{{{INSTANCE}}})",
                        "{{topic}}/{{partition}}",
                    ),
                    target(f"sum(streamrec_consumer_lag_messages{{{INSTANCE}}})", "total"),
                ],
            ),
        ],
    ),
    (
        "Freshness",
        [
            timeseries(
                "Event to recommendation latency",
                "From an event to the broker's acknowledgement of the recommendation it triggered. "
                "clock=event_time starts at the event's own timestamp (includes time spent in the topic), "
                "clock=consume_time when the worker read it.",
                [
                    target(quantile(q, "streamrec_event_to_recommendation_seconds", "clock"), f"p{p} {{{{clock}}}}")
                    for q, p in ((0.5, 50), (0.95, 95), (0.99, 99))
                ],
                "s",
                width=9,
            ),
            timeseries(
                "Stage time per batch",
                "Time spent per micro-batch in each pipeline stage (decode ... publish in the pipeline, produce "
                "and commit in the runtime).",
                [
                    target(quantile(q, "streamrec_stage_seconds", "stage"), f"p{p} {{{{stage}}}}")
                    for q, p in ((0.5, 50), (0.99, 99))
                ],
                "s",
                width=9,
            ),
            timeseries(
                "Batch size",
                "Mean input messages per micro-batch: larger batches mean the worker is catching up.",
                [target(mean("streamrec_batch_messages"), "messages per batch")],
                width=6,
            ),
        ],
    ),
    (
        "Errors and delivery",
        [
            timeseries(
                "Dead letters / s",
                "Messages sent to the dead-letter topic, by reason.",
                [target(summed_rate("streamrec_events_invalid_total", "reason"), "{{reason}}")],
                "cps",
                width=6,
            ),
            timeseries(
                "Dead-letter share",
                "Dead letters per message read: a jump usually means a producer changed its format.",
                [
                    target(
                        f"{summed_rate('streamrec_events_invalid_total')} / "
                        f"{summed_rate('streamrec_messages_consumed_total')}",
                        "dead-lettered",
                    )
                ],
                "percentunit",
                width=6,
            ),
            timeseries(
                "Pipeline errors / s",
                "Batches where a stage failed (served trending items instead), by stage; 'none' while there are none.",
                [target(or_zero(summed_rate("streamrec_pipeline_errors_total", "stage"), "stage"), "{{stage}}")],
                "cps",
                width=6,
            ),
            timeseries(
                "Delivery problems / s",
                "Output deliveries retried (readiness is false meanwhile), batches dropped after their partitions "
                "moved to another worker, and output messages the broker refused for good.",
                [
                    target(summed_rate("streamrec_delivery_failures_total"), "delivery failures"),
                    target(summed_rate("streamrec_batches_fenced_total"), "batches fenced"),
                    target(or_zero(summed_rate("streamrec_outputs_undeliverable_total")), "outputs undeliverable"),
                ],
                "cps",
                width=6,
            ),
        ],
    ),
    (
        "Online quality (events that follow a recommendation)",
        [
            timeseries(
                "Online hit rate @k by variant",
                "Share of events that followed a list shown to their user whose item was among the list's first "
                "k items.",
                [
                    target(
                        hit_rate(
                            summed_rate("streamrec_online_hits_total", "variant", f'{VARIANT}, k="{k}"'), "variant"
                        ),
                        f"{{{{variant}}}} @{k}",
                    )
                    for k in (5, 10, 20)
                ],
                "percentunit",
                width=12,
            ),
            timeseries(
                "Evaluated events / s",
                "Events checked against the list shown before them, by variant and event type (the denominator "
                "of the hit rates).",
                [
                    target(
                        summed_rate("streamrec_online_evaluated_total", "variant, event_type", VARIANT),
                        "{{variant}} {{event_type}}",
                    )
                ],
                "cps",
                width=12,
            ),
            timeseries(
                "Hit rate by candidate source",
                "Hits anywhere in the list per evaluated event, by the candidate source that proposed the item.",
                [
                    target(
                        hit_rate(
                            summed_rate("streamrec_online_source_hits_total", "variant, source", VARIANT), "source"
                        ),
                        "{{variant}} {{source}}",
                    )
                ],
                "percentunit",
            ),
            timeseries(
                "Hit rate by explanation kind",
                "Hits anywhere in the list per evaluated event, by the kind of the item's explanation.",
                [
                    target(
                        hit_rate(
                            summed_rate("streamrec_online_reason_hits_total", "variant, reason", VARIANT), "reason"
                        ),
                        "{{variant}} {{reason}}",
                    )
                ],
                "percentunit",
            ),
            timeseries(
                "Rank of the hit item",
                "Position (1 = first) of the hit item in the list shown before the event.",
                [
                    target(quantile(q, "streamrec_online_hit_rank", "variant", VARIANT), f"p{p} {{{{variant}}}}")
                    for q, p in ((0.5, 50), (0.9, 90))
                ],
            ),
        ],
    ),
    (
        "What users are shown",
        [
            timeseries(
                "Catalog coverage by variant",
                "Share of the served index's items a worker has recommended since it started (or since the "
                "variant's model changed); the largest over the selected workers.",
                [target(f"max by (variant) (streamrec_catalog_coverage_ratio{{{VARIANT}}})", "{{variant}}")],
                "percentunit",
                width=6,
            ),
            timeseries(
                "Distinct items recommended",
                "Distinct items a worker has recommended since it started, by variant; the largest over the "
                "selected workers.",
                [target(f"max by (variant) (streamrec_recommended_items{{{VARIANT}}})", "{{variant}}")],
                width=6,
            ),
            timeseries(
                "List diversity by variant",
                "Mean intra-list diversity of published lists (mean pairwise cosine distance of the items' "
                "embeddings).",
                [target(mean("streamrec_list_diversity", "variant", VARIANT), "{{variant}}")],
                width=6,
            ),
            timeseries(
                "Items published / s by explanation kind",
                "Items in published lists, by the kind of their explanation.",
                [target(summed_rate("streamrec_items_recommended_total", "reason"), "{{reason}}")],
                "cps",
                width=6,
            ),
        ],
    ),
    (
        "Index and state",
        [
            timeseries(
                "Index size",
                "Items in the ANN index being served, rows hidden from search (unavailable items, replaced live "
                "rows) and catalog items added from their content since the model loaded.",
                [
                    target(f"max by (instance) (streamrec_index_items{{{INSTANCE}}})", "indexed {{instance}}"),
                    target(
                        f"max by (instance) (streamrec_index_unavailable_items{{{INSTANCE}}})",
                        "hidden {{instance}}",
                    ),
                    target(f"max by (instance) (streamrec_live_items{{{INSTANCE}}})", "live {{instance}}"),
                ],
                width=6,
            ),
            timeseries(
                "Users in state",
                "Users held in each worker's state (its partitions' users, idle ones evicted).",
                [target(f"sum by (instance) (streamrec_users_in_state{{{INSTANCE}}})", "{{instance}}")],
                width=6,
            ),
            timeseries(
                "User state churn / s",
                "Users evicted after user_idle_ttl_s, restored from the changelog, and erased by `forget`.",
                [
                    target(summed_rate("streamrec_users_evicted_total"), "evicted"),
                    target(summed_rate("streamrec_users_restored_total"), "restored"),
                    target(summed_rate("streamrec_users_forgotten_total"), "forgotten"),
                ],
                width=6,
            ),
            timeseries(
                "Shared aggregates / s",
                "Other workers' events counted into this worker's trending from the aggregates topic, and "
                "aggregates records that could not be read.",
                [
                    target(summed_rate("streamrec_shared_events_applied_total", "instance"), "applied {{instance}}"),
                    target(summed_rate("streamrec_shared_records_rejected_total"), "rejected"),
                ],
                width=6,
            ),
        ],
    ),
]


def layout(rows: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Give every panel an id and a place: a row header, then its panels left to right, wrapping at 24 columns."""
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for title, row_panels in rows:
        panels.append(
            {
                "type": "row",
                "title": title,
                "id": next_id,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id, y, x, line_height = next_id + 1, y + 1, 0, 0
        for template in row_panels:
            panel = dict(template)
            width = panel.pop("_width")
            height = 5 if panel["type"] in ("stat", "table") else 8
            if x + width > 24:
                x, y, line_height = 0, y + line_height, 0
            panel["id"] = next_id
            panel["gridPos"] = {"h": height, "w": width, "x": x, "y": y}
            panel["targets"] = [{**query, "refId": chr(ord("A") + n)} for n, query in enumerate(panel["targets"])]
            panels.append(panel)
            next_id, x, line_height = next_id + 1, x + width, max(line_height, height)
        y += line_height
    return panels


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": query,
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "skipUrlSync": False,
    }


def dashboard() -> dict[str, Any]:
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.3.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "table", "name": "Table", "version": ""},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        ],
        "id": None,
        "uid": "streamrec-workers",
        "title": "streamrec workers",
        "description": "Throughput, lag, freshness, errors and online quality of streamrec workers "
        "(generated by deploy/grafana/generate.py; alerts in deploy/prometheus/alerts.yml).",
        "tags": ["streamrec", "kafka", "recommendations"],
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [],
        "liveNow": False,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "regex": "",
                    "current": {},
                    "options": [],
                    "refresh": 1,
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "skipUrlSync": False,
                },
                variable("instance", "Instance", "label_values(streamrec_ready, instance)"),
                variable("variant", "Variant", "label_values(streamrec_recommendations_published_total, variant)"),
            ]
        },
        "panels": layout(ROWS),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if streamrec.json is not up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
