"""Worker processes for tests that pick their own broker, and their readiness endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from kafka.admin import KafkaAdminClient, NewTopic

from tests.integration.conftest import TopicNames, WorkerProcess, launch_worker_process


def streamrec_command(*args: str, env: Mapping[str, str], timeout_s: float = 90.0) -> subprocess.CompletedProcess:
    """Run a ``streamrec`` command in its own process with ``env`` added to this one's environment."""
    return subprocess.run(
        [sys.executable, "-m", "streamrec.stream.app.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def launch(bootstrap: str, artifacts: Path, topics: TopicNames, log_path: Path, **extra_env: str) -> WorkerProcess:
    """A worker process on ``bootstrap``, not waited for."""
    return launch_worker_process(artifacts, topics, log_path, STREAMREC_BOOTSTRAP_SERVERS=bootstrap, **extra_env)


def readiness(worker: WorkerProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/readyz", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_until_ready(worker: WorkerProcess, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{worker.log_path.read_text()[-3000:]}")
        try:
            if readiness(worker)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready in {timeout_s} s:\n{worker.log_path.read_text()[-3000:]}")


def create_topics(
    bootstrap: str,
    topics: TopicNames,
    partitions: int,
    dead_letters: dict[str, str] | None = None,
    state: dict[str, str] | None = None,
) -> None:
    """Create the test's topics up front, some with configs the worker would not choose itself."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        names = {
            topics.events: {},
            topics.recommendations: {},
            topics.dead_letters: dead_letters or {},
            topics.state: {"cleanup.policy": "compact", **(state or {})},
            topics.items: {"cleanup.policy": "compact"},
        }
        admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=config) for name, config in names.items()], timeout_ms=30_000
        )
    finally:
        admin.close()
