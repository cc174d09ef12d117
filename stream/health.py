"""Liveness and readiness of a worker, served beside ``/metrics``.

* ``GET /healthz`` (liveness): 200 while the worker's event loop keeps turning; 503 once it has been stuck for
  :data:`STUCK_AFTER_S`, so a supervisor restarts a worker that can no longer heartbeat or stop.
* ``GET /readyz`` (readiness): 200 when the worker serves: the catalog is loaded, the consumer group is joined, every
  assigned partition's state is restored and output is being delivered; otherwise 503 with the reasons, one per
  line. A worker that owns no partition (more workers than partitions) is ready: it is healthy and waits for work.
* ``GET /metrics``: Prometheus.
* ``GET /recommendations/<user id>``: the list the user was last shown (``read_path.py``), once the worker has set
  :attr:`Health.read_path`. Every other path answers 404.

Readiness is also exported as the gauge ``streamrec_ready`` for dashboards and alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

if TYPE_CHECKING:
    from streamrec.stream.read_path import ReadPath

log = logging.getLogger(__name__)
READ_PREFIX = "/recommendations/"

STUCK_AFTER_S = 30.0
TICK_S = 1.0


class Health:
    """What the worker's parts report about themselves; read by the HTTP handlers from another thread."""

    def __init__(self, ready_gauge: object | None = None) -> None:
        self._problems: dict[str, str] = {"starting": "the worker is starting"}
        self._lock = threading.Lock()
        self._last_tick = time.monotonic()
        self._ready_gauge = ready_gauge
        #: Set by the worker once it knows its topics: serves ``GET /recommendations/<user id>``.
        self.read_path: ReadPath | None = None
        self._update_gauge()

    def problem(self, name: str, description: str) -> None:
        """Mark the worker not ready for ``name`` (e.g. ``delivery``) until :meth:`resolved` is called."""
        with self._lock:
            self._problems[name] = description
        self._update_gauge()

    def resolved(self, name: str) -> None:
        with self._lock:
            self._problems.pop(name, None)
        self._update_gauge()

    @property
    def problems(self) -> list[str]:
        with self._lock:
            return [f"{name}: {text}" for name, text in sorted(self._problems.items())]

    @property
    def ready(self) -> bool:
        with self._lock:
            return not self._problems

    def tick(self) -> None:
        self._last_tick = time.monotonic()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._last_tick < STUCK_AFTER_S

    async def keep_ticking(self, stop: asyncio.Event) -> None:
        """Prove the event loop turns; runs until ``stop``."""
        while not stop.is_set():
            self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)

    def _update_gauge(self) -> None:
        if self._ready_gauge is not None:
            self._ready_gauge.set(1.0 if self.ready else 0.0)  # type: ignore[attr-defined]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Probes arrive every few seconds; one access-log line each would drown the worker's own log."""


_STATUS_LINES = {
    200: "200 OK",
    400: "400 Bad Request",
    404: "404 Not Found",
    421: "421 Misdirected Request",
    503: "503 Service Unavailable",
}


def health_app(health: Health, registry: CollectorRegistry) -> Callable:
    """A WSGI app answering ``/healthz``, ``/readyz``, ``/metrics`` and ``/recommendations/<user id>``."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            ok, body = health.alive, "alive\n" if health.alive else "event loop stuck\n"
        elif path == "/readyz":
            problems = health.problems
            ok, body = not problems, "ready\n" if not problems else "\n".join(problems) + "\n"
        elif path.startswith(READ_PREFIX) and health.read_path is not None:
            # PATH_INFO arrives percent-decoded, as latin-1 text of the raw bytes (PEP 3333): back to UTF-8.
            user_id = path[len(READ_PREFIX) :].encode("latin-1", "replace").decode("utf-8", "replace")
            status, answer = health.read_path.answer(user_id)
            start_response(_STATUS_LINES.get(status, f"{status} Error"), [("Content-Type", "application/json")])
            return [orjson.dumps(answer)]
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics, /healthz, /readyz or /recommendations/<user id>\n"]
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
        return [body.encode()]

    return app


class _Server(ThreadingWSGIServer):
    # socketserver's default backlog of 5 drops connections from a burst of page renders (the read path): a
    # dropped SYN costs the caller a one-second retransmit.
    request_queue_size = 128


def start_http_server(host: str, port: int, health: Health, registry: CollectorRegistry) -> ThreadingWSGIServer:
    """Serve the endpoints from a daemon thread; raises ``OSError`` when the port is taken."""
    server = make_server(host, port, health_app(health, registry), _Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="streamrec-http", daemon=True)
    thread.start()
    return server
