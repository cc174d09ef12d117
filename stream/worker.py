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
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from model.artifacts import ArtifactError, ModelArtifacts, load_artifacts, resolve_artifact_dir
from stream.metrics import WorkerMetrics
from stream.pipeline import Pipeline
from stream.runtime.base import BatchRuntime
from stream.runtime.catalog_feed import CatalogFeed
from stream.settings import Settings
from stream.topics import ensure_topics

log = logging.getLogger(__name__)


def start_metrics_server(settings: Settings, registry: CollectorRegistry) -> None:
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)


def build_pipeline(settings: Settings) -> tuple[Pipeline, WorkerMetrics]:
    if settings.artifacts_dir is None:
        raise ValueError("no model artifacts: pass --artifacts DIR or set STREAMREC_ARTIFACTS_DIR")
    torch.set_num_threads(settings.torch_threads)
    artifacts = load_artifacts(settings.artifacts_dir)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = WorkerMetrics(registry)
    pipeline = Pipeline(settings, artifacts, metrics)
    log.info("serving model %s (%d items, dim %d)", artifacts.version, len(artifacts.item_ids), artifacts.dim)
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


async def watch_model(settings: Settings, pipeline: Pipeline, lock: asyncio.Lock, stop: asyncio.Event) -> None:
    """Swap in a new artifact version when ``LATEST`` changes; a broken new version is refused and logged."""
    assert settings.artifacts_dir is not None
    directory = Path(settings.artifacts_dir)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.model_poll_interval_s)
        if stop.is_set():
            return
        try:
            latest = resolve_artifact_dir(directory)
        except (ArtifactError, OSError):
            continue
        if latest.name == pipeline.artifacts.version:
            continue
        try:
            artifacts: ModelArtifacts = await asyncio.to_thread(load_artifacts, latest)
        except (ArtifactError, OSError) as exc:
            log.error("not swapping to %s: %s", latest, exc)
            continue
        async with lock:
            pipeline.use_model(artifacts)
            del artifacts
            pause = settle_heap()
        log.info("now serving model %s (heap settled in %.3f s)", pipeline.artifacts.version, pause)


def run_worker(settings: Settings) -> None:
    """Run one worker in the foreground until SIGTERM/SIGINT; then finish the batch, commit and leave."""
    pipeline, metrics = build_pipeline(settings)
    start_metrics_server(settings, metrics.registry)
    partitions = ensure_topics(settings)
    log.info("topics ready: %s", partitions)
    settle_heap()
    asyncio.run(_serve(settings, pipeline, metrics))


async def _serve(settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.runtime == "faust":
        from stream.runtime.faust_app import FaustWorker

        worker: BatchRuntime = FaustWorker(settings, pipeline, metrics)
    else:
        from stream.runtime.kafka_loop import KafkaWorker

        worker = KafkaWorker(settings, pipeline, metrics)
    watcher = None
    if settings.model_poll_interval_s > 0:
        watcher = asyncio.create_task(watch_model(settings, pipeline, worker.batch_lock, stop))
    catalog = CatalogFeed(settings, pipeline, worker.batch_lock)
    catalog_task = asyncio.create_task(catalog.run(stop))
    try:
        # Events wait for the catalog: availability must be known before the first recommendation.
        await _first_of(catalog.caught_up.wait(), stop.wait())
        if not stop.is_set():
            await worker.run(stop)
    finally:
        stop.set()
        await catalog_task
        if watcher is not None:
            await watcher
    log.info("worker stopped")


async def _first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
