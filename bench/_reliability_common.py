"""What the reliability scenarios share: the model, topic names, worker processes, producing and reading topics,
the changelog read back, metric scrapes and the printed tables.

Everything binds to 127.0.0.1, every wait has a bound, and every process started here is registered so that
:meth:`Launcher.stop_all` ends it whatever happened (it also dies with the bench: ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from bench_end_to_end import scrape, value

from streamrec.stream.app.broker import die_with_parent, free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CACHE = RESULTS / "cache"
# Test-friendly group timing, as in the integration tests: a lost member is noticed within 2 s.
SESSION_TIMEOUT_S, HEARTBEAT_INTERVAL_S = 2.0, 0.5
RANDOM_SEED = 7  # exploration draws: fixed so that two runs publish the same lists

# The model: the integration tests' small shop and training config (about 50 s on 2 cores, once; then cached).
SHOP_USERS, SHOP_ITEMS, SHOP_EVENTS, SHOP_SEED = 400, 300, 30_000, 11

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class ScenarioFailed(RuntimeError):
    """A scenario could not measure what it set out to (a worker that never became ready, a topic that never
    appeared): reported as the scenario's error, the other scenarios still run."""


# --- model ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    artifacts: Path
    item_ids: list[str]
    version: str


def prepare_model(cache: Path = CACHE) -> Model:
    """A trained artifact root, cached under ``cache``; retrained when missing or unreadable by this code."""
    from streamrec.model.artifacts import ArtifactError, load_artifacts

    root = cache / f"reliability-shop-u{SHOP_USERS}-i{SHOP_ITEMS}-e{SHOP_EVENTS}-s{SHOP_SEED}" / "artifacts"
    if (root / "LATEST").exists():
        try:
            loaded = load_artifacts(root)
            return Model(root, list(loaded.item_ids), loaded.version)
        except ArtifactError as exc:  # written by an older format: train again rather than fail in every worker
            print(f"cached model unusable ({exc}); training again")
    from streamrec.model.config import TrainConfig
    from streamrec.model.event_log import EventLog
    from streamrec.model.train import train_artifacts
    from streamrec.stream.app.simulate import simulate_shop

    events, catalog = simulate_shop(SHOP_USERS, SHOP_ITEMS, SHOP_EVENTS, SHOP_SEED)
    config = TrainConfig(
        dim=32, max_len=20, layers=1, heads=2, max_epochs=8, patience=3, seed=3, n_segments=8, content_encoder="hashed"
    )
    print(f"training the model once ({SHOP_USERS} users, {SHOP_ITEMS} items, {SHOP_EVENTS} events; cached in {root})")
    started = time.monotonic()
    train_artifacts(
        EventLog.from_events(events, name="reliability-shop"), root, config, progress=False, catalog=catalog
    )
    print(f"trained in {time.monotonic() - started:.0f} s")
    loaded = load_artifacts(root)
    return Model(root, list(loaded.item_ids), loaded.version)


# --- topics --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    """Fresh names per run: a broker keeps every topic and group for its lifetime."""

    events: str
    recommendations: str
    dead_letters: str
    state: str
    items: str
    group: str
    aggregates: str

    @classmethod
    def fresh(cls, name: str) -> Topics:
        s = f"{name}-{uuid.uuid4().hex[:8]}"
        return cls(f"events-{s}", f"recs-{s}", f"dlq-{s}", f"state-{s}", f"items-{s}", f"group-{s}", f"aggr-{s}")

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

    def create(self, bootstrap: str, partitions: int, dead_letter_config: dict[str, str] | None = None) -> None:
        """Create every topic up front (the bench produces before a worker starts), the changelog and catalog
        compacted as a worker would create them, the dead letters with ``dead_letter_config``."""
        from kafka.admin import KafkaAdminClient, NewTopic

        configs = {
            self.events: {},
            self.recommendations: {},
            self.dead_letters: dict(dead_letter_config or {}),
            self.state: {"cleanup.policy": "compact"},
            self.items: {"cleanup.policy": "compact"},
        }
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
        try:
            admin.create_topics(
                [NewTopic(name, partitions, 1, topic_configs=config) for name, config in configs.items()],
                timeout_ms=30_000,
            )
        finally:
            admin.close()


# --- workers -------------------------------------------------------------------------------------------------


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Every series of ``name`` keyed by one label's value."""
    return {
        dict(labels)[label]: v for (sample, labels), v in samples.items() if sample == name and label in dict(labels)
    }


@dataclass
class Worker:
    """One ``python -m streamrec.stream.app.cli worker`` process."""

    name: str
    process: subprocess.Popen
    port: int
    log_path: Path
    started_at: float

    def alive(self) -> bool:
        return self.process.poll() is None

    def scrape(self) -> Samples:
        return scrape(self.port, timeout_s=3.0)

    def metric(self, name: str, **labels: str) -> float:
        return value(self.scrape(), name, **labels)

    def readiness(self) -> int:
        """HTTP status of ``/readyz`` (0 when nothing answers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Seconds from the process start until ``/readyz`` answered 200; raises :class:`ScenarioFailed`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ScenarioFailed(f"worker {self.name} exited with {self.process.returncode}: {self.last_line()}")
            if self.readiness() == 200:
                return time.monotonic() - self.started_at
            time.sleep(0.1)
        raise ScenarioFailed(f"worker {self.name} not ready within {timeout_s:.0f} s: {self.last_line()}")

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout_s: float = 30.0) -> tuple[int | None, float]:
        """SIGTERM; (exit code, seconds to exit). A worker still running after ``timeout_s`` is killed: code None."""
        started = time.monotonic()
        if self.alive():
            self.process.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None, time.monotonic() - started
        return self.process.returncode, time.monotonic() - started

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def last_line(self) -> str:
        lines = [line for line in self.log_lines() if line.strip()]
        return lines[-1] if lines else "(no output)"


@dataclass
class Launcher:
    """Starts workers with the bench's settings and remembers them, so that every one is stopped at the end."""

    model: Model
    log_dir: Path
    started: list[Worker] = field(default_factory=list)

    def start(self, name: str, bootstrap: str, topics: Topics, partitions: int, **extra_env: str) -> Worker:
        port = free_port()
        env = {
            **os.environ,
            **topics.env(),
            "STREAMREC_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMREC_ARTIFACTS_DIR": str(self.model.artifacts),
            "STREAMREC_METRICS_HOST": "127.0.0.1",
            "STREAMREC_METRICS_PORT": str(port),
            "STREAMREC_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
            "STREAMREC_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_INTERVAL_S),
            "STREAMREC_TOPIC_PARTITIONS": str(partitions),
            "STREAMREC_RANDOM_SEED": str(RANDOM_SEED),
            "STREAMREC_MODEL_POLL_INTERVAL_S": "0",  # one model for the whole run
            **extra_env,
        }
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "streamrec.stream.app.cli", "worker", "--log-level", "INFO"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group: a Ctrl-C reaches the bench only, which then stops every worker in order.
                process_group=0,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        worker = Worker(name, process, port, log_path, time.monotonic())
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.alive():
                with contextlib.suppress(Exception):
                    worker.terminate(timeout_s=10)


# --- producing -----------------------------------------------------------------------------------------------

Message = tuple[bytes | None, bytes | None]


def new_producer(bootstrap: str, **options: Any) -> Any:
    """A kafka-python producer that comes back quickly after an outage (the client's default backoff grows to
    30 s, which would be measured as the worker's recovery)."""
    from kafka import KafkaProducer

    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "linger_ms": 5,
        "reconnect_backoff_max_ms": 500,
        "max_in_flight_requests_per_connection": 1,  # keeps each partition's order even across retries
    }
    settings.update(options)
    return KafkaProducer(**settings)


def produce(bootstrap: str, topic: str, messages: Sequence[Message], timeout_s: float = 120, **options: Any) -> list:
    """Produce ``messages`` in order and return each one's ``RecordMetadata`` (partition, offset)."""
    producer = new_producer(bootstrap, **options)
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in messages]
        producer.flush(timeout=timeout_s)
        return [future.get(timeout=timeout_s) for future in futures]
    finally:
        producer.close(timeout=10)


class PacedProducer(threading.Thread):
    """Sends messages at a fixed rate from a thread; ``sent`` counts what was handed to the client."""

    def __init__(self, bootstrap: str, topic: str, messages: Sequence[Message], rate: float, **options: Any) -> None:
        super().__init__(daemon=True)
        self.producer = new_producer(bootstrap, **options)
        self.topic, self.messages, self.rate = topic, messages, rate
        self.sent = 0
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        try:
            for key, value in self.messages:
                if self.halt.is_set():
                    break
                self.producer.send(self.topic, key=key, value=value)
                self.sent += 1
                delay = started + self.sent / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.producer.flush(timeout=120)
        except BaseException as exc:  # reported by the scenario, which checks it after join()
            self.error = exc
        finally:
            self.producer.close(timeout=10)


# --- reading -------------------------------------------------------------------------------------------------


class TopicReader:
    """Reads every partition of a topic from the beginning and keeps what it read. "The end" is the high watermark
    of the fetch responses: the embedded broker answers ListOffsets wrongly (see ``stream/runtime/changelog.py``)."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 30.0) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            reconnect_backoff_max_ms=500,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=50,
        )
        deadline = time.monotonic() + timeout_s
        partitions = None
        while not partitions and time.monotonic() < deadline:
            partitions = self.consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.2)
        if not partitions:
            self.consumer.close()
            raise ScenarioFailed(f"topic {topic} never appeared")
        self.partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self.records: list[Any] = []

    def poll(self, timeout_ms: int = 200) -> list[Any]:
        """New records (in partition order), also appended to :attr:`records`."""
        fresh = [record for batch in self.consumer.poll(timeout_ms=timeout_ms).values() for record in batch]
        self.records.extend(fresh)
        return fresh

    def caught_up(self) -> bool:
        for tp in self.partitions:
            highwater = self.consumer.highwater(tp)
            if highwater is None or self.consumer.position(tp) < highwater:
                return False
        return True

    def read_to_end(self, timeout_s: float = 60.0) -> list[Any]:
        """Everything up to the high watermark; raises :class:`ScenarioFailed` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        self.poll()
        while not self.caught_up():
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"could not read {self.topic} to its end within {timeout_s:.0f} s")
            self.poll()
        return self.records

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[Any]:
    reader = TopicReader(bootstrap, topic)
    try:
        return list(reader.read_to_end(timeout_s))
    finally:
        reader.close()


class Answers:
    """Recommendations read as they arrive: which trigger event ids were answered, how often, and when first."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.reader = TopicReader(bootstrap, topic)
        self.count: dict[str, int] = {}
        self.first_seen: dict[str, float] = {}

    def update(self, timeout_ms: int = 200) -> int:
        fresh = self.reader.poll(timeout_ms)
        now = time.monotonic()
        for record in fresh:
            if record.value is None:
                continue
            event_id = str(orjson.loads(record.value)["trigger"].get("event_id"))
            self.count[event_id] = self.count.get(event_id, 0) + 1
            self.first_seen.setdefault(event_id, now)
        return len(fresh)

    def wait_for(self, event_ids: Iterable[str], timeout_s: float) -> set[str]:
        """Wait until every id is answered; returns those still unanswered after ``timeout_s``."""
        missing = set(event_ids) - set(self.count)
        deadline = time.monotonic() + timeout_s
        while missing and time.monotonic() < deadline:
            self.update()
            missing -= set(self.count)
        return missing

    def close(self) -> None:
        self.reader.close()


def restored_states(bootstrap: str, topic: str, partitions: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """Every user's state as a worker restoring the changelog now would see it (``restore_partitions``)."""
    from streamrec.stream.runtime.changelog import restore_partitions

    restored = asyncio.run(restore_partitions(bootstrap, topic, list(range(partitions)), 50, timeout_s=timeout_s))
    return {state.user_id: state for states in restored.users.values() for state in states}


def event_message(event_id: str, user: str, item: str, kind: str, ts: float, **extra: Any) -> Message:
    body = {"event_id": event_id, "user_id": user, "item_id": item, "event_type": kind, "ts": ts, **extra}
    return user.encode(), orjson.dumps(body)


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


# --- report --------------------------------------------------------------------------------------------------


@dataclass
class Table:
    """A compact table: one row per measure, one column per broker, and the target."""

    title: str
    columns: list[str]
    rows: list[tuple[str, list[str], str]] = field(default_factory=list)

    def add(self, measure: str, values: Sequence[Any], target: str = "") -> None:
        self.rows.append((measure, [fmt(v) for v in values], target))

    def render(self) -> str:
        header = ["measure", *self.columns, "target"]
        body = [[measure, *values, target] for measure, values, target in self.rows]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
        out = [self.title, line, "-" * len(line)]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
        return "\n".join(out)


def fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
