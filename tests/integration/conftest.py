"""Integration fixtures: the real embedded broker and worker processes, always stopped by the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamrec.stream.app.apache_kafka import ApacheKafka, kafka_unavailable_reason
from streamrec.stream.app.broker import EmbeddedBroker, stop_process
from streamrec.stream.runtime.network import free_port
from tests.certificates import CertificateSet, make_certificates, openssl_unavailable_reason

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    reason = kafka_unavailable_reason()
    if reason:
        pytest.skip(reason)
    # The log cleaner looks for work every half second, so compaction can be watched within a test; topics are
    # created by the tests and the workers, never by a client's first use (as production clusters are set up).
    broker = ApacheKafka(
        tmp_path_factory.mktemp("apache-kafka"),
        extra_config={"log.cleaner.backoff.ms": "500", "auto.create.topics.enable": "false"},
    )
    with broker:
        yield broker


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    metrics_port: int
    log_path: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def metric_value(self, series: str) -> float:
        """Current value of one series, e.g. ``streamrec_events_invalid_total{reason="not_json"}`` (0 if absent)."""
        for line in self.metrics().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        return stop_process(self.process, timeout_s, sig)


@dataclass
class TopicNames:
    """Fresh topic and group names per test: the embedded broker keeps everything for its lifetime."""

    events: str
    recommendations: str
    dead_letters: str
    state: str
    items: str
    group: str
    aggregates: str

    def env(self) -> dict[str, str]:
        return {
            "STREAMREC_EVENTS_TOPIC": self.events,
            "STREAMREC_RECOMMENDATIONS_TOPIC": self.recommendations,
            "STREAMREC_DEAD_LETTER_TOPIC": self.dead_letters,
            "STREAMREC_STATE_TOPIC": self.state,
            "STREAMREC_ITEMS_TOPIC": self.items,
            "STREAMREC_CONSUMER_GROUP": self.group,
            "STREAMREC_AGGREGATES_TOPIC": self.aggregates,
        }


@pytest.fixture
def topics() -> TopicNames:
    suffix = uuid.uuid4().hex[:8]
    return TopicNames(
        f"events-{suffix}",
        f"recs-{suffix}",
        f"dlq-{suffix}",
        f"state-{suffix}",
        f"items-{suffix}",
        f"streamrec-{suffix}",
        f"aggregates-{suffix}",
    )


@pytest.fixture
def start_worker(broker: EmbeddedBroker, trained_artifacts: Path, topics: TopicNames, tmp_path: Path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(**extra_env: str) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        # The test's own environment wins, e.g. the bootstrap of a TLS listener in front of the broker.
        env = {"STREAMREC_BOOTSTRAP_SERVERS": broker.bootstrap, **extra_env}
        worker = launch_worker_process(trained_artifacts, topics, log_path, **env)
        process = worker.process
        started.append(worker)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{log_path.read_text()[-3000:]}")
            try:
                worker.metrics()
                return worker
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"worker metrics never came up:\n{log_path.read_text()[-3000:]}")

    yield start
    for worker in started:
        worker.stop(timeout_s=10)


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    """A throw-away CA and the certificates it signed (server for 127.0.0.1, client, wrong host name)."""
    reason = openssl_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return make_certificates(tmp_path_factory.mktemp("certificates"))


def launch_worker_process(artifacts_dir: Path, topics: TopicNames, log_path: Path, **extra_env: str) -> WorkerProcess:
    """Start a worker process without waiting for it to serve, for workers that are expected to fail (usable from
    fixtures of any scope, unlike ``start_worker``). The caller must stop it (``WorkerProcess.stop``)."""
    port = free_port()
    env = {
        **os.environ,
        **topics.env(),
        "STREAMREC_ARTIFACTS_DIR": str(artifacts_dir),
        "STREAMREC_METRICS_PORT": str(port),
        "STREAMREC_METRICS_HOST": "127.0.0.1",
        "STREAMREC_SESSION_TIMEOUT_S": "2",
        "STREAMREC_HEARTBEAT_INTERVAL_S": "0.5",
        "STREAMREC_TOPIC_PARTITIONS": "4",
        **extra_env,
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamrec.stream.app.cli", "worker", "--log-level", "INFO"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=log_path.parent,  # what a worker leaves in its working directory stays with the test
        )
    return WorkerProcess(process, port, log_path)
