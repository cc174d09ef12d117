"""The ``streamrec`` command line. Every option also has a ``STREAMREC_*`` environment variable (see
``streamrec settings``); options given here win over the environment.

A mistake with the input, a file, a port or the broker ends in one line on stderr, ``streamrec: error: <what is
wrong>; <the fix>``, and a non-zero exit (:func:`main`, the ``streamrec`` script); ``streamrec --debug COMMAND``
shows the traceback instead. Inputs are checked before torch and FAISS are imported, so a mistake costs a fraction
of a second rather than the ten of an import.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import orjson
import typer
from typer.core import TyperGroup

from streamrec.stream.errors import StreamrecError, kafka_failure, one_line, os_failure, settings_failure
from streamrec.stream.settings import Settings, settings_markdown_table

if TYPE_CHECKING:
    from streamrec.model.event_log import EventLog

PROG = "streamrec"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EVENT_FORMATS = ("auto", "jsonl", "beauty", "taobao", "diginetica")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


class _Commands(TyperGroup):
    """Runs a command; a failure becomes one line on stderr and a non-zero exit, wherever the app is run from (the
    script, ``python -m streamrec.stream.app.cli``, typer's test
    runner). Usage mistakes pass through: :func:`main` words them."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if _options.debug:
                raise
            message, exit_code = describe_failure(exc)
            print(f"{PROG}: error: {message}", file=sys.stderr)
            raise typer.Exit(exit_code) from None


app = typer.Typer(
    name="streamrec",
    help="Real-time e-commerce recommendations from a Kafka event stream.",
    cls=_Commands,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass
class _GlobalOptions:
    debug: bool = False
    kafka_bootstrap: str | None = None  # the servers a command talks to, named when a Kafka client fails
    kafka_security: str | None = None  # how it talks to them, e.g. "SASL_SSL with SCRAM-SHA-512"; None: plaintext
    # Set once a worker runs: its stream libraries may leave threads that never end (see _exit).
    abandon_lingering_threads: bool = False


_options = _GlobalOptions()


@app.callback(invoke_without_command=True)
def _global_options(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="On failure, show the full traceback instead of one line.")
    ] = False,
) -> None:
    """Real-time e-commerce recommendations from a Kafka event stream."""
    _options.debug, _options.kafka_bootstrap, _options.kafka_security = debug, None, None
    if ctx.invoked_subcommand is None:  # a bare `streamrec` asks what there is
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def _check_log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise typer.BadParameter(f"{value!r} is not a log level: use {', '.join(LOG_LEVELS)}")
    return level


def _check_format(value: str) -> str:
    fmt = value.lower()
    if fmt not in EVENT_FORMATS:
        raise typer.BadParameter(f"{value!r} is not an event file format: use {', '.join(EVENT_FORMATS)}")
    return fmt


def _check_positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value:g} is not positive")
    return value


LogLevel = Annotated[
    str, typer.Option("--log-level", help="Logging level: DEBUG, INFO, WARNING, ERROR.", callback=_check_log_level)
]
EventFormat = Annotated[
    str, typer.Option("--format", help="auto, jsonl, beauty, taobao or diginetica.", callback=_check_format)
]

# The option that sets each setting, where its name is not simply --field-name.
_OPTION_OF_SETTING = {"bootstrap_servers": "--bootstrap", "artifacts_dir": "--artifacts", "consumer_group": "--group"}


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the CLI options that were given on top; an invalid value is reported
    as one line naming its ``--option`` or ``STREAMREC_*`` variable."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValueError as exc:  # pydantic's ValidationError and pydantic-settings' SettingsError
        options = {name: _OPTION_OF_SETTING.get(name, "--" + name.replace("_", "-")) for name in given}
        failure = settings_failure(exc, options)
        if failure is None:
            raise
        raise failure from None


def _logging(level: str, *, quiet_kafka_clients: bool = False) -> None:
    owns_logging = not logging.getLogger().handlers  # not when embedded (a test runner's handlers)
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if owns_logging and not _options.debug:
        from streamrec.stream.logs import limit_repeats

        limit_repeats()
    if not _options.debug and level.upper() != "DEBUG":
        # FAISS tells at INFO which of its builds it tried to load: noise to a user, kept for --debug.
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if quiet_kafka_clients and not _options.debug and level.upper() != "DEBUG":
        # A one-shot command reports a Kafka failure itself, in one line; the clients would log every reconnect.
        for name in ("kafka", "aiokafka"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _talks_to_kafka(settings: Settings) -> None:
    """Remember the servers and the security of the command's Kafka clients, for the message if they fail."""
    _options.kafka_bootstrap = settings.bootstrap_servers
    protocol = settings.security_protocol
    _options.kafka_security = None
    if protocol != "PLAINTEXT":
        _options.kafka_security = f"{protocol} with {settings.sasl_mechanism}" if "SASL" in protocol else protocol


def _readable_file(path: Path, what: str, option: str) -> Path:
    if not path.exists():
        raise StreamrecError(f"{what} not found: {path}; check the path given to {option}")
    if not path.is_file():
        raise StreamrecError(f"{what} {path} is not a file; pass a file to {option}")
    if not os.access(path, os.R_OK):
        raise StreamrecError(f"{what} {path} is not readable by this user; fix its permissions")
    return path


def _artifact_dir(path: Path | None) -> Path:
    """The artifact path's existence, checked before torch is imported; what it holds is verified on loading."""
    if path is None:
        raise StreamrecError(
            "no model artifacts given; pass --artifacts DIR (the --out of streamrec train) "
            "or set STREAMREC_ARTIFACTS_DIR"
        )
    if not path.is_dir():
        raise StreamrecError(
            f"artifact directory not found: {path}; pass the --out directory of streamrec train (or a version in it)"
        )
    return path


def _writable_dir(path: Path, what: str, option: str) -> Path:
    if path.exists() and not path.is_dir():
        raise StreamrecError(f"{what} {path} is a file, not a directory; pass a directory to {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StreamrecError(f"cannot create {what} {path} ({exc.strerror}); pass another {option}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StreamrecError(f"{what} {path} is not writable by this user; pass another {option}")
    return path


class _Collected(logging.Handler):
    """Keeps log records instead of printing them (see :func:`_load_event_log`)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _skipped_lines(collected: _Collected, path: Path) -> str:
    """The loader's count of skipped lines with the first reason only: enough to see what the file holds."""
    if not collected.records:
        return ""
    message = one_line(collected.records[0].getMessage()).removeprefix(f"{path}: skipped ")
    return message.split("; line ")[0]


def _load_event_log(path: Path, fmt: str) -> EventLog:
    """The event log of ``path``, or one line saying why the file is not one; needs numpy, not torch.

    The loader's warning about skipped lines is held back: when nothing valid is left, its first examples belong
    in the error line; otherwise it is logged as usual.
    """
    _readable_file(path, "event file", "--events")
    from streamrec.stream.app.event_files import load_events

    loader_log = logging.getLogger("streamrec.model.datasets")
    collected = _Collected()
    loader_log.addHandler(collected)
    loader_log.propagate = False
    fix = (
        "pass an event file (JSONL events, Beauty.txt, a Taobao CSV, Diginetica sessions), with --format "
        "if its name does not tell"
    )
    try:
        events = load_events(path, fmt)
    except (ValueError, csv.Error) as exc:  # UnicodeDecodeError (a binary file) is a ValueError
        skipped = _skipped_lines(collected, path)
        if skipped:
            raise StreamrecError(f"{path} holds no valid event ({skipped}); {fix}") from None
        reason = one_line(exc).removeprefix(f"{path}: ")
        raise StreamrecError(f"{path} is not a readable event file ({reason}); {fix}") from None
    finally:
        loader_log.removeHandler(collected)
        loader_log.propagate = True
    if len(events) == 0:
        skipped = _skipped_lines(collected, path)
        as_format = f" read as {fmt}" if fmt != "auto" else ""
        raise StreamrecError(f"{path} holds no valid event{as_format} ({skipped or 'it is empty'}); {fix}")
    for record in collected.records:
        loader_log.handle(record)
    return events


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).", min=0, max=65535)] = 9092,
) -> None:
    """Run the embedded Kafka-protocol broker (Tansu, in memory) on 127.0.0.1 in the foreground.

    SIGTERM or Ctrl-C stops it, and it never outlives this command: it is killed even if this process is."""
    from streamrec.stream.app.broker import EmbeddedBroker
    from streamrec.stream.runtime.network import LOOPBACK, require_free_port

    if port:
        require_free_port(LOOPBACK, port, "the broker", "stop what holds it, or pass --port N (0 picks a free one)")
    stopping: list[str] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signal.Signals(signum).name)

    # SIGTERM's default would end this process at once and leave the broker running on its port.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    with EmbeddedBroker(port or None) as running:
        typer.echo(f"broker listening on {running.bootstrap} (memory only; Ctrl-C or SIGTERM stops it)")
        while not stopping:
            if running.process is not None and running.process.poll() is not None:
                raise StreamrecError(
                    f"the broker exited by itself with code {running.process.returncode}; start it again"
                )
            time.sleep(0.2)
    typer.echo(f"broker stopped ({stopping[0]})")


@app.command()
def worker(
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    artifacts: Annotated[
        Path | None, typer.Option(help="Model artifact directory (or its parent with LATEST).")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Port of /metrics; 0 disables it.", min=0, max=65535)] = None,
    metrics_host: Annotated[str | None, typer.Option(help="Address of /metrics.")] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group id.")] = None,
    runtime: Annotated[str | None, typer.Option(help="kafka (bare aiokafka loop) or faust.")] = None,
    connect_timeout: Annotated[
        float,
        typer.Option(help="Seconds to wait at startup for Kafka to accept a connection before exiting.", min=0),
    ] = 10.0,
    log_level: LogLevel = "INFO",
) -> None:
    """Consume events, keep user state, publish recommendations, until SIGTERM or Ctrl-C."""
    from streamrec.stream.runtime.network import require_free_port, wait_for_kafka

    settings = _settings(
        bootstrap_servers=bootstrap,
        artifacts_dir=artifacts,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        consumer_group=group,
        runtime=runtime,
    )
    # The checks run_worker makes again, made here before torch and FAISS are imported: seconds saved per mistake.
    _artifact_dir(settings.artifacts_dir)
    if settings.metrics_port:
        require_free_port(
            settings.metrics_host,
            settings.metrics_port,
            "the worker's /metrics",
            "stop what holds it, or pass --metrics-port N (0 turns /metrics off)",
        )
    _talks_to_kafka(settings)
    wait_for_kafka(settings.bootstrap_servers, connect_timeout)
    _logging(log_level)
    from streamrec.stream.runtime.worker import run_worker

    _options.abandon_lingering_threads = True
    run_worker(settings)


@app.command()
def replay(
    events: Annotated[Path, typer.Option(help="Event file: JSONL in the event contract, or a shared dataset.")],
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    topic: Annotated[str | None, typer.Option(help="Topic to produce to (default: the events topic).")] = None,
    rate: Annotated[
        float | None, typer.Option(help="Events per second; unlimited if not given.", callback=_check_positive)
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Send at most this many events.", min=0)] = None,
    keep_timestamps: Annotated[
        bool, typer.Option(help="Send the file's timestamps instead of stamping each event with the send time.")
    ] = False,
) -> None:
    """Produce events from a file to Kafka, keyed by user id, optionally paced."""
    from streamrec.model.datasets import detect_format
    from streamrec.stream.runtime.network import wait_for_kafka

    _readable_file(events, "event file", "--events")
    try:
        detect_format(events)
    except ValueError as exc:  # the loader's message ends with advice for its Python callers: cut it
        reason = one_line(exc).split(", or pass fmt=")[0]
        raise StreamrecError(f"{reason}; rename the file, or convert it to JSONL events") from None
    settings = _settings(bootstrap_servers=bootstrap)
    _logging("WARNING", quiet_kafka_clients=True)
    _talks_to_kafka(settings)
    wait_for_kafka(settings.bootstrap_servers, timeout_s=0)
    from streamrec.stream.app.replay import replay as replay_events
    from streamrec.stream.runtime.security import kafka_python_options

    sent = replay_events(
        events,
        settings.bootstrap_servers,
        topic=topic or settings.events_topic,
        rate=rate,
        retime=not keep_timestamps,
        limit=limit,
        client_options=kafka_python_options(settings),
    )
    typer.echo(f"sent {sent} events to {topic or settings.events_topic}")


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Events JSONL to write; the catalog goes beside it as *.items.jsonl.")],
    users: Annotated[int, typer.Option(help="Number of shoppers.", min=1)] = 2000,
    items: Annotated[int, typer.Option(help="Catalog size (complements need at least 2 items).", min=2)] = 1000,
    events: Annotated[int, typer.Option(help="Number of events.", min=0)] = 100_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same shop).")] = 7,
) -> None:
    """Write a realistic synthetic shop: categories, Zipf popularity, sessions with view→buy funnels, drift."""
    from streamrec.stream.app.simulate import simulate_to_files

    if out.is_dir():
        raise StreamrecError(f"{out} is a directory; pass the events file to write, e.g. --out {out / 'shop.jsonl'}")
    _writable_dir(out.parent, "directory", "--out")
    events_path, catalog_path = simulate_to_files(out, users, items, events, seed)
    typer.echo(f"wrote {events_path} and {catalog_path}")


@app.command("catalog")
def publish_catalog_command(
    items: Annotated[Path, typer.Option(help="Catalog JSONL: one item record per line.")],
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Publish catalog records to the items topic (key = item id), as a shop's catalog service would."""
    from streamrec.stream.runtime.network import wait_for_kafka

    _readable_file(items, "catalog file", "--items")
    settings = _settings(bootstrap_servers=bootstrap)
    _logging(log_level, quiet_kafka_clients=True)
    _talks_to_kafka(settings)
    wait_for_kafka(settings.bootstrap_servers, timeout_s=0)
    from streamrec.stream.app.replay import publish_catalog
    from streamrec.stream.runtime.security import kafka_python_options

    sent = publish_catalog(
        items, settings.bootstrap_servers, settings.items_topic, client_options=kafka_python_options(settings)
    )
    typer.echo(f"published {sent} catalog records to {settings.items_topic}")


@app.command()
def forget(
    user: Annotated[list[str], typer.Option(help="User id to erase; repeat the option for several users.")],
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    request_id: Annotated[
        str | None, typer.Option(help="Your reference for the request; workers log it when they apply it.")
    ] = None,
) -> None:
    """Erase users: their state, their last recommendations and their history's influence (see "Erasure")."""
    from streamrec.stream.app.forget import check_user_ids, send_forget
    from streamrec.stream.runtime.network import wait_for_kafka

    settings = _settings(bootstrap_servers=bootstrap)
    check_user_ids(user, settings)
    _logging("WARNING", quiet_kafka_clients=True)
    _talks_to_kafka(settings)
    wait_for_kafka(settings.bootstrap_servers, timeout_s=0)

    sent = send_forget(user, settings, request_id)
    typer.echo(f"sent {sent} forget command{'s' if sent != 1 else ''} to {settings.events_topic}")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Artifact root: a new version directory is written inside.")],
    events: Annotated[
        Path | None, typer.Option(help="Event log: JSONL, Beauty.txt, Taobao CSV or Diginetica sessions.")
    ] = None,
    from_topic: Annotated[
        bool, typer.Option(help="Read the events topic instead of a file (with --days, or --since/--until).")
    ] = False,
    days: Annotated[float | None, typer.Option(help="With --from-topic: the last N days.", min=0.001)] = None,
    since: Annotated[
        datetime | None, typer.Option(help="With --from-topic: from this time (ISO 8601, UTC if no zone).")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option(help="With --from-topic: up to this time (ISO 8601, UTC if no zone).")
    ] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers (with --from-topic).")] = None,
    fmt: EventFormat = "auto",
    epochs: Annotated[
        int | None, typer.Option(help="Most training epochs (early stopping may end sooner).", min=1)
    ] = None,
    dim: Annotated[int | None, typer.Option(help="Embedding dimension (even: the ranker has 2 heads).", min=2)] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Catalog JSONL (item_id, title, category, attributes): lets workers embed new items "
            "(with --from-topic, default: the catalog topic)."
        ),
    ] = None,
    hold_out_items: Annotated[
        float | None,
        typer.Option(
            help="Keep this share of the items out of training (the cold-start item protocol that streamrec eval "
            "then measures); not for a model to serve.",
            min=0.0,
            max=0.99,
        ),
    ] = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Train item embeddings and the sequence ranker; write a versioned artifact directory."""
    if dim is not None and dim % 2:
        raise StreamrecError(f"--dim {dim} is odd; pass an even dimension (the ranker splits it over 2 heads)")
    if (events is None) == (not from_topic):
        raise StreamrecError("pass either --events FILE or --from-topic (with --days N or --since/--until)")
    if not from_topic and (days is not None or since is not None or until is not None):
        raise StreamrecError("--days, --since and --until choose a range of the events topic; add --from-topic")
    settings = _settings(bootstrap_servers=bootstrap)
    _logging(log_level, quiet_kafka_clients=from_topic)
    if events is not None:
        log = _load_event_log(events, fmt)
        typer.echo(f"loaded {len(log)} events from {events}")
    else:
        log = _events_from_topic(settings, days, since, until)
    records = _read_catalog(catalog) if catalog is not None else None
    if records is None and from_topic:
        from streamrec.stream.app.topic_read import catalog_from_topic

        records = catalog_from_topic(settings) or None
        typer.echo(f"read {len(records or [])} catalog items from {settings.items_topic}")
    _writable_dir(out, "artifact directory", "--out")
    from streamrec.stream.app.training import (
        train_from_settings,  # torch: only now that every input is known to be good
    )

    try:
        directory = train_from_settings(
            log, out, settings, epochs=epochs, dim=dim, seed=seed, catalog=records, hold_out_items=hold_out_items
        )
    except ValueError as exc:  # too few users or events to train on: the data, not the code, is at fault
        source = str(events) if events is not None else f"that range of {settings.events_topic}"
        raise StreamrecError(f"cannot train on {source} ({one_line(exc)}); give it more events") from None
    typer.echo(f"wrote {directory}")


def _events_from_topic(
    settings: Settings, days: float | None, since: datetime | None, until: datetime | None
) -> EventLog:
    if days is not None and since is not None:
        raise StreamrecError("--days and --since both set where the range starts; keep one")
    if days is None and since is None:
        raise StreamrecError("--from-topic needs where the range starts: --days N or --since TIME")
    start = time.time() - days * 86_400 if days is not None else _epoch(since)
    end = _epoch(until) if until is not None else None
    if end is not None and end <= start:
        raise StreamrecError("--until is not after the start of the range; swap or widen them")
    _talks_to_kafka(settings)
    from streamrec.stream.app.retrain import events_from_topic
    from streamrec.stream.runtime.network import wait_for_kafka

    wait_for_kafka(settings.bootstrap_servers, timeout_s=10)
    read = events_from_topic(settings, start, end)
    typer.echo(
        f"read {read.read} messages from {settings.events_topic}: {len(read.log)} events, {read.skipped} skipped "
        "(commands, tombstones, malformed)"
    )
    if len(read.log) == 0:
        raise StreamrecError(f"no valid event in that range of {settings.events_topic}; widen it")
    return read.log


def _epoch(moment: datetime | None) -> float:
    assert moment is not None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


@app.command()
def retrain(
    out: Annotated[Path, typer.Option(help="Artifact root the workers follow (its LATEST is switched on success).")],
    days: Annotated[float, typer.Option(help="Train on the last N days of the events topic.", min=0.001)] = 7.0,
    every: Annotated[
        float | None,
        typer.Option(help="Repeat every this many hours until SIGTERM/Ctrl-C (default: once).", min=0.01),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(help="Publish when the candidate's served NDCG@10 is ≥ serving × (1 − this).", min=0, max=1),
    ] = 0.0,
    max_records: Annotated[int | None, typer.Option(help="Read at most this many events.", min=1)] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(help="Catalog JSONL (item_id, title, category, attributes); default: the catalog topic."),
    ] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Train on the events topic, compare with the serving version, publish when not worse; optionally repeat."""
    settings = _settings(bootstrap_servers=bootstrap)
    _logging(log_level, quiet_kafka_clients=True)
    _writable_dir(out, "artifact directory", "--out")
    records = _read_catalog(catalog) if catalog is not None else None
    _talks_to_kafka(settings)
    from streamrec.stream.runtime.network import wait_for_kafka

    wait_for_kafka(settings.bootstrap_servers, timeout_s=10)
    if every is None:
        _retrain_once(settings, out, days, tolerance, max_records, records)
        return
    # On a schedule: a signal ends the wait between two runs (a run in progress finishes first), and a failed run
    # (the broker away, too few events) is reported and tried again at the next period.
    from kafka.errors import KafkaError

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        try:
            _retrain_once(settings, out, days, tolerance, max_records, records)
        except (StreamrecError, KafkaError, OSError) as exc:
            typer.echo(f"{PROG}: retraining failed: {one_line(exc)}; next try in {every:g} h", err=True)
        if stop.wait(every * 3600):
            return


def _retrain_once(
    settings: Settings,
    out: Path,
    days: float,
    tolerance: float,
    max_records: int | None,
    catalog: list[dict[str, Any]] | None,
) -> None:
    from streamrec.stream.app.retrain import events_from_topic
    from streamrec.stream.app.retrain import retrain as run_retrain
    from streamrec.stream.app.topic_read import catalog_from_topic

    if catalog is None:
        catalog = catalog_from_topic(settings) or None
        typer.echo(f"read {len(catalog or [])} catalog items from {settings.items_topic}")
    read = events_from_topic(settings, time.time() - days * 86_400, max_records=max_records)
    typer.echo(
        f"read {read.read} messages from {settings.events_topic} ({days:g} days): {len(read.log)} events, "
        f"{read.skipped} skipped (commands, tombstones, malformed)"
    )
    if len(read.log) == 0:
        raise StreamrecError(f"no valid event in the last {days:g} days of {settings.events_topic}; nothing to train")
    outcome = run_retrain(settings, out, read.log, tolerance=tolerance, catalog=catalog)
    action = "published" if outcome.published else "kept the serving version; not published"
    typer.echo(f"{action}: {outcome.candidate.name}: {outcome.reason}")


@app.command("eval")
def evaluate_model(
    events: Annotated[Path, typer.Option(help="Event log: JSONL, Beauty.txt, Taobao CSV or Diginetica sessions.")],
    artifacts: Annotated[Path, typer.Option(help="Model artifact directory (or its parent with LATEST).")],
    fmt: EventFormat = "auto",
    output: Annotated[
        Path | None, typer.Option(help="Write the full report here as JSON, and its chart beside it (.png).")
    ] = None,
    served: Annotated[
        bool, typer.Option(help="Also replay every user's history through the serving pipeline and score its lists.")
    ] = True,
    served_users: Annotated[
        int | None, typer.Option(help="Replay a seeded sample of this many users instead of all.", min=1)
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampled negatives and of tie-breaking.")] = 0,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Catalog JSONL (item_id, title, category, attributes): with a model trained with items held out "
            "(--hold-out-items), places them by their content as a worker would."
        ),
    ] = None,
    log_level: LogLevel = "WARNING",
) -> None:
    """Evaluate a model version against popularity and item-kNN: full and sampled ranking, beyond-accuracy
    measures, and what the serving pipeline actually recommends (leave-one-out on the event log); for a model
    trained with items held out, where those new items land for the shoppers who pick them."""

    _artifact_dir(artifacts)
    if output is not None and output.is_dir():
        raise StreamrecError(f"--output {output} is a directory; pass a file name, e.g. {output / 'report.json'}")
    settings = _settings()
    _logging(log_level)
    log = _load_event_log(events, fmt)
    records = _read_catalog(catalog) if catalog is not None else None
    from streamrec.model.artifacts import load_artifacts  # torch: only now that the inputs are known to be good
    from streamrec.model.cold_items import format_cold_items
    from streamrec.model.evaluate import format_table
    from streamrec.stream.app.served_eval import evaluate

    model = load_artifacts(artifacts)
    typer.echo(f"loaded {len(log)} events from {events}; evaluating model {model.version}")
    try:
        report = evaluate(
            log, model, seed=seed, served=served, settings=settings, served_max_users=served_users, catalog=records
        )
    except ValueError as exc:  # a held-out model evaluated on another log than the one it was trained from
        raise StreamrecError(f"cannot evaluate {model.version} on {events}: {one_line(exc)}") from None
    typer.echo(format_table(report))
    if "cold_items" in report:
        typer.echo(format_cold_items(report["cold_items"]))
    if output is not None:
        from streamrec.model.eval_chart import plot_report

        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        chart = output.with_suffix(".png")
        plot_report(report, chart)
        typer.echo(f"wrote {output} and {chart}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where simulated data and artifacts are kept between runs.")] = Path(
        "streamrec-demo"
    ),
    events: Annotated[int, typer.Option(help="Live events to replay through the worker.", min=1)] = 3000,
    rate: Annotated[float, typer.Option(help="Replay rate in events per second.", callback=_check_positive)] = 200.0,
    metrics_port: Annotated[
        int, typer.Option(help="Port of the worker's /metrics (0 picks a free one).", min=0, max=65535)
    ] = 9400,
    keep_running: Annotated[
        bool, typer.Option(help="Keep broker and worker up after the replay, until Ctrl-C.")
    ] = False,
) -> None:
    """Live demo: embedded broker, a trained model, a worker, events replayed, recommendations printed.

    Exits non-zero, with the cause, when anything it started fails."""
    from streamrec.stream.runtime.network import LOOPBACK, require_free_port

    if metrics_port:  # found now, not after a minute of training
        require_free_port(
            LOOPBACK,
            metrics_port,
            "the demo worker's /metrics",
            "stop what holds it, or pass --metrics-port N (0 picks a free one)",
        )
    _writable_dir(workdir, "work directory", "--workdir")
    _logging("WARNING", quiet_kafka_clients=True)
    from streamrec.stream.app.demo import run_demo

    run_demo(
        workdir,
        n_live_events=events,
        rate=rate,
        metrics_port=metrics_port,
        keep_running=keep_running,
        debug=_options.debug,
    )


@app.command()
def report(
    metrics: Annotated[
        list[str] | None,
        typer.Option(help="A worker's metrics URL (http://host:9400/metrics); repeat for every worker."),
    ] = None,
    from_topics: Annotated[
        bool, typer.Option(help="Join the recommendations and events topics instead of reading metrics.")
    ] = False,
    since_hours: Annotated[
        float, typer.Option(help="With --from-topics: how many hours back to read.", min=0.001)
    ] = 24.0,
    window: Annotated[
        float | None,
        typer.Option(help="With --from-topics: seconds after a list in which the next event counts.", min=0.001),
    ] = None,
    max_records: Annotated[
        int | None, typer.Option(help="With --from-topics: read at most this many records per topic.", min=1)
    ] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Online hit rate, coverage and diversity per A/B variant, with 95 % confidence intervals."""
    from streamrec.stream.app import report as reporting

    if bool(metrics) == from_topics:
        raise StreamrecError("pass either --metrics URL (one per worker) or --from-topics")
    if metrics:
        reports = reporting.report_from_metrics([reporting.scrape(url) for url in metrics])
        basis = "share of the served index's items recommended (the best worker's)"
    else:
        settings = _settings(bootstrap_servers=bootstrap)
        _logging("WARNING", quiet_kafka_clients=True)
        _talks_to_kafka(settings)
        from streamrec.stream.runtime.network import wait_for_kafka

        wait_for_kafka(settings.bootstrap_servers, timeout_s=0)
        reports = _report_from_topics(settings, since_hours, window, max_records)
        basis = "distinct items recommended over the catalog topic's items (else the items the range names)"
    if json_output:
        typer.echo(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        typer.echo(reporting.format_report(reports, basis))


def _report_from_topics(
    settings: Settings, since_hours: float, window: float | None, max_records: int | None
) -> list[Any]:
    from streamrec.stream.app import report as reporting
    from streamrec.stream.app.topic_read import catalog_from_topic, read_range

    since = time.time() - since_hours * 3600
    shown = [
        record
        for message in read_range(settings, settings.recommendations_topic, since, max_records=max_records)
        if message.value is not None and (record := reporting.parse_recommendation(message.value)) is not None
    ]
    events = [
        event
        for message in read_range(settings, settings.events_topic, since, max_records=max_records)
        if message.value is not None and (event := reporting.parse_event(message.value)) is not None
    ]
    catalog = {
        str(record["item_id"]): record.get("category") if isinstance(record.get("category"), str) else None
        for record in catalog_from_topic(settings, max_records)
    }
    window_s = window if window is not None else (settings.online_eval_window_s or 1_800.0)
    return reporting.report_from_records(shown, events, window_s, catalog)


@app.command("settings")
def show_settings(
    markdown: Annotated[bool, typer.Option(help="Print the reference table in Markdown.")] = False,
) -> None:
    """Print every setting with its current value (or the Markdown reference table)."""
    if markdown:
        typer.echo(settings_markdown_table())
        return
    for name, value in _settings().model_dump().items():
        typer.echo(f"STREAMREC_{name.upper()}={value}")


def _read_catalog(path: Path) -> list[dict[str, Any]]:
    _readable_file(path, "catalog file", "--catalog")
    from streamrec.stream.app.replay import read_catalog_jsonl

    try:
        return read_catalog_jsonl(path)
    except ValueError as exc:  # orjson's JSONDecodeError, UnicodeDecodeError
        raise StreamrecError(
            f"catalog {path} is not JSONL ({one_line(exc)}); pass one JSON item record per line"
        ) from None


@app.command()
def reindex(
    artifacts: Annotated[Path, typer.Option(help="Model artifact directory (or its parent with LATEST).")],
    log_level: LogLevel = "INFO",
) -> None:
    """Rebuild a model's retrieval index with today's index settings (STREAMREC_TRAIN__INDEX_KIND and the other
    index fields) without retraining; publish it as a new version beside the old one and switch LATEST to it."""
    _artifact_dir(artifacts)
    settings = _settings()
    _logging(log_level)
    from streamrec.stream.app.training import reindex_from_settings  # torch and FAISS: the inputs are good

    try:
        directory = reindex_from_settings(artifacts, settings)
    except ValueError as exc:  # e.g. an ivfpq index asked of a catalogue too small to train its codes
        raise StreamrecError(f"cannot rebuild the index of {artifacts}: {one_line(exc)}") from None
    typer.echo(f"wrote {directory}")


@app.command()
def recontent(
    artifacts: Annotated[Path, typer.Option(help="Model artifact directory (or its parent with LATEST).")],
    catalog: Annotated[Path, typer.Option(help="Catalog records (JSONL) of the items the model was trained on.")],
    log_level: LogLevel = "INFO",
) -> None:
    """Fit a model's content projection for new items again, with today's content settings
    (STREAMREC_TRAIN__CONTENT_ENCODER, _CONTENT_FIELD_VALUES, ...) and this catalog, without retraining; publish it
    as a new version beside the old one and switch LATEST to it."""
    _artifact_dir(artifacts)
    settings = _settings()
    records = _read_catalog(catalog)
    _logging(log_level)
    from streamrec.model.content import ContentModelUnavailable  # numpy and FAISS: the inputs are good
    from streamrec.stream.app.training import recontent_from_settings

    try:
        directory = recontent_from_settings(artifacts, records, settings)
    except (ValueError, ContentModelUnavailable) as exc:  # too few described items; the text model not installed
        raise StreamrecError(f"cannot fit the content projection of {artifacts}: {one_line(exc)}") from None
    typer.echo(f"wrote {directory}")


@app.command()
def reblend(
    artifacts: Annotated[Path, typer.Option(help="Model artifact directory (or its parent with LATEST).")],
    events: Annotated[Path, typer.Option(help="The event log the model was trained on (its fingerprint is checked).")],
    fmt: EventFormat = "auto",
    log_level: LogLevel = "INFO",
) -> None:
    """Choose a model's item-kNN blend weight again on its validation split, ranked as served, and refit the
    item-kNN, without retraining the ranker (a model trained before the choice was made that way); publish it as a
    new version beside the old one and switch LATEST to it."""
    _artifact_dir(artifacts)
    _logging(log_level)
    log = _load_event_log(events, fmt)
    typer.echo(f"loaded {len(log)} events from {events}")
    from streamrec.model.artifacts import ArtifactError  # torch: only now that the inputs are known to be good
    from streamrec.model.train import attach_item_knn

    try:
        directory = attach_item_knn(artifacts, log)
    except ArtifactError:
        raise
    except ValueError as exc:  # another event log, no user with enough interactions
        raise StreamrecError(f"cannot blend {artifacts}: {one_line(exc)}") from None
    manifest = orjson.loads((directory / "manifest.json").read_bytes())
    ndcg = manifest.get("blend_validation", {}).get("NDCG@10", {})
    typer.echo(
        f"wrote {directory}: blend weight {manifest.get('blend_weight', 0.0):g} (validation NDCG@10 per weight: "
        + ", ".join(f"{weight}: {value:.4f}" for weight, value in ndcg.items())
        + ")"
    )


def _check_share(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"{value:g} is not between 0 and 1")
    return value


@app.command()
def distill(
    artifacts: Annotated[Path, typer.Option(help="Model artifact directory (or its parent with LATEST).")],
    events: Annotated[Path, typer.Option(help="The event log the model was trained on (its fingerprint is checked).")],
    fmt: EventFormat = "auto",
    layers: Annotated[
        int, typer.Option(help="Self-attention blocks of the student (fewer than the model's).", min=0)
    ] = 1,
    heads: Annotated[int, typer.Option(help="Attention heads per block of the student (must divide dim).", min=1)] = 1,
    temperature: Annotated[
        float, typer.Option(help="Softmax temperature of the distillation loss.", callback=_check_positive)
    ] = 2.0,
    kd_weight: Annotated[
        float,
        typer.Option(help="Weight of the KL loss to the model; the next-item CE gets 1 − this.", callback=_check_share),
    ] = 0.5,
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping on validation NDCG@10).", min=1)] = 8,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    log_level: LogLevel = "INFO",
) -> None:
    """Distil a model's ranker into a smaller student (fewer blocks and heads, the same item table) trained on the
    model's own training split; publish it as a new version beside the old one and switch LATEST to it. Workers
    serve it with STREAMREC_RANKER_COMPRESSION=distilled. The defaults are model/compress.py's DistillConfig's."""
    _artifact_dir(artifacts)
    _logging(log_level)
    log = _load_event_log(events, fmt)
    typer.echo(f"loaded {len(log)} events from {events}")
    from streamrec.model.artifacts import ArtifactError  # torch: only now that the inputs are known to be good
    from streamrec.model.compress import DistillConfig
    from streamrec.model.compress import distill as run_distill

    try:
        config = DistillConfig(
            layers=layers, heads=heads, temperature=temperature, kd_weight=kd_weight, max_epochs=epochs, seed=seed
        )
        directory = run_distill(artifacts, log, config)
    except ArtifactError:
        raise
    except ValueError as exc:  # another event log, a student no smaller than the model, heads that do not divide dim
        raise StreamrecError(f"cannot distill {artifacts}: {one_line(exc)}") from None
    student = orjson.loads((directory / "manifest.json").read_bytes())["student"]
    validation = student["validation"]
    typer.echo(
        f"wrote {directory}: a student of {layers} layers x {heads} heads, {student['encoder_parameters']:,} encoder "
        f"parameters (the model's: {student['teacher_encoder_parameters']:,}); validation NDCG@10 "
        f"{validation['student']['NDCG@10']:.4f} (the model's: {validation['teacher']['NDCG@10']:.4f})"
    )


def _artifact_failure(exc: BaseException) -> StreamrecError | None:
    artifacts = sys.modules.get("streamrec.model.artifacts")  # not imported: not an artifact failure
    if artifacts is None or not isinstance(exc, artifacts.ArtifactError):
        return None
    message = one_line(exc)
    fix = "" if ";" in message else "; point --artifacts at a directory written by streamrec train, or retrain"
    return StreamrecError(f"the model artifacts cannot be used: {message}{fix}")


def _unexpected(exc: BaseException) -> str:
    """One line for a failure nobody foresaw, with the traceback kept in a file: a bug must stay visible."""
    try:
        with tempfile.NamedTemporaryFile(
            "w", prefix="streamrec-traceback-", suffix=".txt", delete=False, encoding="utf-8"
        ) as saved:
            saved.write("".join(traceback.format_exception(exc)))
        kept = f"traceback in {saved.name}, or "
    except OSError:
        kept = ""
    return (
        f"unexpected {type(exc).__name__}: {one_line(exc)}; probably a bug: {kept}rerun as "
        f"'{PROG} --debug {' '.join(sys.argv[1:])}' to see the traceback"
    )


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """The error line (without the ``streamrec: error:`` prefix) and exit code of a failed command."""
    if isinstance(exc, StreamrecError):
        return one_line(exc, limit=2000), exc.exit_code
    for translate in (settings_failure, _artifact_failure, os_failure):
        failure = translate(exc)
        if failure is not None:
            return str(failure), failure.exit_code
    failure = kafka_failure(exc, _options.kafka_bootstrap, _options.kafka_security)
    if failure is not None:
        return str(failure), failure.exit_code
    return _unexpected(exc), 1


def _usage_line(exc: typer.TyperException) -> str:
    """A usage mistake (typer's own click exceptions: bad value, missing option, unknown command) as one line."""
    message = one_line(exc.format_message()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else PROG
    if "--debug" in message and command != PROG:  # a global option given after the command
        return f"{message[:1].lower()}{message[1:]}; put it before the command: '{PROG} --debug {ctx.info_name} ...'"
    return f"{message[:1].lower()}{message[1:]}; see '{command} --help'"


def _fail(message: str, exit_code: int) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    _exit(exit_code)


#: How long a stopped worker's leftover threads get to end before the process exits without them.
LINGERING_THREADS_WAIT_S = 2.0


def _exit(exit_code: int) -> NoReturn:
    """``sys.exit``, except after a worker ran: a thread its stream libraries failed to stop (faust's consumer
    thread, when the broker cannot take the last output) would keep the process alive until the shutdown watchdog
    killed it with another exit code, so after a short wait the process ends without it."""
    if _options.abandon_lingering_threads:
        deadline = time.monotonic() + LINGERING_THREADS_WAIT_S
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() and not t.daemon and t is not threading.main_thread() for t in threading.enumerate()):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_code)
    sys.exit(exit_code)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``streamrec`` script: runs a command and turns every failure into one line on stderr and a non-zero exit
    (2 for a usage mistake, 130 for Ctrl-C, 1 or the error's own code otherwise); with ``--debug``, a traceback."""
    _options.debug = False
    try:
        exit_code = app(args=argv, prog_name=PROG, standalone_mode=False)
    except typer.TyperException as exc:
        _fail(_usage_line(exc), exc.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except Exception as exc:  # failed before a command ran (the group's own parsing): the same one line
        if _options.debug:
            raise
        _fail(*describe_failure(exc))
    if exit_code == EXIT_INTERRUPTED:  # typer turns a KeyboardInterrupt into this exit code
        print(f"{PROG}: interrupted", file=sys.stderr)
    _exit(exit_code if isinstance(exit_code, int) else 0)


if __name__ == "__main__":
    main()
