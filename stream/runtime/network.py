"""Network checks made before a Kafka client or a server starts: bootstrap addresses, free ports, a broker that
accepts connections. Plain sockets, so that a mistake is reported in one line instead of a client's retry log."""

from __future__ import annotations

import errno
import socket
import time

from streamrec.stream.errors import KAFKA_FIX, StreamrecError, one_line

LOOPBACK = "127.0.0.1"
DEFAULT_KAFKA_PORT = 9092

KAFKA_STARTUP_WAIT_S = 10.0
"""How long a worker keeps trying to open a connection to Kafka at startup before it exits non-zero: long enough
for a broker started at the same moment (docker compose, a pod's sidecar), short enough to fail visibly."""
_CONNECT_ATTEMPT_S = 3.0  # one connection attempt; a firewall that drops packets answers with nothing at all
_CONNECT_RETRY_S = 0.5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def require_free_port(host: str, port: int, what: str, fix: str) -> None:
    """Raise a :class:`StreamrecError` naming ``what`` and ``fix`` unless ``host:port`` can be listened on now.

    The probe sets ``SO_REUSEADDR`` like the servers it stands in for (Prometheus' HTTP server, Tansu), so a port
    left in TIME_WAIT by a previous run counts as free, as it is for them.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except socket.gaierror as exc:
        raise StreamrecError(
            f"cannot listen on {host}:{port} for {what}: unknown address ({exc.strerror}); {fix}"
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StreamrecError(f"port {port} on {host} is already in use ({what}); {fix}") from None
        raise StreamrecError(f"cannot listen on {host}:{port} for {what} ({exc.strerror}); {fix}") from None


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port`` pairs of a comma-separated bootstrap list (``[v6]:port`` for IPv6; no port means 9092, as
    the Kafka clients assume)."""
    servers: list[tuple[str, int]] = []
    for entry in (part.strip() for part in bootstrap.split(",")):
        if not entry:
            continue
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port_text = rest.removeprefix(":") or str(DEFAULT_KAFKA_PORT)
        elif entry.count(":") == 1:
            host, _, port_text = entry.partition(":")
        else:
            host, port_text = entry, str(DEFAULT_KAFKA_PORT)
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise StreamrecError(
                f"bootstrap server {entry!r} is not HOST:PORT; pass --bootstrap HOST:PORT[,HOST:PORT...] "
                "(or set STREAMREC_BOOTSTRAP_SERVERS)"
            )
        servers.append((host, int(port_text)))
    if not servers:
        raise StreamrecError(
            "no Kafka bootstrap server given; pass --bootstrap HOST:PORT (or set STREAMREC_BOOTSTRAP_SERVERS)"
        )
    return servers


def wait_for_kafka(bootstrap: str, timeout_s: float) -> None:
    """Return once any bootstrap server accepts a TCP connection; raise a one-line :class:`StreamrecError` after
    ``timeout_s`` (0: a single attempt) instead of the Kafka clients' endless reconnect logging.

    Only the connection is checked, not the protocol: TLS, SASL and topic access fail later, each with its own
    message (:func:`streamrec.stream.errors.kafka_failure`).
    """
    servers = parse_bootstrap(bootstrap)
    deadline = time.monotonic() + timeout_s
    while True:
        reasons: list[str] = []
        for host, port in servers:
            attempt_s = min(_CONNECT_ATTEMPT_S, max(deadline - time.monotonic(), 0.5))
            try:
                with socket.create_connection((host, port), timeout=attempt_s):
                    return
            except socket.gaierror:
                reasons.append(f"unknown host {host}")
            except TimeoutError:
                reasons.append(f"no answer from {host}:{port} within {attempt_s:.0f} s")
            except OSError as exc:
                reasons.append((exc.strerror or one_line(exc)).lower())
        if time.monotonic() + _CONNECT_RETRY_S > deadline:
            break
        time.sleep(_CONNECT_RETRY_S)
    tried = f", tried for {timeout_s:g} s" if timeout_s > 0 else ""
    raise StreamrecError(f"cannot reach Kafka at {bootstrap} ({'; '.join(dict.fromkeys(reasons))}{tried}); {KAFKA_FIX}")
