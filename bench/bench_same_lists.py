#!/usr/bin/env python
"""Do two versions publish the same recommendations? A check for changes meant to make the pipeline faster only.

Usage::

    python bench/bench_same_lists.py --base REV [--events 6000]

Both versions (``REV``, checked out as ``bench_versions.py`` does, and the working tree) replay the same simulated
shop events (the model of ``bench_end_to_end.py``) through a fresh :class:`Pipeline` at a fixed clock and seed,
under several settings (defaults; diversity, a category cap, heavy exploration, an impression cap and a deny list;
a slow cold-start blend with a category cap) and in 500-event and 5-event batches. Every published recommendation
(items, scores, sources, reasons, exploration marks; not the wall-clock ``generated_at``) and a digest of every
state update are compared. Prints the number of messages compared and the first difference, if any; exits 1 when
the versions differ.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_versions import checkout, environment, short_revision

CONFIGS = {
    "default": {},
    "busy": {
        "diversity_weight": 0.3,
        "max_per_category": 3,
        "exploration_share": 0.2,
        "max_impressions_without_engagement": 3,
        "deny_items": ["i10", "i20", "i30"],
    },
    "cold": {"cold_start_prior_events": 5.0, "max_per_category": 2},
}
CLOCK = 1_700_000_000.0


def replay(output: Path, events: int) -> None:
    """Write every message this process's streamrec publishes for the replay to ``output``, one per line."""
    import orjson
    import torch
    from bench_end_to_end import prepare
    from bench_pipeline import records

    from streamrec.model.artifacts import load_artifacts
    from streamrec.stream.pipeline import Pipeline
    from streamrec.stream.settings import Settings

    torch.set_num_threads(1)
    artifact_root, rows = prepare()
    with output.open("w") as out:
        for name, knobs in CONFIGS.items():
            for batch in (500, 5):
                pipeline = Pipeline(Settings(torch_threads=1, random_seed=3, **knobs), load_artifacts(artifact_root))
                replayed = records(rows, 0, events if batch == 500 else events // 4, CLOCK)
                for begin in range(0, len(replayed), batch):
                    result = pipeline.process(replayed[begin : begin + batch], now=CLOCK)
                    for message in result.recommendations:
                        value = orjson.loads(message.value)
                        value.pop("generated_at", None)
                        out.write(f"{name} {batch} {orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()}\n")
                    for update in result.state_updates:
                        out.write(f"{name} {batch} state {hashlib.sha256(update.value or b'').hexdigest()}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="the version to compare with (commit, tag or branch)")
    parser.add_argument(
        "--events", type=int, default=6000, help="events replayed in 500-event batches (a quarter in 5)"
    )
    parser.add_argument("--replay-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replay_to is not None:
        replay(args.replay_to, args.events)
        return 0
    if not args.base:
        parser.error("--base is required")
    base = short_revision(args.base)
    with checkout(args.base) as shim, tempfile.TemporaryDirectory() as work:
        outputs = {}
        for version, path in (("base", shim), ("current", None)):
            outputs[version] = Path(work) / f"{version}.txt"
            command = [sys.executable, __file__, "--events", str(args.events), "--replay-to", str(outputs[version])]
            # A fixed hash seed: the replay partitions users by Python's string hash.
            env = environment(path) | {"PYTHONHASHSEED": "0"}
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise SystemExit(f"the {version} replay failed: {done.stderr.strip().splitlines()[-1:]}")
        before = outputs["base"].read_text().splitlines()
        after = outputs["current"].read_text().splitlines()
    lists = sum(1 for line in before if " state " not in line)
    for number, (old, new) in enumerate(zip(before, after, strict=False)):
        if old != new:
            print(f"message {number} differs:\n  {base}: {old[:400]}\n  current: {new[:400]}")
            return 1
    if len(before) != len(after):
        print(f"{base} published {len(before)} messages, the working tree {len(after)}")
        return 1
    print(
        f"identical: {lists:,} recommendations and {len(before) - lists:,} state updates "
        f"({len(CONFIGS)} settings x 2 batch sizes) from {base} and the working tree"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
