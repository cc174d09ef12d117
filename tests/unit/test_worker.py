"""Hot swapping a model in a running worker, without a broker."""

from __future__ import annotations

import asyncio
import gc
import shutil
import weakref
from pathlib import Path

import orjson

from model.artifacts import MANIFEST_FILE, load_artifacts, write_latest
from stream.pipeline import Pipeline
from stream.settings import Settings
from stream.worker import settle_heap, watch_model


def _copy_version(source: Path, root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(source, target)
    manifest = orjson.loads((target / MANIFEST_FILE).read_bytes())
    manifest["version"] = name
    (target / MANIFEST_FILE).write_bytes(orjson.dumps(manifest))
    return target


async def _watch_until(settings: Settings, pipeline: Pipeline, done, timeout_s: float = 20.0) -> None:
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_model(settings, pipeline, asyncio.Lock(), stop))
    try:
        async with asyncio.timeout(timeout_s):
            while not done():
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await watcher


def test_a_new_version_is_swapped_in_and_a_corrupt_one_refused(trained_artifacts: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    first = _copy_version(trained_artifacts, root, "v1")
    write_latest(root, "v1")
    settings = Settings(artifacts_dir=root, model_poll_interval_s=0.05)
    pipeline = Pipeline(settings, load_artifacts(root))
    assert pipeline.artifacts.version == "v1"

    _copy_version(first, root, "v2")
    write_latest(root, "v2")
    asyncio.run(_watch_until(settings, pipeline, lambda: pipeline.artifacts.version == "v2"))
    assert pipeline.artifacts.version == "v2"

    broken = _copy_version(first, root, "v3")
    (broken / "item_ids.json").write_bytes(b'["tampered"]')
    write_latest(root, "v3")
    checks = iter(range(25))
    asyncio.run(_watch_until(settings, pipeline, lambda: next(checks, None) is None))  # ~0.5 s of polling
    assert pipeline.artifacts.version == "v2"  # the checksum mismatch was refused; the old model keeps serving


def test_settling_the_heap_collects_old_cycles_and_freezes_the_survivors() -> None:
    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    survivor = Node()
    cycle = Node()
    cycle.other = Node()
    cycle.other.other = cycle
    collected = weakref.ref(cycle)
    gc.freeze()  # as after an earlier settle: the cycle is frozen, so an ordinary collection cannot free it
    del cycle
    try:
        gc.collect()
        assert collected() is not None
        settle_heap()
        assert collected() is None  # unfrozen and collected
        assert gc.get_freeze_count() > 0
        assert not any(obj is survivor for obj in gc.get_objects())  # frozen objects are not tracked for passes
    finally:
        gc.unfreeze()
