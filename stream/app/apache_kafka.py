"""A real Apache Kafka broker for the integration tests: one KRaft node (broker and controller) on 127.0.0.1.

The embedded Tansu broker (``stream/app/broker.py``) keeps the quickstart free of Java, but it is not Apache Kafka: no
durable logs, no TLS or SASL listeners, no compaction, no idempotent producer. Tests that need those start this
instead. It runs the jars that ``bash .ci/fetch-kafka.sh`` copies (Apache Kafka 4.4 and its dependencies, from
Maven Central) with the system's ``java``; where either is missing, :func:`kafka_unavailable_reason` says so and
the tests skip with that reason.

What a test gets:

* a ``PLAINTEXT`` listener always (also the inter-broker one), and on request ``SSL`` (TLS, optionally requiring
  client certificates), ``SASL_PLAINTEXT`` and ``SASL_SSL``, each on its own free port, all on 127.0.0.1 only;
* SASL mechanisms ``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512`` for the users given (SCRAM credentials are
  written into the metadata log when the storage is formatted) and ``OAUTHBEARER`` with Kafka's *unsecured*
  token validator, which accepts any unsigned token with a subject (:func:`unsecured_oauth_token`): fine for a
  test of the client side, never for production;
* a data directory that survives :meth:`ApacheKafka.restart` (same ports, same logs, same committed offsets);
* group timing fit for tests (sessions down to 1 s, no initial rebalance delay), replication factor 1 everywhere.

Every wait is bounded and :meth:`ApacheKafka.stop` always ends the process (SIGTERM, then SIGKILL after a bound).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from streamrec.stream.app.broker import die_with_parent, stop_process
from streamrec.stream.runtime.network import LOOPBACK, free_port

KAFKA_VERSION = "4.4.0"
DEFAULT_LIBS = Path.home() / ".cache" / "streamrec" / f"kafka-{KAFKA_VERSION}" / "libs"
FETCH_HINT = "run bash .ci/fetch-kafka.sh"
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
"""Enabled on every SASL listener."""

# Characters that would need escaping in a JAAS option or a StorageTool --add-scram argument; test credentials
# never need them, so they are refused rather than escaped.
_SAFE_CREDENTIAL = re.compile(r"[A-Za-z0-9_.@+-]+")
_JAVA_OPTIONS = (
    "-Xms128m",
    "-XX:+UseSerialGC",  # two cores: no parallel collector threads competing with the tests
    "-XX:TieredStopAtLevel=1",  # a broker that lives for a test module: start fast rather than peak fast
    "-Djava.awt.headless=true",
)


def kafka_libs_dir() -> Path:
    """Where ``.ci/fetch-kafka.sh`` puts the jars: ``$STREAMREC_KAFKA_LIBS`` or the user's cache."""
    configured = os.environ.get("STREAMREC_KAFKA_LIBS")
    return Path(configured) if configured else DEFAULT_LIBS


def kafka_unavailable_reason(libs: Path | None = None) -> str | None:
    """Why an :class:`ApacheKafka` cannot start here (for a test's skip message), or ``None`` if it can."""
    if shutil.which("java") is None:
        return "Apache Kafka needs java, which is not on PATH (install a JDK 17+, then run bash .ci/fetch-kafka.sh)"
    libs = libs or kafka_libs_dir()
    if not any(libs.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        return f"Apache Kafka {KAFKA_VERSION} jars not found in {libs}: {FETCH_HINT}"
    return None


def unsecured_oauth_token(subject: str, lifetime_s: float = 3600.0) -> str:
    """An unsigned JWT (``alg: none``) that Kafka's default, unsecured OAUTHBEARER validator accepts."""

    def encode(part: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return f"{encode({'alg': 'none'})}.{encode({'sub': subject, 'iat': now, 'exp': int(now + lifetime_s)})}."


@dataclass(frozen=True)
class BrokerTls:
    """The broker's TLS identity as PEM files."""

    certificate: Path
    """The broker's certificate chain; its names must include what clients connect to (127.0.0.1)."""
    private_key: Path
    """The certificate's private key, unencrypted PKCS#8 (``-----BEGIN PRIVATE KEY-----``)."""
    ca: Path
    """CA certificates that client certificates must chain to."""
    client_auth: Literal["none", "requested", "required"] = "none"
    """Whether the ``SSL`` listener asks clients for a certificate (``SASL_SSL`` never does: SASL authenticates)."""


class ApacheKafka:
    """One Apache Kafka KRaft node on 127.0.0.1; use as a context manager so it is always stopped.

    ``data_dir`` holds the configuration, the logs (``data/``) and the broker's own log (``broker.log``); it is
    formatted on the first start only, so :meth:`restart` keeps every record and committed offset. ``sasl_users``
    (name → password) can authenticate with PLAIN and both SCRAM mechanisms on the SASL listeners, which exist only
    when users are given; the ``SSL`` and ``SASL_SSL`` listeners exist only with ``tls``. ``extra_config`` adds or
    overrides broker properties (say ``log.cleaner.backoff.ms``).

    Start it from a thread that lives as long as the broker should (the main thread in tests): the JVM is killed
    when the thread that started it exits, so that no broker outlives its test run.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        tls: BrokerTls | None = None,
        sasl_users: Mapping[str, str] | None = None,
        extra_config: Mapping[str, str] | None = None,
        libs: Path | None = None,
        heap_mb: int = 512,
        log_level: Literal["trace", "debug", "info", "warn", "error"] = "info",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.tls = tls
        self.sasl_users = dict(sasl_users or {})
        for name, password in self.sasl_users.items():
            if not (_SAFE_CREDENTIAL.fullmatch(name) and _SAFE_CREDENTIAL.fullmatch(password)):
                raise ValueError(f"SASL user {name!r}: use only letters, digits and _.@+- in test credentials")
        self.extra_config = dict(extra_config or {})
        self.libs = libs or kafka_libs_dir()
        self.heap_mb = heap_mb
        self.log_level = log_level
        self.log_path = self.data_dir / "broker.log"
        self.process: subprocess.Popen | None = None
        # Chosen once: a restart must come back on the same addresses, which clients and tests hold on to.
        self.ports: dict[str, int] = {name: free_port() for name in ("PLAINTEXT", "CONTROLLER", *self._secured())}

    def _secured(self) -> list[str]:
        listeners = []
        if self.tls:
            listeners.append("SSL")
        if self.sasl_users:
            listeners.append("SASL_PLAINTEXT")
            if self.tls:
                listeners.append("SASL_SSL")
        return listeners

    @property
    def bootstrap(self) -> str:
        """The ``PLAINTEXT`` listener's ``host:port``."""
        return self.bootstrap_for("PLAINTEXT")

    def bootstrap_for(self, protocol: str) -> str:
        """The ``host:port`` of the listener speaking ``protocol`` (``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``)."""
        if protocol == "CONTROLLER" or protocol not in self.ports:
            raise ValueError(
                f"this broker has no {protocol} listener; it has {sorted(set(self.ports) - {'CONTROLLER'})}"
            )
        return f"{LOOPBACK}:{self.ports[protocol]}"

    # --- configuration -------------------------------------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        """The broker's configuration (written to ``server.properties`` at each start)."""
        listeners = [name for name in self.ports if name != "CONTROLLER"]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{LOOPBACK}:{self.ports['CONTROLLER']}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join(f"{name}://{LOOPBACK}:{port}" for name, port in self.ports.items()),
            "advertised.listeners": ",".join(f"{name}://{LOOPBACK}:{self.ports[name]}" for name in listeners),
            # Listener names are the protocols they speak; the controller's is plaintext.
            "listener.security.protocol.map": ",".join(
                f"{name}:{'PLAINTEXT' if name == 'CONTROLLER' else name}" for name in self.ports
            ),
            "log.dirs": str(self.data_dir / "data"),
            "num.partitions": "1",
            # One node: every internal topic has a single replica, and few partitions to create quickly.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Test timing: groups form at once, and the 2 s sessions the tests use are allowed.
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
        }
        if self.tls:
            props.update(
                {
                    "ssl.keystore.type": "PEM",
                    "ssl.keystore.location": str(self.data_dir / "broker-keystore.pem"),
                    "ssl.truststore.type": "PEM",
                    "ssl.truststore.location": str(self.tls.ca),
                    "listener.name.ssl.ssl.client.auth": self.tls.client_auth,
                }
            )
        if self.sasl_users:
            props["sasl.enabled.mechanisms"] = ",".join(SASL_MECHANISMS)
            plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.sasl_users.items())
            for listener in ("SASL_PLAINTEXT", "SASL_SSL"):
                if listener not in self.ports:
                    continue
                prefix = f"listener.name.{listener.lower()}"
                props[f"{prefix}.plain.sasl.jaas.config"] = (
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
                )
                for scram in ("scram-sha-256", "scram-sha-512"):
                    props[f"{prefix}.{scram}.sasl.jaas.config"] = (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    )
                # With no JWKS endpoint configured, Kafka validates OAUTHBEARER tokens with its unsecured validator.
                props[f"{prefix}.oauthbearer.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required "
                    'unsecuredLoginStringClaim_sub="broker";'
                )
        props.update(self.extra_config)
        return props

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            # A PEM keystore is one file holding the private key and then the certificate chain.
            keystore = self.data_dir / "broker-keystore.pem"
            keystore.write_text(self.tls.private_key.read_text() + self.tls.certificate.read_text())
            keystore.chmod(0o600)
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in self.server_properties().items()))
        path.chmod(0o600)  # it holds the test users' passwords
        return path

    def _java(self, main_class: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap_mb}m",
            *_JAVA_OPTIONS,
            f"-Dorg.slf4j.simpleLogger.defaultLogLevel={self.log_level}",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
            "-cp",
            f"{self.libs}/*",
            main_class,
            *args,
        ]

    def _format_storage(self, config: Path, timeout_s: float) -> None:
        """Format the data directory once (KRaft needs it), creating the SCRAM users in the same step."""
        if (self.data_dir / "data" / "meta.properties").exists():
            return
        scram = [
            arg
            for name, password in self.sasl_users.items()
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
            for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
        ]
        command = self._java(
            "kafka.tools.StorageTool", "format", "--standalone", "-t", _cluster_id(), "-c", str(config), *scram
        )
        with self.log_path.open("ab") as log:
            try:
                result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"formatting Kafka storage took over {timeout_s:g} s; see {self.log_path}") from None
        if result.returncode != 0:
            raise RuntimeError(f"formatting Kafka storage failed (exit {result.returncode}); see {self.log_path}")

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> ApacheKafka:
        """Format (first start only), launch, and return once every listener accepts connections."""
        reason = kafka_unavailable_reason(self.libs)
        if reason:
            raise RuntimeError(reason)
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("this Apache Kafka broker is already running")
        deadline = time.monotonic() + timeout_s
        config = self._write_config()
        self._format_storage(config, timeout_s)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._java("kafka.Kafka", str(config)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,  # a Ctrl-C in the terminal reaches the test run, which stops the broker in order
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        try:
            # The broker opens its client listeners only once it is registered and unfenced, i.e. ready.
            for name, port in self.ports.items():
                self._wait_for_port(name, port, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_port(self, name: str, port: int, deadline: float) -> None:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Apache Kafka exited with code {self.process.returncode} before listening on {name} "
                    f"({LOOPBACK}:{port}); see {self.log_path}"
                )
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
            time.sleep(0.05)
        raise TimeoutError(f"Apache Kafka did not listen on {name} ({LOOPBACK}:{port}) in time; see {self.log_path}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (a controlled shutdown that flushes the logs), then SIGKILL if it takes over ``timeout_s``."""
        if self.process is not None:
            stop_process(self.process, timeout_s)

    def restart(self, timeout_s: float = 60.0) -> ApacheKafka:
        """Stop and start again on the same ports and data: what was acknowledged before is still there."""
        self.stop()
        return self.start(timeout_s)

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_id() -> str:
    """A new cluster id in Kafka's format (URL-safe base64 of 16 random bytes), without starting a JVM for it."""
    while True:
        candidate = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        if not candidate.startswith("-"):  # Kafka avoids ids that a command line would read as an option
            return candidate
