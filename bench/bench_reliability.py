#!/usr/bin/env python
"""How streamrec survives production: crashes, malformed input, poison pills, paused workers, broker restarts.

Usage::

    python bench/bench_reliability.py                          # every scenario, about 4.5 minutes on 2 cores
    python bench/bench_reliability.py --quick                  # smaller, about 3 minutes
    python bench/bench_reliability.py --scenarios crash,fuzz   # some of: crash, fuzz, pill, pause, restart

Every figure printed is measured in the run; the JSON (``bench/results/reliability.json``) holds them all. Real
worker processes (``streamrec worker``) run against the embedded broker (Tansu, memory only) and, where
Java and the jars of ``bash .ci/fetch-kafka.sh`` are present, a one-node Apache Kafka with durable logs. See
``bench/README.md``. Everything listens on 127.0.0.1; every wait is bounded, every scenario part runs under a time
limit, and every process started is stopped at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _reliability_crash as crash
import _reliability_fuzz as fuzz
import _reliability_pause as pause
import _reliability_pill as pill
import _reliability_restart as restart
from _reliability_common import (
    REPO,
    RESULTS,
    SESSION_TIMEOUT_S,
    Launcher,
    Model,
    Table,
    fmt,
    prepare_model,
)

SCENARIOS = ("crash", "fuzz", "pill", "pause", "restart")
EMBEDDED, APACHE = "embedded", "apache"
COLUMN = {EMBEDDED: "embedded (Tansu)", APACHE: "Apache Kafka 4.4"}


@dataclass(frozen=True)
class Params:
    """Sizes of one run; ``--quick`` uses smaller ones (and skips the crash run on Apache Kafka)."""

    crash_users: int
    crash_events: int
    crash_kills: int
    crash_stream_s: float
    crash_on_apache: bool
    fuzz_messages: int
    fuzz_malformed_share: float
    pause_users: int
    pause_cycles: int
    pause_before_s: float
    pause_after_s: float
    restart_rate: float
    restart_before_s: float
    restart_outage_s: float
    restart_after_s: float


FULL = Params(300, 3_000, 3, 30.0, True, 24_000, 0.6, 200, 3, 4.0, 6.0, 40.0, 3.0, 10.0, 5.0)
QUICK = Params(150, 1_200, 3, 22.0, False, 6_000, 0.6, 200, 1, 3.0, 4.0, 40.0, 2.0, 6.0, 3.0)


class PartTimeout(Exception):
    """A scenario part ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: int, label: str) -> Iterator[None]:
    """Raise :class:`PartTimeout` in the main thread after ``seconds``: the backstop behind every bounded wait."""

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise PartTimeout(f"{label} ran past its {seconds} s limit")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Brokers:
    """The brokers of a run, started on first use from the main thread (they die with it) and all stopped by
    :meth:`stop_all`. Scenarios that stop a broker get one of their own."""

    def __init__(self, log_dir: Path, apache_unavailable: str | None) -> None:
        self.log_dir = log_dir
        self.apache_unavailable = apache_unavailable
        self._shared: dict[str, Any] = {}
        self._all: list[Any] = []

    def embedded(self, name: str = "embedded", own: bool = False) -> Any:
        from streamrec.stream.app.broker import EmbeddedBroker

        if own or name not in self._shared:
            broker = EmbeddedBroker(log_path=self.log_dir / f"broker-{name}.log")
            self._all.append(broker)
            broker.start()
            if own:
                return broker
            self._shared[name] = broker
        return self._shared[name]

    def apache(self, name: str = "apache", own: bool = False) -> Any:
        from streamrec.stream.app.apache_kafka import ApacheKafka

        if self.apache_unavailable:
            raise RuntimeError(self.apache_unavailable)
        if own or name not in self._shared:
            broker = ApacheKafka(self.log_dir / f"broker-{name}")
            self._all.append(broker)
            broker.start()
            if own:
                return broker
            self._shared[name] = broker
        return self._shared[name]

    def stop_all(self) -> None:
        for broker in reversed(self._all):
            with contextlib.suppress(Exception):
                broker.stop()
            data = getattr(broker, "data_dir", None)
            if data is not None:  # Apache Kafka's logs: only its broker.log is worth keeping
                shutil.rmtree(Path(data) / "data", ignore_errors=True)


@dataclass
class Run:
    params: Params
    quick: bool
    model: Model
    launcher: Launcher
    brokers: Brokers
    part_timeout_s: int


def part(run: Run, label: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One scenario on one broker, under the time limit; an error is reported, and the next part still runs."""
    started = time.monotonic()
    print(f"  {label} ...", flush=True)
    try:
        with time_limit(run.part_timeout_s, label):
            result = body()
    except (Exception, PartTimeout) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  {label} FAILED: {result['error']}")
        (run.launcher.log_dir / f"{label.replace('/', '-')}-error.txt").write_text(traceback.format_exc())
    finally:
        run.launcher.stop_all()  # whatever happened, no worker of this part outlives it
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def apache_part(run: Run, label: str, body: Callable[[Any], dict[str, Any]], own: bool = False) -> dict[str, Any]:
    if run.brokers.apache_unavailable:
        return {"skipped": run.brokers.apache_unavailable}
    return part(
        run,
        label,
        lambda: body(run.brokers.apache(name=label.replace("/", "-"), own=True) if own else run.brokers.apache()),
    )


# --- scenarios -----------------------------------------------------------------------------------------------


def scenario_crash(run: Run) -> dict[str, Any]:
    p = run.params
    config = crash.CrashConfig(p.crash_users, p.crash_events, p.crash_kills, p.crash_stream_s)
    out = {
        EMBEDDED: part(
            run,
            "crash/embedded",
            lambda: crash.run(EMBEDDED, run.brokers.embedded().bootstrap, run.launcher, run.model, config),
        )
    }
    if p.crash_on_apache:
        out[APACHE] = apache_part(
            run, "crash/apache", lambda kafka: crash.run(APACHE, kafka.bootstrap, run.launcher, run.model, config)
        )
    return out


def scenario_fuzz(run: Run) -> dict[str, Any]:
    p = run.params
    return {
        EMBEDDED: part(
            run,
            "fuzz/embedded",
            lambda: fuzz.run(
                EMBEDDED,
                run.brokers.embedded().bootstrap,
                run.launcher,
                run.model,
                p.fuzz_messages,
                p.fuzz_malformed_share,
            ),
        )
    }


def scenario_pill(run: Run) -> dict[str, Any]:
    return {
        EMBEDDED: part(
            run,
            "pill/embedded",
            lambda: pill.run(EMBEDDED, run.brokers.embedded().bootstrap, run.launcher, run.model, compressed=False),
        ),
        APACHE: apache_part(
            run,
            "pill/apache",
            lambda kafka: pill.run(APACHE, kafka.bootstrap, run.launcher, run.model, compressed=True),
        ),
    }


def scenario_pause(run: Run) -> dict[str, Any]:
    p = run.params
    return {
        APACHE: apache_part(
            run,
            "pause/apache",
            lambda kafka: pause.run(
                kafka.bootstrap,
                run.launcher,
                run.model,
                p.pause_users,
                p.pause_cycles,
                p.pause_before_s,
                p.pause_after_s,
            ),
        )
    }


def scenario_restart(run: Run) -> dict[str, Any]:
    p = run.params
    return {
        APACHE: apache_part(
            run,
            "restart/apache",
            lambda kafka: restart.run_apache(
                kafka,
                run.launcher,
                run.model,
                p.restart_rate,
                p.restart_before_s,
                p.restart_outage_s,
                p.restart_after_s,
            ),
            own=True,  # stopped twice: a broker of its own
        ),
        EMBEDDED: part(
            run,
            "restart/embedded",
            lambda: restart.run_embedded(run.brokers.embedded("restart", own=True), run.launcher, run.model),
        ),
    }


RUNNERS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "crash": scenario_crash,
    "fuzz": scenario_fuzz,
    "pill": scenario_pill,
    "pause": scenario_pause,
    "restart": scenario_restart,
}


# --- report --------------------------------------------------------------------------------------------------


def measured(parts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The parts that produced figures (not skipped, not failed)."""
    return {name: r for name, r in parts.items() if "error" not in r and "skipped" not in r}


def table_crash(parts: dict[str, Any]) -> list[Table]:
    ok = measured(parts)
    if not ok:
        return []
    first = next(iter(ok.values()))
    table = Table(
        f"crash: {first['users']} users, {first['events']:,} shop events; the worker is SIGKILLed mid-stream and "
        f"restarted at once, then compared with a clean run (fields: {', '.join(crash.COMPARED_FIELDS)})",
        [COLUMN[b] for b in ok],
    )
    rows: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
        ("kills (at event n of the stream)", lambda r: kills_text(r["killed"]["kills"]), ""),
        ("events written to state but not committed at each kill", exposed_text, "> 0"),
        ("kill → replacement ready, s (mean / max)", lambda r: ready_text(r["killed"]["kills"]), ""),
        ("users restored by each replacement", restored_text, ""),
        (
            "events answered twice (redelivered after a kill)",
            lambda r: r["killed"]["events_answered_more_than_once"],
            "",
        ),
        ("users without an answer to their last event", unanswered_text, "0"),
        ("users whose state differs from the clean run", lambda r: r["comparison"]["users_differing"], "0"),
        ("  largest |Δ| in an interest vector", lambda r: f"{r['comparison']['max_abs_vector_difference']:g}", "0"),
        ("users whose n_events ≠ events sent", n_events_text, "0"),
        ("both runs read the same input order", lambda r: r["same_input_order"], "yes"),
        ("seconds (both runs)", lambda r: r["seconds"], ""),
    ]
    for label, get, target in rows:
        table.add(label, [get(r) for r in ok.values()], target)
    return [table]


def restored_text(r: dict[str, Any]) -> str:
    killed = r["killed"]
    counts = [k["users_restored_by_killed_worker"] for k in killed["kills"][1:]]
    return " / ".join(str(c) for c in [*counts, killed["users_restored_by_last_worker"]])


def exposed_text(r: dict[str, Any]) -> str:
    return " / ".join(str(k["exposed_events"]) for k in r["killed"]["kills"])


def unanswered_text(r: dict[str, Any]) -> str:
    return f"{r['killed']['unanswered_users']} of {r['users']} (clean run: {r['clean']['unanswered_users']})"


def n_events_text(r: dict[str, Any]) -> str:
    return f"{r['killed']['n_events_wrong']} (clean run: {r['clean']['n_events_wrong']})"


def kills_text(kills: list[dict[str, Any]]) -> str:
    return ", ".join(f"{k['at_event']:,}{'' if k['stream_still_running'] else ' (stream over)'}" for k in kills)


def ready_text(kills: list[dict[str, Any]]) -> str:
    seconds = [k["kill_to_ready_s"] for k in kills]
    return f"{sum(seconds) / len(seconds):.1f} / {max(seconds):.1f}" if seconds else "—"


def table_fuzz(parts: dict[str, Any]) -> list[Table]:
    ok = measured(parts)
    if EMBEDDED not in ok:
        return []
    r = ok[EMBEDDED]
    m, c = r["metrics"], r["check"]
    dead = sum(m["events_invalid"].values())
    table = Table(
        f"fuzz: {r['sent']:,} messages, {r['sent_malformed']:,} malformed in {len(fuzz.MALFORMED)} ways, one worker",
        [COLUMN[EMBEDDED]],
    )
    balance = r["events_topic_records"] == m["events_consumed"] + r["dead_letter_records"]
    table.add("messages in the events topic", [r["events_topic_records"]], f"{r['sent']:,}")
    table.add("accepted (streamrec_events_consumed_total)", [int(m["events_consumed"])], f"{r['sent_valid']:,}")
    table.add("records in the dead-letter topic", [r["dead_letter_records"]], f"{r['sent_malformed']:,}")
    table.add("streamrec_events_invalid_total, all reasons", [int(dead)], f"{r['sent_malformed']:,}")
    table.add("streamrec_messages_consumed_total", [int(m["messages_consumed"])], f"{r['sent']:,}")
    table.add("in = accepted + dead-lettered", [balance], "yes")
    table.add("malformed but not dead-lettered", [c["malformed_not_dead_lettered"]], "0")
    table.add("dead-lettered with another reason than expected", [c["dead_lettered_with_wrong_reason"]], "0")
    table.add("valid but dead-lettered", [c["valid_dead_lettered"]], "0")
    table.add(
        "dead-lettered twice / without a source header",
        [f"{c['dead_lettered_twice']} / {c['dead_letters_without_source']}"],
        "0 / 0",
    )
    table.add(
        "valid users without an answer to their last event",
        [f"{r['valid_users_unanswered']} of {r['valid_users']}"],
        "0",
    )
    table.add(
        "seconds to read everything (messages/s)",
        [f"{r['seconds_to_consume_all']} ({r['sent'] / max(r['seconds_to_consume_all'], 1e-9):,.0f})"],
        "",
    )
    table.add(
        "worker alive / readyz / exit code on SIGTERM",
        [f"{fmt(r['worker_alive'])} / {r['readyz']} / {r['exit_code']}"],
        "yes / 200 / 0",
    )
    reasons = Table("fuzz, by reason", ["expected", "dead-letter headers", "metric"])
    for reason, expected in r["check"]["expected_by_reason"].items():
        reasons.add(
            reason, [expected, c["dead_letters_by_reason"].get(reason, 0), int(m["events_invalid"].get(reason, 0))], ""
        )
    for reason in sorted(set(c["dead_letters_by_reason"]) - set(c["expected_by_reason"])):
        reasons.add(
            f"{reason} (unexpected)",
            [0, c["dead_letters_by_reason"][reason], int(m["events_invalid"].get(reason, 0))],
            "",
        )
    return [table, reasons]


def table_pill(parts: dict[str, Any]) -> list[Table]:
    ok = measured(parts)
    if not ok:
        return []
    table = Table(
        "pill: one oversized valid-looking event, then 40 users' events, one partition", [COLUMN[b] for b in ok]
    )

    def dead(r: dict[str, Any], header: str) -> str:
        return " / ".join(d["headers"].get(header, "—") for d in r["dead_letters"]) or "—"

    rows: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
        ("pill", lambda r: f"{r['pill_bytes']:,} B{', gzip' if r['compressed'] else ', raw'}", ""),
        ("dead-letter topic max.message.bytes", lambda r: r["dead_letter_topic_limit"] or "broker default", ""),
        (
            "later users answered",
            lambda r: f"{r['later_users_answered']} of {r['later_users']}",
            f"{pill.LATER_USERS} of {pill.LATER_USERS}",
        ),
        ("seconds from produced to the last one answered", lambda r: r["seconds_to_last_answer"], ""),
        ("dead letters", lambda r: len(r["dead_letters"]), "1"),
        ("  value bytes", lambda r: " / ".join(f"{d['value_bytes']:,}" for d in r["dead_letters"]), ""),
        ("  streamrec.reason", lambda r: dead(r, "streamrec.reason"), ""),
        ("  streamrec.truncated", lambda r: dead(r, "streamrec.truncated"), ""),
        ("  streamrec.original_size", lambda r: dead(r, "streamrec.original_size"), ""),
        ("  streamrec.source (partition/offset)", lambda r: dead(r, "streamrec.source").split("/", 1)[-1], ""),
        ("streamrec_delivery_failures_total", lambda r: int(r["delivery_failures_total"]), ""),
        ("streamrec_outputs_undeliverable_total", lambda r: int(r["outputs_undeliverable_total"]), ""),
        ("worker readyz / exit code on SIGTERM", lambda r: f"{r['readyz']} / {r['exit_code']}", "200 / 0"),
    ]
    for label, get, target in rows:
        table.add(label, [get(r) for r in ok.values()], target)
    return [table]


def table_pause(parts: dict[str, Any]) -> list[Table]:
    ok = measured(parts)
    if APACHE not in ok:
        return []
    r = ok[APACHE]
    table = Table(
        f"pause: two workers, {r['users']} users, one worker SIGSTOPped {r['pauses']} time(s) for {r['pause_s']:g} s "
        f"(4 × the {r['session_timeout_s']:g} s session timeout), then SIGCONT",
        [COLUMN[APACHE]],
    )
    cl = r["changelog"]
    table.add("events sent", [r["events_sent"]], "")
    held = " | ".join(",".join(map(str, c["held_partitions"])) or "—" for c in r["cycles"])
    table.add("partitions the paused worker held at each freeze", [held], "")
    served = " / ".join(fmt(c["other_served_all_after_s"]) for c in r["cycles"])
    table.add("seconds until the other worker served all partitions", [served], "")
    table.add(
        "users whose restored state lacks events", [f"{r['users_lacking_events']} ({r['events_lacking']} events)"], "0"
    )
    table.add("users whose restored state counts an event twice", [r["users_counted_twice"]], "0")
    table.add(
        "changelog records that went backwards (input offsets behind, at most)",
        [f"{cl['went_backwards']} of {cl['records']:,} ({cl['max_input_offsets_behind']})"],
        "0",
    )
    table.add("  of them held back by the paused worker", [cl["went_backwards_attributed_to_paused_worker"]], "")
    table.add(
        "users whose last changelog record is stale (compaction keeps it)",
        [cl["users_whose_last_record_is_stale"]],
        "0",
    )
    table.add(
        "batches the paused worker dropped (metric / log)",
        [f"{int(r['batches_fenced_metric'])} / {r['fenced_log_lines']}"],
        "",
    )
    table.add(
        "batches it published after losing its partitions (commit refused)",
        [r["published_then_commit_refused_log_lines"]],
        "0",
    )
    table.add("users without an answer to their last event", [r["users_unanswered"]], "0")
    table.add(
        "exit codes on SIGTERM (paused, other)", [f"{r['exit_codes']['paused']}, {r['exit_codes']['other']}"], "0, 0"
    )
    return [table]


def table_restart(parts: dict[str, Any]) -> list[Table | str]:
    ok = measured(parts)
    tables: list[Table | str] = []
    if APACHE in ok:
        r = ok[APACHE]
        t = Table(
            f"restart, Apache Kafka (durable logs): a {r['outage_s']:g} s outage under a running worker, events at "
            "a steady rate before, during and after",
            [COLUMN[APACHE]],
        )
        t.add("events answered of those sent", [f"{r['events_answered']:,} of {r['events_sent']:,}"], "all")
        t.add(
            "  of those sent while the broker was down",
            [f"{r['answered_of_those_sent_during_outage']} of {r['sent_during_outage']}"],
            "all",
        )
        t.add("worker rode out the outage without a restart", [r["worker_survived_outage"]], "yes")
        t.add("readyz 503 after the broker stopped, s", [r["not_ready_after_s"]], "")
        t.add(
            "log lines per second while the broker was down",
            [f"{r['log_lines_per_s_while_down']} ({r['log_lines_while_down']} in {r['outage_s']:g} s)"],
            "",
        )
        t.add("broker back → first recommendation acknowledged, s", [r["first_recommendation_after_broker_back_s"]], "")
        t.add("broker back → readyz 200 again, s", [r["ready_again_after_broker_back_s"]], "")
        s = r["sigterm_while_down"]
        t.add(
            f"SIGTERM with the broker down ({s['broker_down_for_s']:g} s): exit after, s",
            [s["seconds_to_exit"]],
            "< 15 (shutdown_timeout_s)",
        )
        t.add("  exit code", [s["exit_code"]], "0")
        tables.append(t)
    if EMBEDDED in ok:
        r = ok[EMBEDDED]
        t = Table("restart, embedded broker (memory only: it comes back empty)", [COLUMN[EMBEDDED]])
        t.add("readyz 503 after the broker stopped, s", [r["not_ready_after_broker_stop_s"]], "")
        t.add("broker back → worker exited, s", [r["seconds_from_broker_back_to_exit"]], "")
        t.add("exit code", [r["exit_code"]], "non-zero (3)")
        t.add("last log line (in full below)", [shorten(r["last_log_line"], 60)], "")
        tables += [t, f"last log line of the embedded-broker worker:\n  {r['last_log_line']}"]
    return tables


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


TABLES: dict[str, Callable[[dict[str, Any]], list[Table | str]]] = {
    "crash": table_crash,
    "fuzz": table_fuzz,
    "pill": table_pill,
    "pause": table_pause,
    "restart": table_restart,
}


def print_scenario(name: str, parts: dict[str, Any], quick: bool) -> None:
    print()
    try:
        for table in TABLES[name](parts):
            print(table.render() if isinstance(table, Table) else table)
            print()
    except (KeyError, TypeError, ValueError) as exc:  # a figure missing from a part: its JSON still tells
        print(f"could not print the {name} table ({type(exc).__name__}: {exc}); see the JSON")
    for broker, r in parts.items():
        if "error" in r:
            print(f"{name} on {broker}: FAILED ({r['error']})")
        elif "skipped" in r:
            print(f"{name} on {broker}: skipped ({r['skipped']})")
    took = ", ".join(f"{b} {r['seconds']:g} s" for b, r in parts.items() if "seconds" in r)
    print(f"took: {took}")
    print(f"reproduce: python bench/bench_reliability.py --scenarios {name}{' --quick' if quick else ''}", flush=True)


# --- main ----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument(
        "--quick", action="store_true", help="smaller runs (about 3 minutes); no crash run on Apache Kafka"
    )
    parser.add_argument("--no-apache", action="store_true", help="skip every part that needs Apache Kafka")
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/reliability[_quick].json)")
    parser.add_argument("--part-timeout", type=int, default=300, help="seconds one scenario part may take at most")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown or not names:
        parser.error(f"unknown scenarios {unknown}; choose among {', '.join(SCENARIOS)}")
    args.names = names
    return args


def apache_unavailable(args: argparse.Namespace) -> str | None:
    from streamrec.stream.app.apache_kafka import kafka_unavailable_reason

    return "--no-apache" if args.no_apache else kafka_unavailable_reason()


def quiet_client_logs(log_dir: Path) -> None:
    """The bench's own Kafka clients complain loudly while a broker is down: into a file, not the report."""
    import logging

    logging.basicConfig(
        filename=log_dir / "bench.log", level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def terminate_on_sigterm() -> None:
    """SIGTERM ends the bench like Ctrl-C: through the ``finally`` that stops every process."""

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)


def git_commit() -> str | None:
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    terminate_on_sigterm()
    params = QUICK if args.quick else FULL
    output = args.output or RESULTS / f"reliability{'_quick' if args.quick else ''}.json"
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / "logs" / f"reliability-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    quiet_client_logs(log_dir)
    model = prepare_model()
    unavailable = apache_unavailable(args)
    print(
        f"streamrec reliability bench{' (quick)' if args.quick else ''}: {', '.join(args.names)}; "
        f"model {model.version}; {os.cpu_count()} CPUs; worker session timeout {SESSION_TIMEOUT_S:g} s; "
        f"logs in {log_dir}"
    )
    if unavailable:
        print(f"Apache Kafka parts skipped: {unavailable}")
    run = Run(params, args.quick, model, Launcher(model, log_dir), Brokers(log_dir, unavailable), args.part_timeout)
    results: dict[str, Any] = {}
    interrupted = False
    try:
        for name in args.names:
            print(f"\n== {name} ==", flush=True)
            results[name] = RUNNERS[name](run)
            print_scenario(name, results[name], args.quick)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping every worker and broker")
    finally:
        run.launcher.stop_all()
        run.brokers.stop_all()
    report = {
        "when": stamp,
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "quick": args.quick,
        "interrupted": interrupted,
        "params": asdict(params),
        "model": {"version": model.version, "artifacts": str(model.artifacts)},
        "apache_kafka": unavailable or "used",
        "results": results,
        "logs": str(log_dir),
        "total_s": round(time.monotonic() - started, 1),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {output} (total {report['total_s']:.0f} s)")
    failed = any("error" in r for parts in results.values() for r in parts.values())
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
