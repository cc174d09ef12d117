"""Hot swapping a model in a running worker, without a broker."""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import weakref
from pathlib import Path

import orjson
import pytest

from streamrec.model.artifacts import LATEST_FILE, MANIFEST_FILE, load_artifacts, write_latest
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.runtime import worker as worker_module
from streamrec.stream.runtime.worker import ModelWatcher, settle_heap
from streamrec.stream.settings import Settings


def _copy_version(source: Path, root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(source, target)
    manifest = orjson.loads((target / MANIFEST_FILE).read_bytes())
    manifest["version"] = name
    (target / MANIFEST_FILE).write_bytes(orjson.dumps(manifest))
    return target


async def _watch_until(settings: Settings, pipeline: Pipeline, done, timeout_s: float = 20.0) -> None:
    stop = asyncio.Event()
    watcher = asyncio.create_task(ModelWatcher(settings, pipeline, asyncio.Lock()).run(stop))
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


def _watcher_over(trained_artifacts: Path, tmp_path: Path) -> tuple[Path, ModelWatcher]:
    root = tmp_path / "models"
    root.mkdir()
    _copy_version(trained_artifacts, root, "v1")
    write_latest(root, "v1")
    settings = Settings(artifacts_dir=root, model_poll_interval_s=0.05)
    return root, ModelWatcher(settings, Pipeline(settings, load_artifacts(root)), asyncio.Lock())


def test_a_version_is_swapped_in_once_even_when_its_directory_is_renamed(
    trained_artifacts: Path, tmp_path: Path
) -> None:
    root, watcher = _watcher_over(trained_artifacts, tmp_path)
    shutil.copytree(root / "v1", root / "v1-copy")  # its manifest still says v1
    write_latest(root, "v1-copy")
    assert asyncio.run(watcher.check()) is True
    assert [asyncio.run(watcher.check()) for _ in range(3)] == [False, False, False]
    assert watcher.pipeline.artifacts.directory.name == "v1-copy"


def test_a_refused_version_is_not_loaded_again_until_it_changes(
    trained_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, watcher = _watcher_over(trained_artifacts, tmp_path)
    broken = _copy_version(root / "v1", root, "v2")
    (broken / "item_ids.json").write_bytes(b'["tampered"]')
    write_latest(root, "v2")
    loads: list[Path] = []
    real_load = worker_module.load_artifacts
    monkeypatch.setattr(worker_module, "load_artifacts", lambda path: loads.append(path) or real_load(path))
    for _ in range(4):
        assert asyncio.run(watcher.check()) is False
    assert len(loads) == 1  # hashed once, not on every poll
    shutil.rmtree(broken)
    _copy_version(root / "v1", root, "v2")  # fixed in place: a new manifest
    assert asyncio.run(watcher.check()) is True
    assert watcher.pipeline.artifacts.version == "v2"


def test_a_bad_latest_is_logged_once(trained_artifacts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, watcher = _watcher_over(trained_artifacts, tmp_path)
    (root / LATEST_FILE).write_text("no-such-version\n")
    with caplog.at_level(logging.WARNING, logger="streamrec.stream.runtime.worker"):
        for _ in range(5):
            asyncio.run(watcher.check())
    warnings = [r for r in caplog.records if "no-such-version" in r.getMessage()]
    assert len(warnings) == 1
    assert watcher.pipeline.artifacts.version == "v1"


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
