"""TLS and SASL for real: workers, tools and clients through a TLS terminator in front of the embedded broker, and
against Apache Kafka's own SSL and SASL listeners.

* The embedded broker (Tansu) speaks plaintext only, so stunnel terminates TLS in front of it, requiring client
  certificates; Tansu advertises the terminator's port, so every connection after the bootstrap goes through it too.
* Apache Kafka 4.4 (``stream/app/apache_kafka.py``) checks SASL PLAIN, SCRAM and OAUTHBEARER credentials and client
  certificates itself. Those tests skip, saying why, where java or the broker's jars are missing.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError

from streamrec.model.artifacts import ModelArtifacts
from streamrec.stream.app.apache_kafka import ApacheKafka, BrokerTls, kafka_unavailable_reason, unsecured_oauth_token
from streamrec.stream.app.broker import tansu_binary
from streamrec.stream.runtime.network import LOOPBACK, free_port
from streamrec.stream.runtime.security import aiokafka_options, kafka_python_options
from streamrec.stream.runtime.topics import ensure_topics, required_topics
from streamrec.stream.settings import Settings
from tests.certificates import CertificateSet
from tests.integration.conftest import TopicNames, WorkerProcess, launch_worker_process
from tests.integration.kafka_io import event_message, recommendation_for
from tests.integration.workers import streamrec_command

pytestmark = pytest.mark.integration

K = 20
ALICE_PASSWORD = "alice-Pa55-in-test"  # a SASL user of the Apache Kafka broker below
REFUSED_WORKER_BOUND_S = 75.0
"""A worker that cannot connect must exit non-zero within this: it gives up on its first Kafka client (the topic
admin) after that client's 30 s bootstrap timeout, plus the model load before it."""


# --- secured kafka-python clients for the tests' own producing and reading ---------------------------------------


def produce(bootstrap: str, options: Mapping[str, Any], topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, **options)
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def read_until(
    bootstrap: str,
    options: Mapping[str, Any],
    topic: str,
    predicate: Callable[[ConsumerRecord], bool],
    timeout_s: float = 60.0,
) -> ConsumerRecord:
    """The first record of ``topic`` (read from the beginning) that matches ``predicate``, waiting up to
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, **options)
    try:
        partitions = None
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.2)
        if not partitions:
            raise TimeoutError(f"topic {topic} never appeared")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                for record in batch:
                    if predicate(record):
                        return record
        raise TimeoutError(f"no matching record on {topic} within {timeout_s} s")
    finally:
        consumer.close()


def wait_for_exit(worker: WorkerProcess, started: float, bound_s: float) -> int:
    """The worker's exit code; fails the test if it is still running ``bound_s`` after ``started``."""
    try:
        return worker.process.wait(timeout=max(0.0, started + bound_s - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker still runs {bound_s} s after start:\n{worker.log_path.read_text()[-2000:]}")


def journey(items: list[str], user: str, prefix: str) -> list[tuple[bytes, bytes]]:
    now = time.time()
    return [event_message(user, item, "view", f"{prefix}-{n}", now + n) for n, item in enumerate(items)]


def assert_recommendation(record: ConsumerRecord, user: str) -> None:
    recommendation = orjson.loads(record.value)
    assert recommendation["user_id"] == user
    assert len(recommendation["items"]) == K


def settings_from(env: Mapping[str, str], **overrides: Any) -> Settings:
    """The settings a process with ``STREAMREC_*`` variables ``env`` would have (plus ``overrides``)."""
    return Settings(**{name.removeprefix("STREAMREC_").lower(): value for name, value in env.items()}, **overrides)


# --- TLS in front of the embedded broker ----------------------------------------------------------------------------


class TlsTerminatedTansu:
    """Tansu on a plaintext port, reachable only through stunnel.

    ``tls_port`` requires a client certificate signed by the test CA and presents a certificate for 127.0.0.1;
    ``wrong_name_port`` presents a certificate for another host name (and asks for no client certificate). Tansu
    advertises ``tls_port``, so clients bootstrapped through either end up on ``tls_port``.
    """

    def __init__(self, certificates: CertificateSet, directory: Path) -> None:
        self.certificates = certificates
        self.directory = directory
        self.plain_port, self.tls_port, self.wrong_name_port = free_port(), free_port(), free_port()
        self.processes: list[subprocess.Popen] = []

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.tls_port}"

    def start(self) -> TlsTerminatedTansu:
        certs = self.certificates
        config = self.directory / "stunnel.conf"
        config.write_text(
            f"""foreground = yes
pid =
syslog = no
debug = notice

[kafka-tls]
accept = {LOOPBACK}:{self.tls_port}
connect = {LOOPBACK}:{self.plain_port}
cert = {certs.server_cert}
key = {certs.server_key}
CAfile = {certs.ca}
requireCert = yes
verifyChain = yes

[kafka-wrong-name]
accept = {LOOPBACK}:{self.wrong_name_port}
connect = {LOOPBACK}:{self.plain_port}
cert = {certs.wrong_name_cert}
key = {certs.wrong_name_key}
"""
        )
        tansu = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://{LOOPBACK}:{self.plain_port}",
            "--advertised-listener-url",
            f"tcp://{LOOPBACK}:{self.tls_port}",
        ]
        terminator = shutil.which("stunnel4") or shutil.which("stunnel")
        assert terminator is not None
        for command, log_name in ((tansu, "tansu.log"), ([terminator, str(config)], "stunnel.log")):
            with open(self.directory / log_name, "wb") as log:
                self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 15
        for port in (self.plain_port, self.tls_port, self.wrong_name_port):
            while True:
                with suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
                    break
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                    self.stop()
                    raise RuntimeError(f"TLS terminator or broker did not come up; logs in {self.directory}")
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture(scope="module")
def tls_broker(certificates: CertificateSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsTerminatedTansu]:
    if not (shutil.which("stunnel4") or shutil.which("stunnel")):
        pytest.skip("stunnel4 is not installed (apt-get install stunnel4), so nothing terminates TLS for Tansu")
    broker = TlsTerminatedTansu(certificates, tmp_path_factory.mktemp("tls-broker")).start()
    try:
        yield broker
    finally:
        broker.stop()


def tls_env(certificates: CertificateSet, bootstrap: str, client_certificate: bool) -> dict[str, str]:
    env = {
        "STREAMREC_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMREC_SECURITY_PROTOCOL": "SSL",
        "STREAMREC_SSL_CAFILE": str(certificates.ca),
    }
    if client_certificate:
        env["STREAMREC_SSL_CERTFILE"] = str(certificates.client_cert)
        env["STREAMREC_SSL_KEYFILE"] = str(certificates.client_key)
    return env


@pytest.fixture(scope="module")
def worker_without_client_certificate(
    tls_broker: TlsTerminatedTansu,
    certificates: CertificateSet,
    trained_artifacts: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[WorkerProcess, float]]:
    """A worker pointed at the terminator without a client certificate, and when it was launched.

    It keeps trying to connect for about 30 s before it gives up, so it is launched by the module's first test and
    checked by its last one (:func:`test_the_worker_without_a_client_certificate_was_refused`): the wait overlaps
    the other tests instead of adding to the suite's time.
    """
    suffix = uuid.uuid4().hex[:8]
    topics = TopicNames(
        *(f"{name}-refused-{suffix}" for name in ("events", "recs", "dlq", "state", "items", "group", "aggregates"))
    )
    log_path = tmp_path_factory.mktemp("refused-worker") / "worker.log"
    launched_at = time.monotonic()
    worker = launch_worker_process(
        trained_artifacts, topics, log_path, **tls_env(certificates, tls_broker.bootstrap, client_certificate=False)
    )
    try:
        yield worker, launched_at
    finally:
        worker.stop(signal.SIGKILL, timeout_s=10)


def test_worker_serves_through_tls_with_a_client_certificate(
    tls_broker: TlsTerminatedTansu,
    certificates: CertificateSet,
    start_worker: Callable[..., WorkerProcess],
    topics: TopicNames,
    artifacts: ModelArtifacts,
    worker_without_client_certificate: tuple[WorkerProcess, float],  # launched now, checked at the end
) -> None:
    worker = start_worker(**tls_env(certificates, tls_broker.bootstrap, client_certificate=True))

    client = kafka_python_options(
        Settings(
            security_protocol="SSL",
            ssl_cafile=certificates.ca,
            ssl_certfile=certificates.client_cert,
            ssl_keyfile=certificates.client_key,
        )
    )
    produce(tls_broker.bootstrap, client, topics.events, journey(list(artifacts.item_ids[:4]), "tls-user", "tls"))
    record = read_until(tls_broker.bootstrap, client, topics.recommendations, recommendation_for("tls-3"))
    assert_recommendation(record, "tls-user")
    assert worker.process.poll() is None


def test_host_name_check(tls_broker: TlsTerminatedTansu, certificates: CertificateSet, topics: TopicNames) -> None:
    """A certificate for another host is refused unless ``ssl_check_hostname`` is off (the chain still counts)."""
    wrong_name = f"{LOOPBACK}:{tls_broker.wrong_name_port}"
    checked = Settings(
        bootstrap_servers=wrong_name,
        events_topic=topics.events,
        security_protocol="SSL",
        ssl_cafile=certificates.ca,
        ssl_certfile=certificates.client_cert,
        ssl_keyfile=certificates.client_key,
    )
    unchecked = checked.model_copy(update={"ssl_check_hostname": False})

    async def send(settings: Settings) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **aiokafka_options(settings))
        try:
            await asyncio.wait_for(producer.start(), 15)
            await asyncio.wait_for(producer.send_and_wait(topics.events, b"{}"), 15)
        finally:
            await producer.stop()

    started = time.monotonic()
    with pytest.raises(Exception, match="Unable to bootstrap"):
        asyncio.run(send(checked))
    with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"):
        ensure_topics(checked, timeout_s=3)
    assert time.monotonic() - started < 15

    asyncio.run(send(unchecked))
    assert ensure_topics(unchecked, timeout_s=15)[topics.events] >= 1


# --- Apache Kafka: SASL and mutual TLS checked by the broker itself -------------------------------------------------


@pytest.fixture(scope="module")
def kafka(certificates: CertificateSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    reason = kafka_unavailable_reason()
    if reason:
        pytest.skip(reason)
    tls = BrokerTls(certificates.server_cert, certificates.server_key, certificates.ca, client_auth="required")
    with ApacheKafka(tmp_path_factory.mktemp("apache-kafka"), tls=tls, sasl_users={"alice": ALICE_PASSWORD}) as broker:
        yield broker


def create_topics(kafka: ApacheKafka, topics: TopicNames, partitions: int = 4) -> None:
    """Create a test's topics on Apache Kafka and wait until the broker lists them all.

    ``ensure_topics`` reads the partition counts back right after creating topics, and Apache Kafka may not list a
    new topic that soon (the worker then refuses to start: "fewer partitions"); creating them first keeps these
    tests about security.
    """
    wanted = required_topics(settings_from(topics.env()))
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs) for name, configs in wanted.items()])
        deadline = time.monotonic() + 15
        while set(wanted) - set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {sorted(wanted)} not all listed within 15 s")
            time.sleep(0.1)
    finally:
        admin.close()


def scram_env(kafka: ApacheKafka, certificates: CertificateSet) -> dict[str, str]:
    return {
        "STREAMREC_BOOTSTRAP_SERVERS": kafka.bootstrap_for("SASL_SSL"),
        "STREAMREC_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMREC_SASL_MECHANISM": "SCRAM-SHA-512",
        "STREAMREC_SASL_USERNAME": "alice",
        "STREAMREC_SSL_CAFILE": str(certificates.ca),
    }


def test_sasl_ssl_scram_worker_replay_and_catalog(
    kafka: ApacheKafka,
    certificates: CertificateSet,
    start_worker: Callable[..., WorkerProcess],
    topics: TopicNames,
    artifacts: ModelArtifacts,
    tmp_path: Path,
) -> None:
    """A worker with its password in a mounted-secret file; the replay and catalog tools with it in the
    environment; all over SASL_SSL with SCRAM-SHA-512."""
    password_file = tmp_path / "sasl-password"
    password_file.write_text(ALICE_PASSWORD + "\n")
    env = scram_env(kafka, certificates)
    create_topics(kafka, topics)
    worker = start_worker(**env, STREAMREC_SASL_PASSWORD_FILE=str(password_file))

    tool_env = {**env, **topics.env(), "STREAMREC_SASL_PASSWORD": ALICE_PASSWORD}
    items = tmp_path / "items.jsonl"
    items.write_bytes(
        orjson.dumps({"item_id": "sasl-new-item", "title": "Secure Kettle", "category": "kitchen", "ts": time.time()})
        + b"\n"
    )
    published = streamrec_command("catalog", "--items", str(items), env=tool_env)
    assert published.returncode == 0, published.stderr
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(value + b"\n" for _, value in journey(list(artifacts.item_ids[:3]), "scram", "scram")))
    replayed = streamrec_command("replay", "--events", str(events), env=tool_env)
    assert replayed.returncode == 0, replayed.stderr
    assert "sent 3 events" in replayed.stdout

    client = kafka_python_options(settings_from(tool_env))
    bootstrap = kafka.bootstrap_for("SASL_SSL")
    record = read_until(bootstrap, client, topics.recommendations, recommendation_for("scram-2"))
    assert_recommendation(record, "scram")
    item = read_until(bootstrap, client, topics.items, lambda r: r.key == b"sasl-new-item")
    assert orjson.loads(item.value)["title"] == "Secure Kettle"
    deadline = time.monotonic() + 15  # the worker applies the catalog between batches
    while worker.metric_value("streamrec_catalog_items") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.metric_value("streamrec_catalog_items") >= 1

    printed = published.stdout + published.stderr + replayed.stdout + replayed.stderr
    assert ALICE_PASSWORD not in printed + worker.log_path.read_text()


def test_wrong_password_fails_in_bounded_time(kafka: ApacheKafka, certificates: CertificateSet) -> None:
    settings = settings_from(scram_env(kafka, certificates), sasl_password="not-alices-password")

    async def consume() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, **aiokafka_options(settings))
        try:
            await asyncio.wait_for(consumer.start(), 15)
        finally:
            await consumer.stop()

    started = time.monotonic()
    with pytest.raises(Exception, match="Unable to bootstrap"):  # aiokafka: the worker's consumer and producer
        asyncio.run(consume())
    assert time.monotonic() - started < 5
    with pytest.raises(KafkaTimeoutError):  # kafka-python: topic admin, replay and catalog tools
        ensure_topics(settings, timeout_s=3)
    assert time.monotonic() - started < 15

    # A command says so in one line, naming the handshake rather than "cannot reach".
    forgot = streamrec_command(
        "forget", "--user", "u1", env={**scram_env(kafka, certificates), "STREAMREC_SASL_PASSWORD": "wrong"}
    )
    assert forgot.returncode == 1
    assert forgot.stderr.count("\n") == 1 and "Traceback" not in forgot.stderr, forgot.stderr
    assert "could not complete its SASL_SSL with SCRAM-SHA-512 handshake" in forgot.stderr, forgot.stderr


def test_faust_worker_over_sasl_plaintext_with_plain(
    kafka: ApacheKafka,
    start_worker: Callable[..., WorkerProcess],
    topics: TopicNames,
    artifacts: ModelArtifacts,
) -> None:
    env = {
        "STREAMREC_BOOTSTRAP_SERVERS": kafka.bootstrap_for("SASL_PLAINTEXT"),
        "STREAMREC_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMREC_SASL_MECHANISM": "PLAIN",
        "STREAMREC_SASL_USERNAME": "alice",
        "STREAMREC_SASL_PASSWORD": ALICE_PASSWORD,
    }
    create_topics(kafka, topics)
    worker = start_worker(**env, STREAMREC_RUNTIME="faust")
    client = kafka_python_options(settings_from(env))
    bootstrap = kafka.bootstrap_for("SASL_PLAINTEXT")
    produce(bootstrap, client, topics.events, journey(list(artifacts.item_ids[10:13]), "plain-user", "plain"))
    record = read_until(bootstrap, client, topics.recommendations, recommendation_for("plain-2"))
    assert_recommendation(record, "plain-user")
    assert worker.process.poll() is None
    # Killed rather than stopped: how faust shuts down is not what this test is about (the embedded-broker tests
    # check a clean SIGTERM), and a faust stop can take seconds.
    worker.stop(signal.SIGKILL)


def test_oauthbearer_and_mutual_tls_clients(
    kafka: ApacheKafka, certificates: CertificateSet, topics: TopicNames, tmp_path: Path
) -> None:
    """Both client libraries authenticate with a token file (re-read per connection) over SASL_SSL, and with a
    client certificate on the SSL listener, which refuses clients without one."""
    token_file = tmp_path / "token"
    token_file.write_text(unsecured_oauth_token("alice"))
    oauth = Settings(
        bootstrap_servers=kafka.bootstrap_for("SASL_SSL"),
        events_topic=topics.events,
        recommendations_topic=topics.recommendations,
        dead_letter_topic=topics.dead_letters,
        state_topic=topics.state,
        items_topic=topics.items,
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_file=token_file,
        ssl_cafile=certificates.ca,
    )
    mutual_tls = Settings(
        bootstrap_servers=kafka.bootstrap_for("SSL"),
        security_protocol="SSL",
        ssl_cafile=certificates.ca,
        ssl_certfile=certificates.client_cert,
        ssl_keyfile=certificates.client_key,
    )
    no_client_certificate = mutual_tls.model_copy(update={"ssl_certfile": None, "ssl_keyfile": None})
    create_topics(kafka, topics)
    assert ensure_topics(oauth, timeout_s=15)[topics.events] >= 1  # kafka-python, token provider

    async def send(settings: Settings, value: bytes) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **aiokafka_options(settings))
        try:
            await asyncio.wait_for(producer.start(), 15)
            await asyncio.wait_for(producer.send_and_wait(topics.events, value, key=b"k"), 15)
        finally:
            await producer.stop()

    asyncio.run(send(oauth, b"by-token"))  # aiokafka, token provider
    token_file.write_text(unsecured_oauth_token("alice-renewed"))  # a refreshed token: new connections use it
    asyncio.run(send(mutual_tls, b"by-certificate"))
    for settings, value in ((oauth, b"by-token"), (mutual_tls, b"by-certificate")):
        read_until(
            settings.bootstrap_servers, kafka_python_options(settings), topics.events, lambda r, v=value: r.value == v
        )
    with pytest.raises(Exception, match="Unable to bootstrap"):
        asyncio.run(send(no_client_certificate, b"refused"))


def test_client_properties_file_for_kafka_tools_over_sasl_ssl(
    kafka: ApacheKafka, certificates: CertificateSet, tmp_path: Path
) -> None:
    """The ``--command-config`` file documented in deploy/README.md, with Kafka's own topic tool."""
    properties = tmp_path / "client.properties"
    properties.write_text(
        "security.protocol=SASL_SSL\n"
        "sasl.mechanism=SCRAM-SHA-512\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="alice" password="{ALICE_PASSWORD}";\n'
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={certificates.ca}\n"
    )
    topic = f"tools-{time.time_ns()}"
    command = [
        "java", "-XX:TieredStopAtLevel=1", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", f"{kafka.libs}/*",
        "org.apache.kafka.tools.TopicCommand", "--bootstrap-server", kafka.bootstrap_for("SASL_SSL"),
        "--command-config", str(properties),
    ]  # fmt: skip
    created = subprocess.run(
        [*command, "--create", "--topic", topic, "--partitions", "2", "--replication-factor", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    assert f"Created topic {topic}." in created.stdout


def test_restart_keeps_acknowledged_records_and_users(kafka: ApacheKafka, certificates: CertificateSet) -> None:
    topic = f"durable-{time.time_ns()}"
    produce(kafka.bootstrap, {}, topic, [(b"k", b"before restart")])
    kafka.restart()
    scram = kafka_python_options(settings_from(scram_env(kafka, certificates), sasl_password=ALICE_PASSWORD))
    record = read_until(kafka.bootstrap_for("SASL_SSL"), scram, topic, lambda r: True, timeout_s=30)
    assert record.value == b"before restart"


def test_the_worker_without_a_client_certificate_was_refused(
    worker_without_client_certificate: tuple[WorkerProcess, float],
) -> None:
    """The terminator ends every handshake that offers no client certificate: the worker, launched by the first
    test of this module, gives up and exits non-zero instead of hanging."""
    worker, launched_at = worker_without_client_certificate
    assert wait_for_exit(worker, launched_at, REFUSED_WORKER_BOUND_S) != 0
    log = worker.log_path.read_text()
    assert "topics ready" not in log  # it never got as far as its topics
    assert "Unable to bootstrap" in log, log[-2000:]
