"""``streamrec demo``: the whole system on one machine, from nothing, in about a minute.

1. start the embedded broker on a free 127.0.0.1 port;
2. simulate a shop and train a model, unless the work directory already holds them;
3. start a worker as its own process (as in production) with ``/metrics`` on 127.0.0.1;
4. replay fresh events of the same shop (users the model never saw included) at a steady rate;
5. print recommendations as they arrive on the output topic, as a person would read them (titles, reasons, what
   changed since the user's previous list), then a latency summary.

Whatever it started that fails (the broker, the worker: a port taken, a crash, not ready in time, no
recommendations) ends the demo with a non-zero exit and the cause, taken from the worker's log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import orjson
from kafka import KafkaConsumer

from streamrec.stream.app.broker import EmbeddedBroker, die_with_parent
from streamrec.stream.errors import StreamrecError, one_line
from streamrec.stream.runtime.network import free_port
from streamrec.stream.runtime.security import kafka_python_options
from streamrec.stream.runtime.topics import ensure_topics
from streamrec.stream.settings import Settings

TRAIN_USERS, TRAIN_ITEMS, TRAIN_EVENTS, SEED = 2000, 1000, 100_000, 7
DEMO_EPOCHS = 15  # enough to beat popularity clearly on the simulated shop; keeps the first run near a minute
WORKER_READY_TIMEOUT_S = 60.0  # importing torch, loading the model, reading the catalog, joining the group
RECOMMENDATIONS_TIMEOUT_S = 20.0  # the longest wait for answers after the replay (it ends 2 s after the last one)
ERROR_PREFIX = "streamrec: error: "  # how the worker's CLI reports a failure, on one line
SHOWN_ITEMS = 5  # items printed per list
FULL_LISTS = 12  # lists printed in full at the start; then every EVERY_NTH-th
EVERY_NTH = 100
VERBS = {"view": "viewed", "click": "clicked", "cart": "added to cart", "buy": "bought"}


def read_titles(catalog: Path) -> dict[str, str]:
    """Item id → display title from a catalog JSONL (items without a title are left out)."""
    titles: dict[str, str] = {}
    if catalog.exists():
        for line in catalog.read_bytes().splitlines():
            if line.strip():
                record = orjson.loads(line)
                if record.get("title"):
                    titles[str(record["item_id"])] = str(record["title"])
    return titles


def format_list(
    number: int, message: dict, titles: dict[str, str], previous: list[str] | None, latency_ms: float
) -> str:
    """One recommendation as a person reads it: who did what, the first items with their reasons, what changed
    since the user's previous list."""
    trigger = message["trigger"]
    verb = VERBS.get(trigger["event_type"], trigger["event_type"])
    touched = titles.get(trigger["item_id"], trigger["item_id"])
    variant = f", variant {message['variant']}" if message.get("variant", "default") != "default" else ""
    lines = [f"#{number} user {message['user_id']} {verb} “{touched}” → {latency_ms:.1f} ms{variant}"]
    items = message["items"]
    earlier = set(previous or ())
    for rank, item in enumerate(items[:SHOWN_ITEMS], start=1):
        title = titles.get(item["item_id"], item["item_id"])
        mark = "+" if previous is not None and item["item_id"] not in earlier else " "
        lines.append(f"  {mark}{rank}. {title} — {item['reason']}{' (exploring)' if item['explore'] else ''}")
    if previous is None:
        lines.append(f"  first list for this user ({len(items)} items)")
    else:
        now = [item["item_id"] for item in items]
        added = sum(item not in earlier for item in now)
        dropped = sum(item not in set(now) for item in previous)
        lines.append(f"  since the last list: {added} new (+), {dropped} dropped, {len(now) - added} kept")
    return "\n".join(lines)


def _prepare(workdir: Path) -> tuple[Path, Path]:
    """Training data, artifacts and live events; reused when already present."""
    from streamrec.stream.app.event_files import load_events, write_events_jsonl
    from streamrec.stream.app.replay import read_catalog_jsonl
    from streamrec.stream.app.simulate import simulate_shop, write_catalog_jsonl
    from streamrec.stream.app.training import train_from_settings

    workdir.mkdir(parents=True, exist_ok=True)
    artifacts = workdir / "artifacts"
    train_path, live_path = workdir / "train.jsonl", workdir / "live.jsonl"
    if not (train_path.exists() and live_path.exists()):
        print(f"simulating a shop: {TRAIN_USERS} users, {TRAIN_ITEMS} items, {TRAIN_EVENTS} events ...")
        events, catalog = simulate_shop(TRAIN_USERS, TRAIN_ITEMS, int(TRAIN_EVENTS * 1.2), SEED)
        cut = TRAIN_EVENTS  # the model trains on the past; the demo replays the future
        write_events_jsonl(events[:cut], train_path)
        write_events_jsonl(events[cut:], live_path)
        write_catalog_jsonl(catalog, workdir / "items.jsonl")
    if not (artifacts / "LATEST").exists():
        print("training the model (one-off; later runs reuse it) ...")
        catalog = read_catalog_jsonl(workdir / "items.jsonl")
        train_from_settings(load_events(train_path), artifacts, Settings(), epochs=DEMO_EPOCHS, catalog=catalog)
    return artifacts, live_path


def _print_recommendations(
    bootstrap: str,
    topic: str,
    stop: threading.Event,
    latencies: list[float],
    failures: list[BaseException],
    titles: dict[str, str],
) -> None:
    """Print recommendations as they arrive; a failure is kept in ``failures`` for the main thread to report."""
    try:
        _show_recommendations(bootstrap, topic, stop, latencies, titles)
    except Exception as exc:
        failures.append(exc)


def _show_recommendations(
    bootstrap: str, topic: str, stop: threading.Event, latencies: list[float], titles: dict[str, str]
) -> None:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"demo-viewer-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        consumer_timeout_ms=500,
        **kafka_python_options(Settings()),
    )
    shown = 0
    previous: dict[str, list[str]] = {}  # each user's last list, to say what changed
    try:
        while not stop.is_set():
            for message in consumer:
                if message.value is None:
                    continue
                rec = orjson.loads(message.value)
                latency_ms = (rec["generated_at"] - rec["trigger"]["ts"]) * 1000
                latencies.append(latency_ms)
                shown += 1
                if shown <= FULL_LISTS or shown % EVERY_NTH == 0:
                    print(format_list(shown, rec, titles, previous.get(rec["user_id"]), latency_ms))
                previous[rec["user_id"]] = [item["item_id"] for item in rec["items"]]
                if stop.is_set():
                    break
    finally:
        consumer.close()


def _worker_command(debug: bool) -> list[str]:
    """The worker's command line. ``-P`` keeps the current folder off ``sys.path``: a ``stream.py``, ``model.py`` or
    ``index.py`` in the folder the demo runs from would otherwise shadow streamrec's packages."""
    return [sys.executable, "-P", "-m", "streamrec.stream.app.cli", *(["--debug"] if debug else []), "worker"]


def _worker_log_cause(log_path: Path, tail_lines: int = 12) -> tuple[str, list[str]]:
    """What the worker's log says went wrong: its one-line error when it printed one (then no tail), else its
    last line and the last ``tail_lines`` lines to show (a traceback, a log line of a stuck worker)."""
    try:
        lines = [line.rstrip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "its log cannot be read", []
    for line in reversed(lines[-50:]):
        if line.startswith(ERROR_PREFIX):
            return line.removeprefix(ERROR_PREFIX), []
    if not lines:
        return "its log is empty", []
    return one_line(lines[-1]), lines[-tail_lines:]


def _exit_status(worker: subprocess.Popen) -> str:
    code = worker.returncode
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _worker_failure(worker: subprocess.Popen, log_path: Path, what: str) -> StreamrecError:
    """The demo's error for a worker that failed; the log's last lines go to stderr when they are the only clue."""
    cause, tail = _worker_log_cause(log_path)
    if tail:
        print(f"last lines of {log_path}:", *(f"  {line}" for line in tail), sep="\n", file=sys.stderr)
    state = _exit_status(worker) if worker.poll() is not None else "is still running"
    return StreamrecError(f"the demo's worker {state} {what}: {cause}; its full log is {log_path}")


def _check_running(broker: EmbeddedBroker, worker: subprocess.Popen, log_path: Path, what: str) -> None:
    if worker.poll() is not None:
        raise _worker_failure(worker, log_path, what)
    if broker.process is not None and broker.process.poll() is not None:
        raise StreamrecError(
            f"the demo's broker exited with code {broker.process.returncode} {what}; its log is {broker.log_path}"
        )


def _wait_until_ready(
    metrics_url: str, broker: EmbeddedBroker, worker: subprocess.Popen, log_path: Path, timeout_s: float
) -> None:
    """Wait for the worker to own partitions, so the replay measures processing, not the group join."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_running(broker, worker, log_path, "before it was ready")
        try:
            with urllib.request.urlopen(metrics_url, timeout=2) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith("streamrec_assigned_partitions ") and float(line.split()[1]) > 0:
                        return
        except OSError:
            pass  # not serving yet
        time.sleep(0.2)
    raise _worker_failure(worker, log_path, f"was not ready within {timeout_s:.0f} s")


def run_demo(
    workdir: Path, n_live_events: int, rate: float, metrics_port: int, keep_running: bool, debug: bool = False
) -> None:
    """Run the demo; raises :class:`StreamrecError` with the cause when the broker or the worker fails, or when no
    recommendation arrives. Ctrl-C ends ``keep_running`` normally; elsewhere it propagates (exit 130)."""
    from streamrec.stream.app.replay import publish_catalog, replay

    artifacts, live_path = _prepare(workdir)
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        ensure_topics(Settings(bootstrap_servers=broker.bootstrap))
        published = publish_catalog(
            workdir / "items.jsonl",
            broker.bootstrap,
            Settings().items_topic,
            client_options=kafka_python_options(Settings()),
        )
        print(f"published the catalog: {published} items")
        env = {
            **os.environ,
            "STREAMREC_BOOTSTRAP_SERVERS": broker.bootstrap,
            "STREAMREC_ARTIFACTS_DIR": str(artifacts),
            "STREAMREC_METRICS_PORT": str(metrics_port or free_port()),
            # The embedded broker holds a group join for half the session timeout: keep it short here.
            "STREAMREC_SESSION_TIMEOUT_S": "2",
            "STREAMREC_HEARTBEAT_INTERVAL_S": "0.5",
            "STREAMREC_CONSUMER_GROUP": "streamrec-demo",
        }
        log_path = workdir / "worker.log"
        with open(log_path, "wb") as worker_log:
            worker = subprocess.Popen(
                _worker_command(debug),
                env=env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                # SIGTERM, the worker's graceful stop, if the demo itself is killed: no worker left behind.
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        try:
            metrics_url = f"http://127.0.0.1:{env['STREAMREC_METRICS_PORT']}/metrics"
            print(f"broker on {broker.bootstrap}; worker pid {worker.pid}")
            print(f"metrics: {metrics_url} (worker log: {log_path})")
            _wait_until_ready(metrics_url, broker, worker, log_path, WORKER_READY_TIMEOUT_S)
            stop = threading.Event()
            latencies: list[float] = []
            viewer_failures: list[BaseException] = []
            viewer = threading.Thread(
                target=_print_recommendations,
                args=(
                    broker.bootstrap,
                    Settings().recommendations_topic,
                    stop,
                    latencies,
                    viewer_failures,
                    read_titles(workdir / "items.jsonl"),
                ),
                daemon=True,
            )
            viewer.start()
            sent = replay(
                live_path,
                broker.bootstrap,
                rate=rate,
                limit=n_live_events,
                progress=False,
                client_options=kafka_python_options(Settings()),
            )
            # Done when the answers stop coming: a user's later event in a batch supersedes the earlier ones, so
            # often only about half of the events get their own recommendation.
            deadline = time.monotonic() + RECOMMENDATIONS_TIMEOUT_S
            received, last_arrival = 0, time.monotonic()
            while time.monotonic() < deadline and not viewer_failures:
                _check_running(broker, worker, log_path, "during the replay")
                if len(latencies) > received:
                    received, last_arrival = len(latencies), time.monotonic()
                elif received and time.monotonic() - last_arrival > 2:
                    break
                time.sleep(0.2)
            _check_running(broker, worker, log_path, "during the replay")
            if keep_running:
                print("replay done; broker and worker keep running (Ctrl-C to stop)")
                try:
                    while True:
                        _check_running(broker, worker, log_path, "while the demo kept running")
                        time.sleep(1)
                except KeyboardInterrupt:
                    print("stopping the worker and the broker")  # the documented way to end: not a failure
            stop.set()
            viewer.join(timeout=5)
            if viewer_failures:
                raise viewer_failures[0]
            if not latencies:
                raise _worker_failure(
                    worker, log_path, f"sent no recommendation within {RECOMMENDATIONS_TIMEOUT_S:.0f} s of the replay"
                )
            p50, p99 = np.percentile(latencies, [50, 99])
            print(
                f"\n{sent} events replayed at {rate:.0f}/s, {len(latencies)} recommendations received; "
                f"event → recommendation p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            )
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
