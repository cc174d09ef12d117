"""Starting a worker: load the model, serve ``/metrics``, run the chosen runtime until SIGTERM or SIGINT.

A worker holds the whole catalog, read from the ``items`` topic before the first event is processed and
followed from then on (``stream/runtime/catalog_feed.py``). It also watches the artifact directory: when
``streamrec train`` writes a new version and moves ``LATEST`` to it, the worker loads and checks it in the
background and swaps it in between two batches, so a model update needs no restart and loses no event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, ProcessCollector

from streamrec.model.artifacts import MANIFEST_FILE, ArtifactError, ModelArtifacts, load_artifacts, resolve_artifact_dir
from streamrec.model.compress import check_servable
from streamrec.stream.aggregates import new_worker_id
from streamrec.stream.health import Health, start_http_server
from streamrec.stream.logs import limit_repeats
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.read_path import ReadPath
from streamrec.stream.runtime.aggregates_feed import AggregatesFeed
from streamrec.stream.runtime.base import BatchRuntime, WorkerFailed
from streamrec.stream.runtime.catalog_feed import CatalogFeed
from streamrec.stream.runtime.follow import TopicFollower
from streamrec.stream.runtime.owners import GroupOwners
from streamrec.stream.runtime.topics import ensure_topics
from streamrec.stream.settings import Settings
from streamrec.stream.variants import own_model_dir

log = logging.getLogger(__name__)


def start_metrics_server(settings: Settings, registry: CollectorRegistry, health: Health | None = None) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` (see ``stream/health.py``); raises ``OSError`` when the
    port is taken."""
    if settings.metrics_port:
        start_http_server(settings.metrics_host, settings.metrics_port, health or Health(), registry)
        log.info(
            "metrics on http://%s:%d/metrics (liveness /healthz, readiness /readyz)",
            settings.metrics_host,
            settings.metrics_port,
        )


def build_pipeline(settings: Settings) -> tuple[Pipeline, WorkerMetrics]:
    if settings.artifacts_dir is None:
        raise ValueError("no model artifacts: pass --artifacts DIR or set STREAMREC_ARTIFACTS_DIR")
    torch.set_num_threads(settings.torch_threads)
    artifacts = load_artifacts(settings.artifacts_dir)
    # Variants with a model of their own; variants naming the same directory share one load.
    loaded: dict[Path, ModelArtifacts] = {}
    variant_artifacts = {}
    for variant in settings.variants:
        root = own_model_dir(settings, variant)
        if root is not None:
            if root not in loaded:
                loaded[root] = load_artifacts(root)
            variant_artifacts[variant.name] = loaded[root]
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = WorkerMetrics(registry)
    worker_id = new_worker_id() if settings.share_aggregates else None
    pipeline = Pipeline(settings, artifacts, metrics, worker_id=worker_id, variant_artifacts=variant_artifacts)
    for name, variant in pipeline.variants.items():
        served = variant.model.artifacts
        log.info(
            "variant %s serves model %s (%d items, dim %d)", name, served.version, len(served.item_ids), served.dim
        )
    return pipeline, metrics


def settle_heap() -> float:
    """Collect garbage once, then exempt every surviving object from later collections; returns the seconds taken.

    A full pass of Python's cyclic garbage collector walks every tracked object. After startup most of them are the
    imported libraries and the model, which live as long as the process: frozen (``gc.freeze``), they stop costing
    each full pass. Called at startup and after each model swap; unfreezing first lets the replaced model's
    reference cycles be collected.
    """
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


class ModelWatcher:
    """Swaps in a new artifact version when ``LATEST`` changes; a broken new version is refused and logged once.

    Versions are told apart by their directory, not by the manifest's version string (a copied or renamed version
    directory keeps its manifest). A refused directory is not loaded and hashed again until ``LATEST`` names another
    one or its manifest changes, and a ``LATEST`` that names nothing usable is logged once per distinct problem.
    """

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        lock: asyncio.Lock,
        root: Path | None = None,
        variants: list[str] | None = None,
    ) -> None:
        """Watch ``root`` (default: the worker's ``artifacts_dir``) for ``variants`` (default: those serving the
        worker's own model)."""
        root = root if root is not None else settings.artifacts_dir
        assert root is not None
        self.root = Path(root)
        self.variants = variants if variants is not None else pipeline.default_followers
        self.settings = settings
        self.pipeline = pipeline
        self.lock = lock
        self._refused: tuple[Path, int] | None = None  # (directory, manifest mtime) last refused
        self._last_problem: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.model_poll_interval_s)
            if not stop.is_set():
                await self.check()

    async def check(self) -> bool:
        """Look at ``LATEST`` once; True when a new version was swapped in."""
        try:
            latest = resolve_artifact_dir(self.root).resolve()
        except (ArtifactError, OSError) as exc:
            self._problem(f"cannot follow {self.root}: {exc}")
            return False
        if latest == self.serving.directory.resolve():
            self._last_problem = None
            return False
        stamp = (latest, _mtime_ns(latest / MANIFEST_FILE))
        if stamp == self._refused:
            return False
        try:
            artifacts: ModelArtifacts = await asyncio.to_thread(load_artifacts, latest)
            check_servable(artifacts, self.settings.ranker_compression)  # e.g. no student to serve distilled
        except (ArtifactError, OSError) as exc:
            self._refused = stamp
            for variant in self.variants:
                self.pipeline.metrics.model_load_failures.labels(variant).inc()
            log.error("not swapping to %s: %s (kept serving %s)", latest, exc, self.serving.version)
            return False
        async with self.lock:
            self.pipeline.use_model(artifacts, self.variants)
            del artifacts
            pause = settle_heap()
        self._refused = self._last_problem = None
        log.info(
            "%s now serving model %s from %s (heap settled in %.3f s)",
            ", ".join(self.variants),
            self.serving.version,
            latest,
            pause,
        )
        return True

    @property
    def serving(self) -> ModelArtifacts:
        """The version the watched variants serve now."""
        return self.pipeline.variants[self.variants[0]].model.artifacts

    def _problem(self, text: str) -> None:
        if text != self._last_problem:
            log.warning("%s; kept serving %s", text, self.serving.version)
            self._last_problem = text


def model_watchers(settings: Settings, pipeline: Pipeline, lock: asyncio.Lock) -> list[ModelWatcher]:
    """One watcher per model directory served: the worker's own, and each variant's (variants naming the same
    directory share a watcher, and swap together)."""
    by_root: dict[Path, list[str]] = {}
    for variant in settings.variants:
        root = own_model_dir(settings, variant)
        if root is not None:
            by_root.setdefault(root, []).append(variant.name)
    watchers = [ModelWatcher(settings, pipeline, lock)] if pipeline.default_followers else []
    watchers += [ModelWatcher(settings, pipeline, lock, root, names) for root, names in by_root.items()]
    return watchers


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def run_worker(settings: Settings) -> None:
    """Run one worker in the foreground until SIGTERM/SIGINT; then finish the batch, commit and leave.

    Raises
    :class:`~streamrec.stream.runtime.base.WorkerFailed` when the worker had to stop (a restore or delivery that failed
    for good): the CLI exits non-zero with its message. Before loading the model it checks, in at most
    ``KAFKA_STARTUP_WAIT_S`` (10 s), what would otherwise fail late or noisily: the artifact setting, the metrics
    port, and that Kafka accepts a connection (one line instead of the clients' endless reconnect log).
    """
    import errno

    from streamrec.stream.errors import StreamrecError
    from streamrec.stream.runtime.network import KAFKA_STARTUP_WAIT_S, require_free_port, wait_for_kafka

    if settings.artifacts_dir is None:
        raise StreamrecError(
            "no model artifacts given; pass --artifacts DIR (the --out of streamrec train) "
            "or set STREAMREC_ARTIFACTS_DIR"
        )
    metrics_port_fix = "stop what holds it, or pass --metrics-port N (0 turns /metrics off)"
    if settings.metrics_port:
        require_free_port(settings.metrics_host, settings.metrics_port, "the worker's /metrics", metrics_port_fix)
    wait_for_kafka(settings.bootstrap_servers, KAFKA_STARTUP_WAIT_S)
    pipeline, metrics = build_pipeline(settings)
    health = Health(metrics.ready)
    try:
        start_metrics_server(settings, metrics.registry, health)
    except OSError as exc:  # taken while the model loaded
        if exc.errno != errno.EADDRINUSE:
            raise
        where = f"{settings.metrics_port} on {settings.metrics_host}"
        raise StreamrecError(f"port {where} is already in use (the worker's /metrics); {metrics_port_fix}") from exc
    partitions = ensure_topics(settings)
    log.info("topics ready: %s", partitions)
    settle_heap()
    _run_then_abandon(_serve(settings, pipeline, metrics, health, partitions), CLEANUP_TIMEOUT_S)


#: How long the event loop's leftover tasks (a client's retries, faust's supervisors) get to end once the worker has
#: stopped; what is still running then is abandoned with the process.
CLEANUP_TIMEOUT_S = 2.0


def _run_then_abandon(main: Coroutine[Any, Any, None], cleanup_timeout_s: float) -> None:
    """``asyncio.run(main)``, except that the tasks left behind get ``cleanup_timeout_s`` to end after their
    cancellation instead of as long as they like: a library task that retries forever (faust restarts its agents
    and flushes its producer on stop) must not keep a stopped worker's process alive."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main)
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers, timeout=cleanup_timeout_s))
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), cleanup_timeout_s))
        except (TimeoutError, asyncio.CancelledError):
            pass
        finally:
            loop.close()


async def _serve(
    settings: Settings,
    pipeline: Pipeline,
    metrics: WorkerMetrics,
    health: Health,
    partitions: dict[str, int] | None = None,
) -> None:
    limit_repeats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig, stop)
    if settings.runtime == "faust":
        from streamrec.stream.runtime.faust_app import FaustWorker

        worker: BatchRuntime = FaustWorker(settings, pipeline, metrics, health)
    else:
        from streamrec.stream.runtime.kafka_loop import KafkaWorker

        worker = KafkaWorker(settings, pipeline, metrics, health)
    owners = GroupOwners(settings)
    health.read_path = ReadPath(
        pipeline.store,
        pipeline.catalog.title_of,
        n_partitions=(partitions or {}).get(settings.events_topic, settings.topic_partitions),
        owned=lambda: worker.restored_partitions,
        owner_of=owners.owner_of,
    )
    tasks = [
        asyncio.create_task(health.keep_ticking(stop)),
        asyncio.create_task(_exit_if_stop_takes_too_long(stop, settings.shutdown_timeout_s)),
    ]
    if settings.model_poll_interval_s > 0:
        for watcher in model_watchers(settings, pipeline, worker.batch_lock):
            tasks.append(asyncio.create_task(watcher.run(stop)))
    feeds: list[TopicFollower] = [CatalogFeed(settings, pipeline, worker.batch_lock)]
    if pipeline.deltas is not None:
        feeds.append(AggregatesFeed(settings, pipeline, worker.batch_lock))
    feed_tasks = []
    for feed in feeds:
        feed_task = asyncio.create_task(feed.run(stop))
        feed_task.add_done_callback(lambda task, name=feed.name: _feed_ended(name, task, worker, stop))
        feed_tasks.append(feed_task)
        health.problem(feed.name, f"reading the {feed.topic} topic")
    try:
        # Events wait for the catalog (availability must be known before the first recommendation) and for the
        # shared aggregates (a restarted worker serves the shop's trending, not its own from nothing).
        for feed in feeds:
            await _first_of(feed.caught_up.wait(), stop.wait())
            if stop.is_set():
                break
            health.resolved(feed.name)
        if not stop.is_set():
            await worker.run(stop)
    finally:
        stop.set()
        for feed_task in feed_tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):  # aiokafka's stop() can raise CancelledError
                await feed_task
        for task in tasks:
            task.cancel()
        health.read_path = None
        owners.close()
    if worker.failure is not None:
        raise worker.failure
    log.info("worker stopped")


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        log.warning("%s again: exiting now", sig.name)
        logging.shutdown()
        os._exit(128 + sig)
    log.info("%s: finishing the batch in flight, then leaving the group", sig.name)
    stop.set()


async def _exit_if_stop_takes_too_long(stop: asyncio.Event, timeout_s: float) -> None:
    """Once stopping begins, a thread ends the process if it is still running ``timeout_s`` later: a stop that
    waits on a dead broker, or an event loop that no longer turns, must not keep the process (and its partitions)
    hanging for its supervisor."""
    await stop.wait()

    def exit_now() -> None:
        log.error("the worker did not stop within %.0f s (shutdown_timeout_s); exiting", timeout_s)
        logging.shutdown()
        os._exit(WorkerFailed.exit_code)

    timer = threading.Timer(timeout_s, exit_now)
    timer.daemon = True
    timer.start()


def _feed_ended(name: str, task: asyncio.Task, worker: BatchRuntime, stop: asyncio.Event) -> None:
    """A feed only ends when the worker stops; ending otherwise, it would leave availability (the catalog) or the
    shop's aggregates stale."""
    if task.cancelled() or stop.is_set():
        return
    error = task.exception()
    reason = f"{type(error).__name__}: {error}" if error is not None else "it stopped"
    worker.fail(WorkerFailed(f"the {name} feed failed ({reason})"))
    stop.set()


async def _first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
