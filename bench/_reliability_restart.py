"""Scenario *restart*: the broker goes away under a running worker and comes back.

* **Apache Kafka** (durable logs): events are sent at a steady rate before, during and after an outage (the bench's
  producer buffers them while the broker is down). The worker is expected to ride it out in place: measured are
  the events answered of those sent, the time from the broker's return to the first recommendation the broker
  acknowledged, how much the worker logs while the broker is down, and, in a second outage, how long the worker
  takes to exit after SIGTERM.
* **Embedded broker** (memory only: a restart loses every topic and offset): the worker cannot restore its users
  and must exit non-zero for its supervisor. Measured: seconds until it exits, its exit code and last log line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from _reliability_common import (
    Answers,
    Launcher,
    Model,
    PacedProducer,
    ScenarioFailed,
    Topics,
    Worker,
    by_label,
    event_message,
    produce,
    wait_until,
)

PARTITIONS = 4


def published(worker: Worker) -> float:
    """Recommendations the broker acknowledged to this worker so far."""
    return sum(by_label(worker.scrape(), "streamrec_recommendations_published_total", "kind").values())


def run_apache(
    kafka: Any, launcher: Launcher, model: Model, rate: float, before_s: float, outage_s: float, after_s: float
) -> dict[str, Any]:
    topics = Topics.fresh("restart-apache")
    topics.create(kafka.bootstrap, PARTITIONS)
    worker = launcher.start("restart-apache", kafka.bootstrap, topics, PARTITIONS)
    worker.wait_ready()
    # One event per user: every event must be answered, whatever the batching.
    total = int(rate * (before_s + outage_s + after_s + 5))
    now = time.time()
    messages = [event_message(f"rs-{n}", f"rs-u{n}", model.item_ids[n % 200], "view", now) for n in range(total)]
    producer = PacedProducer(kafka.bootstrap, topics.events, messages, rate, delivery_timeout_ms=300_000)
    answers = Answers(kafka.bootstrap, topics.recommendations)
    try:
        producer.start()
        time.sleep(before_s)
        outage = broker_outage(kafka, worker, producer, outage_s)
        producer.join(timeout=total / rate + 120)
        if producer.error is not None:
            raise ScenarioFailed(f"producing failed: {producer.error!r}")
        unanswered = answers.wait_for([f"rs-{n}" for n in range(producer.sent)], timeout_s=120)
        still_running = worker.alive()
        sigterm = sigterm_while_down(kafka, worker)
    finally:
        producer.halt.set()
        answers.close()
    during = range(outage["sent_when_down"], outage["sent_when_back"])
    return {
        "events_sent": producer.sent,
        "events_answered": producer.sent - len(unanswered),
        "sent_during_outage": len(during),
        "answered_of_those_sent_during_outage": sum(1 for n in during if f"rs-{n}" not in unanswered),
        "worker_survived_outage": still_running,
        **outage,
        "sigterm_while_down": sigterm,
    }


def broker_outage(kafka: Any, worker: Worker, producer: PacedProducer, outage_s: float) -> dict[str, Any]:
    """Stop the broker for ``outage_s``, start it again; what the worker did meanwhile and after."""
    lines_before = len(worker.log_lines())
    acknowledged_before = published(worker)
    down_at = time.monotonic()
    sent_when_down = producer.sent
    kafka.stop()
    stopped_s = time.monotonic() - down_at
    not_ready = wait_until(lambda: worker.readiness() != 200, timeout_s=outage_s)
    not_ready_after_s = time.monotonic() - down_at if not_ready else None
    time.sleep(max(0.0, down_at + outage_s - time.monotonic()))
    restarting_at = time.monotonic()
    kafka.start()  # returns once the broker listens again: the moment clients can reach it
    back_at = time.monotonic()
    lines_during = len(worker.log_lines()) - lines_before
    sent_when_back = producer.sent
    first = wait_until(lambda: published(worker) > acknowledged_before, timeout_s=120, interval_s=0.05)
    first_s = time.monotonic() - back_at if first else None
    ready = wait_until(lambda: worker.readiness() == 200, timeout_s=60)
    return {
        "outage_s": round(back_at - down_at, 1),  # from the stop command until the broker listens again
        "broker_stop_s": round(stopped_s, 1),
        "broker_start_s": round(back_at - restarting_at, 1),  # JVM start until it listens
        "sent_when_down": sent_when_down,
        "sent_when_back": sent_when_back,
        "not_ready_after_s": round(not_ready_after_s, 1) if not_ready_after_s is not None else None,
        "log_lines_while_down": lines_during,
        "log_lines_per_s_while_down": round(lines_during / (back_at - down_at), 2),
        "first_recommendation_after_broker_back_s": round(first_s, 2) if first_s is not None else None,
        "ready_again_after_broker_back_s": round(time.monotonic() - back_at, 1) if ready else None,
    }


def sigterm_while_down(kafka: Any, worker: Worker, down_s: float = 3.0) -> dict[str, Any]:
    """Stop the broker again, then ask the worker to stop: how long it takes and how it ends."""
    kafka.stop()
    time.sleep(down_s)
    code, seconds = worker.terminate(timeout_s=60)
    return {"broker_down_for_s": down_s, "exit_code": code, "seconds_to_exit": round(seconds, 2)}


def run_embedded(broker: Any, launcher: Launcher, model: Model) -> dict[str, Any]:
    """On a broker that comes back empty the worker must give up, loudly and soon."""
    topics = Topics.fresh("restart-embedded")
    topics.create(broker.bootstrap, PARTITIONS)
    worker = launcher.start("restart-embedded", broker.bootstrap, topics, PARTITIONS)
    worker.wait_ready()
    answers = Answers(broker.bootstrap, topics.recommendations)
    try:
        now = time.time()
        produce(broker.bootstrap, topics.events, [event_message("rs-e-1", "rs-e-u1", model.item_ids[1], "buy", now)])
        answered = not answers.wait_for(["rs-e-1"], timeout_s=30)
    finally:
        answers.close()
    down_at = time.monotonic()
    broker.stop()
    not_ready = wait_until(lambda: worker.readiness() != 200, timeout_s=20)
    not_ready_s = time.monotonic() - down_at if not_ready else None
    broker.start()
    back_at = time.monotonic()
    exited = wait_until(lambda: not worker.alive(), timeout_s=120, interval_s=0.05)
    exit_s = time.monotonic() - back_at if exited else None
    if not exited:
        worker.terminate()
    return {
        "answered_before": answered,
        "not_ready_after_broker_stop_s": round(not_ready_s, 1) if not_ready_s is not None else None,
        "exited": exited,
        "seconds_from_broker_back_to_exit": round(exit_s, 1) if exit_s is not None else None,
        "exit_code": worker.process.returncode,
        "last_log_line": worker.last_line(),
        "log": str(Path(worker.log_path)),
    }
