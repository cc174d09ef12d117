"""The monitoring that ships in deploy/: a real Prometheus scrapes a real worker on the embedded broker, loads the
alerting rules (deploy/prometheus/alerts.yml) and answers every query of the Grafana dashboard
(deploy/grafana/streamrec.json); promtool checks the rules and runs their unit tests (alerts_test.yml).

Needs the Debian package ``prometheus`` (``/usr/bin/prometheus`` and ``/usr/bin/promtool``; .ci/run installs it
where it can); without it the tests that need it skip and say why.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamrec.stream.app.broker import EmbeddedBroker, stop_process
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.runtime.network import free_port
from tests.integration.conftest import TopicNames, WorkerProcess
from tests.integration.kafka_io import TopicReader, event_message, produce, recommendation_for
from tests.integration.workers import launch, wait_until_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "streamrec.json"
GENERATOR = ROOT / "deploy" / "grafana" / "generate.py"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"

#: The dashboard's template variables as its "All" selection sets them, and windows a 1 s scrape fills.
VARIABLES = {
    "instance": ".*",
    "variant": ".*",
    "datasource": "prometheus",
    "__rate_interval": "30s",
    "__interval": "15s",
    "__range": "1m",
}
#: Metrics stream/metrics.py declares that are being wired into the pipeline (issue 11, part 1): until the worker
#: produces them, the queries that read them return nothing and the failure lists them apart.
BEING_WIRED = {
    "streamrec_online_evaluated_total",
    "streamrec_online_hits_total",
    "streamrec_online_hit_rank_bucket",
    "streamrec_online_source_hits_total",
    "streamrec_online_reason_hits_total",
    "streamrec_list_diversity_sum",
    "streamrec_list_diversity_count",
    "streamrec_recommended_items",
    "streamrec_catalog_coverage_ratio",
    "streamrec_model_load_failures_total",
}
USERS, EVENTS_PER_USER, FOLLOWERS = 30, 10, 3
#: The positions (0-based) of the items the followers pick from the list they were shown: hits at k=5, 10 and 20.
PICKS = (0, 7, 15)
MALFORMED = [
    (b"obs-bad", b"not json at all"),
    (b"obs-bad", b'{"user_id": "obs-bad", "event_type": "view"}'),
    (b"obs-bad", b'{"user_id": "obs-bad", "item_id": "x", "event_type": "purchase", "ts": 1}'),
    (b"obs-bad", b"{broken"),
    (b"someone-else", b'{"event_id": "k", "user_id": "obs-bad", "item_id": "x", "event_type": "view", "ts": 1}'),
]


def _tool(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)


def _require(name: str) -> str:
    path = _tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install prometheus; .ci/run does it as root)")
    return path


def declared_metric_names() -> set[str]:
    """Every sample name a worker can export, from the metrics stream/metrics.py declares."""
    names: set[str] = set()
    for family in WorkerMetrics(CollectorRegistry()).registry.collect():
        suffixes = {
            "counter": ("_total",),
            "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count"),
            "info": ("_info",),
        }[family.type]
        names.update(family.name + suffix for suffix in suffixes)
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bstreamrec_[a-z0-9_]+", expr))


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every target, rows' nested panels included."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = []
    for panel in [*panels, *(nested for p in panels for nested in p.get("panels", []))]:
        for query in panel.get("targets", []):
            queries.append((panel["title"], query["refId"], query["expr"]))
    return queries


def substitute(expr: str) -> str:
    """Replace Grafana's ``$name``, ``${name}`` and ``${name:format}`` as the dashboard's defaults would."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in VARIABLES:
            raise AssertionError(f"unknown template variable ${name} in {expr}")
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)\s*$", ALERTS.read_text(), re.MULTILINE)


# --- Checks that need no running Prometheus ------------------------------------------------------------------------
def test_dashboard_is_generated_importable_and_uses_declared_metrics() -> None:
    check = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stderr

    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["id"] is None and 8 <= len(dashboard["uid"]) <= 40
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["variant"]["query"] == "label_values(streamrec_recommendations_published_total, variant)"
    assert variables["instance"]["type"] == "query"

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"} and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [query["refId"] for query in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]

    declared = declared_metric_names()
    used = {name for _, _, expr in dashboard_queries() for name in metric_names(expr)}
    used |= metric_names(" ".join(variable.get("query", "") for variable in variables.values()))
    used |= metric_names(ALERTS.read_text())
    assert used - declared == set(), "metric names not declared in stream/metrics.py"


def test_alert_rules_pass_promtool() -> None:
    promtool = _require("promtool")
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        result = subprocess.run(
            [promtool, *command], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
        )
        assert result.returncode == 0, f"promtool {' '.join(command)}:\n{result.stdout}\n{result.stderr}"


# --- A real Prometheus scraping a real worker ----------------------------------------------------------------------
@dataclass
class Observed:
    prometheus: str  # base URL
    worker: WorkerProcess

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.prometheus}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400/422: a bad query, with Prometheus' explanation
            return json.loads(error.read())

    def query(self, expr: str) -> Any:
        return self.api("query", query=expr)

    def value(self, expr: str) -> float | None:
        answer = self.query(expr)
        result = answer.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else None


def _wait(condition, what: str, timeout_s: float, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outcome = condition()
        if outcome:
            return outcome
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s} s")


def _start_prometheus(binary: str, worker: WorkerProcess, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(  # JSON is YAML
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {"job_name": "streamrec", "static_configs": [{"targets": [f"127.0.0.1:{worker.metrics_port}"]}]}
                ],
            },
            indent=2,
        )
    )
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        _wait(ready, f"prometheus ready (log: {log})", 30)
    except BaseException:
        stop_process(process, 10)
        raise
    return process, url


def _produce_traffic(broker: EmbeddedBroker, topics: TopicNames, items: list[str]) -> int:
    """A few hundred events of 30 users and a few malformed messages; then three users act on what they were
    shown, three times, so that events follow recommendations (hits at 5, 10 and 20). Returns the events accepted."""
    start = time.time() - 60
    burst = []
    for n in range(USERS * EVENTS_PER_USER):
        user, step = f"obs-u{n % USERS}", n // USERS
        kind = ("view", "view", "click", "cart", "view", "buy")[step % 6]
        burst.append(event_message(user, items[(n * 7) % len(items)], kind, f"{user}-{step}", start + n * 0.1))
    produce(broker.bootstrap, topics.events, [*burst, *MALFORMED])

    followers = [f"obs-u{n}" for n in range(FOLLOWERS)]
    recommendations = TopicReader(broker.bootstrap, topics.recommendations)
    try:
        last = {user: f"{user}-{EVENTS_PER_USER - 1}" for user in followers}
        for round_, pick in enumerate(PICKS):
            shown = {
                user: orjson.loads(recommendations.wait_for(recommendation_for(event), timeout_s=60).value)["items"]
                for user, event in last.items()
            }
            last = {user: f"{user}-follow-{round_}" for user in followers}
            produce(
                broker.bootstrap,
                topics.events,
                [event_message(user, shown[user][pick]["item_id"], "click", last[user]) for user in followers],
            )
        for event in last.values():
            recommendations.wait_for(recommendation_for(event), timeout_s=60)
    finally:
        recommendations.close()
    return len(burst) + FOLLOWERS * len(PICKS)


@pytest.fixture(scope="module")
def observed(
    broker: EmbeddedBroker, trained_artifacts: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observed]:
    prometheus = _require("prometheus")
    from streamrec.model.artifacts import load_artifacts

    workdir = tmp_path_factory.mktemp("observability")
    suffix = uuid.uuid4().hex[:8]
    topics = TopicNames(*(f"{name}-{suffix}" for name in ("events", "recs", "dlq", "state", "items", "group", "agg")))
    worker = launch(broker.bootstrap, trained_artifacts, topics, workdir / "worker.log")
    process = None
    try:
        wait_until_ready(worker)
        process, url = _start_prometheus(prometheus, worker, workdir)
        observed = Observed(url, worker)
        # Scraped before the traffic, so that rates and quantiles over the last 30 s see it arrive.
        _wait(lambda: observed.value('up{job="streamrec"}') == 1, "the first scrape of the worker", 30)
        accepted = _produce_traffic(broker, topics, sorted(load_artifacts(trained_artifacts).item_ids))

        # Prometheus has seen every accepted event, then scraped twice more (rate() needs two samples).
        counted = 'sum(streamrec_events_consumed_total{job="streamrec"})'
        _wait(lambda: (observed.value(counted) or 0) >= accepted, f"prometheus scraping {accepted} events", 60)
        scraped_at = 'max(timestamp(up{job="streamrec"}))'  # of the last scrape (not of the query, as on a sum)
        seen_at = observed.value(scraped_at) or 0
        _wait(lambda: (observed.value(scraped_at) or 0) >= seen_at + 2, "two more scrapes", 20)
        yield observed
    finally:
        if process is not None:
            stop_process(process, 10)
        worker.stop(timeout_s=10)


def test_every_dashboard_query_returns_data(observed: Observed) -> None:
    produced = {
        name
        for name in declared_metric_names()
        if observed.query(f'count({{__name__="{name}", job="streamrec"}})')["data"]["result"]
    }
    errors, empty, not_produced, idle = [], [], [], []
    queries = dashboard_queries()
    for panel, ref, template in queries:
        expr = substitute(template)
        answer = observed.query(expr)
        if answer["status"] != "success":
            errors.append(f"{panel} [{ref}]: {answer.get('error')}\n    {expr}")
        elif not answer["data"]["result"]:
            missing = sorted(metric_names(expr) - produced)
            line = f"{panel} [{ref}]: no data\n    {expr}"
            if missing and set(missing) <= BEING_WIRED:
                not_produced.append(f"{line}\n    no series yet of {', '.join(missing)}")
            else:
                empty.append(line + (f"\n    no series of {', '.join(missing)}" if missing else ""))
        elif all(series["value"][1] in ("0", "NaN") for series in answer["data"]["result"]):
            idle.append(f"  {panel} [{ref}]")
    report = []
    if errors:
        report.append("queries Prometheus refused:\n" + "\n".join(errors))
    if empty:
        report.append("queries without data:\n" + "\n".join(empty))
    if not_produced:
        report.append(
            "queries without data because the worker does not produce these metrics yet (declared in "
            "stream/metrics.py, being wired into the pipeline; the online ones need events that follow a "
            "recommendation, which this test sends):\n" + "\n".join(not_produced)
        )
    print(f"{len(queries)} dashboard queries, {len(queries) - len(errors) - len(empty) - len(not_produced)} with data")
    if idle:
        print("with data, but only zero or NaN now (nothing of the kind happened):\n" + "\n".join(idle))
    assert not report, "\n\n".join(report)


def test_alert_rules_load_and_evaluate(observed: Observed) -> None:
    expected = alert_names()
    assert len(expected) >= 7

    def evaluated() -> list[dict] | None:
        groups = observed.api("rules")["data"]["groups"]
        rules = [rule for group in groups if group["name"] == "streamrec" for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None

    rules = _wait(evaluated, "the streamrec rule group loaded and evaluated", 30)
    assert [rule["name"] for rule in rules] == expected
    assert {rule["type"] for rule in rules} == {"alerting"}
    broken = [f"{rule['name']}: {rule.get('lastError')}" for rule in rules if rule["health"] != "ok"]
    assert not broken, broken
    for rule in rules:
        answer = observed.query(rule["query"])
        assert answer["status"] == "success", f"{rule['name']}: {answer.get('error')}\n{rule['query']}"
    # Informational: a healthy worker with a few dead letters should leave every alert inactive.
    print({rule["name"]: rule["state"] for rule in rules})
    assert observed.worker.process.poll() is None
