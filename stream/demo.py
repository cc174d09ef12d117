"""``streamrec demo``: the whole system on one machine, from nothing, in about a minute.

1. start the embedded broker on a free 127.0.0.1 port;
2. simulate a shop and train a model, unless the work directory already holds them;
3. start a worker as its own process (as in production) with ``/metrics`` on 127.0.0.1;
4. replay fresh events of the same shop (users the model never saw included) at a steady rate;
5. print recommendations as they arrive on the output topic, then a latency summary.
"""

from __future__ import annotations

import os
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

from stream.broker import EmbeddedBroker, free_port
from stream.settings import Settings
from stream.topics import ensure_topics

TRAIN_USERS, TRAIN_ITEMS, TRAIN_EVENTS, SEED = 2000, 1000, 100_000, 7
DEMO_EPOCHS = 15  # enough to beat popularity clearly on the simulated shop; keeps the first run near a minute


def _prepare(workdir: Path) -> tuple[Path, Path]:
    """Training data, artifacts and live events; reused when already present."""
    from model.datasets import load_events, write_events_jsonl
    from model.train import train_from_settings
    from stream.replay import read_catalog_jsonl
    from stream.simulate import simulate_shop, write_catalog_jsonl

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


def _print_recommendations(bootstrap: str, topic: str, stop: threading.Event, latencies: list[float]) -> None:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"demo-viewer-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        consumer_timeout_ms=500,
    )
    shown = 0
    try:
        while not stop.is_set():
            for message in consumer:
                rec = orjson.loads(message.value)
                latency_ms = (rec["generated_at"] - rec["trigger"]["ts"]) * 1000
                latencies.append(latency_ms)
                shown += 1
                if shown <= 20 or shown % 100 == 0:
                    top = ", ".join(f"{i['item_id']}({i['reason_code']})" for i in rec["items"][:3])
                    print(
                        f"#{shown:5d} user {rec['user_id']:>6} {rec['trigger']['event_type']:>5} "
                        f"{rec['trigger']['item_id']:>6} → {top} … [{latency_ms:.1f} ms]"
                    )
                if stop.is_set():
                    break
    finally:
        consumer.close()


def _wait_until_ready(metrics_url: str, worker: subprocess.Popen, timeout_s: float = 60.0) -> bool:
    """Wait for the worker to own partitions, so the replay measures processing, not the group join."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            with urllib.request.urlopen(metrics_url, timeout=2) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith("streamrec_assigned_partitions ") and float(line.split()[1]) > 0:
                        return True
        except OSError:
            pass  # not serving yet
        time.sleep(0.2)
    return False


def run_demo(workdir: Path, n_live_events: int, rate: float, metrics_port: int, keep_running: bool) -> None:
    from stream.replay import publish_catalog, replay

    artifacts, live_path = _prepare(workdir)
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        ensure_topics(Settings(bootstrap_servers=broker.bootstrap))
        published = publish_catalog(workdir / "items.jsonl", broker.bootstrap, Settings().items_topic)
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
        with open(workdir / "worker.log", "wb") as worker_log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "worker"], env=env, stdout=worker_log, stderr=subprocess.STDOUT
            )
        try:
            metrics_url = f"http://127.0.0.1:{env['STREAMREC_METRICS_PORT']}/metrics"
            print(f"broker on {broker.bootstrap}; worker pid {worker.pid}")
            print(f"metrics: {metrics_url} (worker log: {workdir}/worker.log)")
            if not _wait_until_ready(metrics_url, worker):
                print(f"the worker did not become ready; see {workdir}/worker.log")
                return
            stop = threading.Event()
            latencies: list[float] = []
            viewer = threading.Thread(
                target=_print_recommendations,
                args=(broker.bootstrap, Settings().recommendations_topic, stop, latencies),
                daemon=True,
            )
            viewer.start()
            sent = replay(live_path, broker.bootstrap, rate=rate, limit=n_live_events, progress=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(latencies) < sent * 0.5 and worker.poll() is None:
                time.sleep(0.2)
            time.sleep(2)
            if keep_running:
                print("replay done; broker and worker keep running (Ctrl-C to stop)")
                while worker.poll() is None:
                    time.sleep(1)
            stop.set()
            viewer.join(timeout=5)
            if latencies:
                p50, p99 = np.percentile(latencies, [50, 99])
                print(
                    f"\n{sent} events replayed at {rate:.0f}/s, {len(latencies)} recommendations received; "
                    f"event → recommendation p50 {p50:.1f} ms, p99 {p99:.1f} ms"
                )
            else:
                print(f"\nno recommendations arrived; see {workdir}/worker.log")
        except KeyboardInterrupt:
            pass
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
