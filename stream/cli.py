"""The ``streamrec`` command line. Every option also has a ``STREAMREC_*`` environment variable (see
``streamrec settings``); options given here win over the environment."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from stream.settings import Settings, settings_markdown_table

app = typer.Typer(
    name="streamrec",
    help="Real-time e-commerce recommendations from a Kafka event stream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

LogLevel = Annotated[str, typer.Option("--log-level", help="Logging level: DEBUG, INFO, WARNING, ERROR.")]


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the CLI options that were given on top."""
    return Settings(**{name: value for name, value in overrides.items() if value is not None})


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 9092,
) -> None:
    """Run the embedded Kafka-protocol broker (Tansu, in memory) on 127.0.0.1 in the foreground."""
    from stream.broker import EmbeddedBroker

    with EmbeddedBroker(port or None) as running:
        typer.echo(f"broker listening on {running.bootstrap} (memory only; Ctrl-C stops it)")
        try:
            while running.process is not None and running.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


@app.command()
def worker(
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    artifacts: Annotated[
        Path | None, typer.Option(help="Model artifact directory (or its parent with LATEST).")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Port of /metrics; 0 disables it.")] = None,
    metrics_host: Annotated[str | None, typer.Option(help="Address of /metrics.")] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group id.")] = None,
    runtime: Annotated[str | None, typer.Option(help="kafka (bare aiokafka loop) or faust.")] = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Consume events, keep user state, publish recommendations, until SIGTERM or Ctrl-C."""
    from stream.worker import run_worker

    _logging(log_level)
    run_worker(
        _settings(
            bootstrap_servers=bootstrap,
            artifacts_dir=artifacts,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            consumer_group=group,
            runtime=runtime,
        )
    )


@app.command()
def replay(
    events: Annotated[Path, typer.Option(help="Event file: JSONL in the event contract, or a shared dataset.")],
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    topic: Annotated[str | None, typer.Option(help="Topic to produce to (default: the events topic).")] = None,
    rate: Annotated[float | None, typer.Option(help="Events per second; unlimited if not given.")] = None,
    limit: Annotated[int | None, typer.Option(help="Send at most this many events.")] = None,
    keep_timestamps: Annotated[
        bool, typer.Option(help="Send the file's timestamps instead of stamping each event with the send time.")
    ] = False,
) -> None:
    """Produce events from a file to Kafka, keyed by user id, optionally paced."""
    from stream.replay import replay as replay_events

    settings = _settings(bootstrap_servers=bootstrap)
    sent = replay_events(
        events,
        settings.bootstrap_servers,
        topic=topic or settings.events_topic,
        rate=rate,
        retime=not keep_timestamps,
        limit=limit,
    )
    typer.echo(f"sent {sent} events to {topic or settings.events_topic}")


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Events JSONL to write; the catalog goes beside it as *.items.jsonl.")],
    users: Annotated[int, typer.Option(help="Number of shoppers.")] = 2000,
    items: Annotated[int, typer.Option(help="Catalog size.")] = 1000,
    events: Annotated[int, typer.Option(help="Number of events.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same shop).")] = 7,
) -> None:
    """Write a realistic synthetic shop: categories, Zipf popularity, sessions with view→buy funnels, drift."""
    from stream.simulate import simulate_to_files

    events_path, catalog_path = simulate_to_files(out, users, items, events, seed)
    typer.echo(f"wrote {events_path} and {catalog_path}")


@app.command("catalog")
def publish_catalog_command(
    items: Annotated[Path, typer.Option(help="Catalog JSONL: one item record per line.")],
    log_level: LogLevel = "INFO",
) -> None:
    """Publish catalog records to the items topic (key = item id), as a shop's catalog service would."""
    from stream.replay import publish_catalog

    _logging(log_level)
    settings = _settings()
    sent = publish_catalog(items, settings.bootstrap_servers, settings.items_topic)
    typer.echo(f"published {sent} catalog records to {settings.items_topic}")


@app.command()
def train(
    events: Annotated[Path, typer.Option(help="Event log: JSONL, Beauty.txt, Taobao CSV or Diginetica sessions.")],
    out: Annotated[Path, typer.Option(help="Artifact root: a new version directory is written inside.")],
    fmt: Annotated[str, typer.Option("--format", help="auto, jsonl, beauty, taobao or diginetica.")] = "auto",
    epochs: Annotated[int | None, typer.Option(help="Most training epochs (early stopping may end sooner).")] = None,
    dim: Annotated[int | None, typer.Option(help="Embedding dimension.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(help="Catalog JSONL (item_id, title, category, attributes): lets workers embed new items."),
    ] = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Train item embeddings and the sequence ranker; write a versioned artifact directory."""
    from model.datasets import load_events
    from model.train import train_from_settings
    from stream.replay import read_catalog_jsonl

    _logging(log_level)
    log = load_events(events, fmt)
    typer.echo(f"loaded {len(log)} events from {events}")
    records = read_catalog_jsonl(catalog) if catalog is not None else None
    directory = train_from_settings(log, out, _settings(), epochs=epochs, dim=dim, seed=seed, catalog=records)
    typer.echo(f"wrote {directory}")


@app.command("eval")
def evaluate_model(
    events: Annotated[Path, typer.Option(help="Event log: JSONL, Beauty.txt, Taobao CSV or Diginetica sessions.")],
    artifacts: Annotated[Path, typer.Option(help="Model artifact directory (or its parent with LATEST).")],
    fmt: Annotated[str, typer.Option("--format", help="auto, jsonl, beauty, taobao or diginetica.")] = "auto",
    output: Annotated[Path | None, typer.Option(help="Write the full report here as JSON.")] = None,
    served: Annotated[
        bool, typer.Option(help="Also replay every user's history through the serving pipeline and score its lists.")
    ] = True,
    served_users: Annotated[
        int | None, typer.Option(help="Replay a seeded sample of this many users instead of all.", min=1)
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampled negatives and of tie-breaking.")] = 0,
    log_level: LogLevel = "WARNING",
) -> None:
    """Evaluate a model version against popularity and item-kNN: full and sampled ranking, beyond-accuracy
    measures, and what the serving pipeline actually recommends (leave-one-out on the event log)."""
    import orjson

    from model.artifacts import load_artifacts
    from model.datasets import load_events
    from model.evaluate import evaluate, format_table

    _logging(log_level)
    try:
        log = load_events(events, fmt)
        model = load_artifacts(artifacts)
    except ValueError as exc:  # a missing file, an unknown format, a corrupt artifact: say which, no traceback
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"loaded {len(log)} events from {events}; evaluating model {model.version}")
    report = evaluate(log, model, seed=seed, served=served, settings=_settings(), served_max_users=served_users)
    typer.echo(format_table(report))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        typer.echo(f"wrote {output}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where simulated data and artifacts are kept between runs.")] = Path(
        "streamrec-demo"
    ),
    events: Annotated[int, typer.Option(help="Live events to replay through the worker.")] = 3000,
    rate: Annotated[float, typer.Option(help="Replay rate in events per second.")] = 200.0,
    metrics_port: Annotated[int, typer.Option(help="Port of the worker's /metrics.")] = 9400,
    keep_running: Annotated[
        bool, typer.Option(help="Keep broker and worker up after the replay, until Ctrl-C.")
    ] = False,
) -> None:
    """Live demo: embedded broker, a trained model, a worker, events replayed, recommendations printed."""
    from stream.demo import run_demo

    _logging("WARNING")
    run_demo(workdir, n_live_events=events, rate=rate, metrics_port=metrics_port, keep_running=keep_running)


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


if __name__ == "__main__":
    app()
