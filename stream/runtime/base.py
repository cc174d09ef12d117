"""What every runtime shares: the pipeline it drives, the batch lock, and the bookkeeping after a batch."""

from __future__ import annotations

import asyncio
import time

from stream.metrics import WorkerMetrics
from stream.pipeline import BatchResult, Pipeline
from stream.settings import Settings


class BatchRuntime:
    """Base of the runtimes. ``batch_lock`` is held while a batch is processed, so rebalances and model swaps
    happen between batches, never inside one."""

    def __init__(self, settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.batch_lock = asyncio.Lock()
        self.batches_processed = 0

    def output_acknowledged(self, result: BatchResult, produce_seconds: float) -> None:
        """Record a batch whose every output message the broker has acknowledged."""
        if self.metrics:
            self.metrics.stage_seconds.labels("produce").observe(produce_seconds)
            self.metrics.observe_published(result.published, time.time())

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, process and publish until ``stop`` is set."""
        raise NotImplementedError
