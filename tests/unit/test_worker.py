"""Hot swapping a model in a running worker, without a broker."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson

from model.artifacts import MANIFEST_FILE, load_artifacts, write_latest
from stream.pipeline import Pipeline
from stream.settings import Settings
from stream.worker import watch_model


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
