#!/usr/bin/env python
"""Time of a training step on a dataset's real batches: this checkout against another revision, interleaved.

Usage::

    python bench/bench_training_step.py --base REV [--dataset yelp] [--batches 30] [--rounds 3] [--threads 2]

Each round runs this checkout and ``--base`` (a temporary git worktree, as ``bench_versions.py`` does) one after
the other, each in its own process: the dataset's first ``--batches`` training batches (the default configuration,
seed 0), one pass to warm up, one timed pass of forward, backward and optimizer step. Alternating the two versions
round after round cancels most of the drift of a shared machine, whose speed can change by a third within hours;
the medians of the rounds are reported, with every round's figure.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _measure import write_report
from bench_versions import checkout, current_version, environment, short_revision

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DATASETS = {
    "beauty": DATA / "amazon-beauty" / "Beauty.txt",
    "sports": DATA / "amazon-sports" / "Sports_and_Outdoors.txt",
    "yelp": DATA / "yelp" / "Yelp.txt",
}


def time_batches(dataset: str, n_batches: int, threads: int) -> float:
    """Milliseconds per training batch of the loaded ``streamrec`` on ``dataset``'s first ``n_batches`` batches."""
    import numpy as np
    import torch

    from streamrec.model import train
    from streamrec.model.config import TrainConfig
    from streamrec.model.datasets import detect_format, load_dataset
    from streamrec.model.ranker import SequenceRanker
    from streamrec.model.softmax import softmax_for
    from streamrec.model.splits import leave_one_out

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    path = DATASETS[dataset]
    log = load_dataset(path, detect_format(path))
    config = TrainConfig()
    item_ids = train.build_vocabulary(log)
    split = leave_one_out(log, {item: row for row, item in enumerate(item_ids)})
    windows = train.training_windows(split, config)
    model = SequenceRanker(train.ranker_config(config, len(item_ids)))
    softmax = softmax_for(config, windows.target_counts(len(item_ids)), config.seed)
    every_batch = train.window_batches
    train.window_batches = lambda lengths, size, rng: every_batch(lengths, size, rng)[:n_batches]  # the first few
    trainer = train._Trainer(model, windows, config, softmax)
    trainer.epoch(0, np.random.default_rng(0), False)  # warm-up
    started = time.perf_counter()
    trainer.epoch(1, np.random.default_rng(0), False)
    return (time.perf_counter() - started) / n_batches * 1000


def child_ms(shim: Path | None, args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--child", "--dataset", args.dataset]
    command += ["--batches", str(args.batches), "--threads", str(args.threads)]
    done = subprocess.run(command, env=environment(shim), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"the timing run failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="the revision to compare with (required)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="yelp")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not DATASETS[args.dataset].exists():
        raise SystemExit(f"{DATASETS[args.dataset]} not found: the datasets live in ../shared/data")
    if args.child:
        print(round(time_batches(args.dataset, args.batches, args.threads), 1))
        return
    if args.base is None:
        raise SystemExit("pass --base REV, the revision to compare with")
    this, base = current_version(), short_revision(args.base)
    rounds: dict[str, list[float]] = {this: [], base: []}
    with checkout(args.base) as shim:
        for number in range(1, args.rounds + 1):
            rounds[this].append(child_ms(None, args))
            rounds[base].append(child_ms(shim, args))
            print(f"round {number}: {this} {rounds[this][-1]:.0f} ms, {base} {rounds[base][-1]:.0f} ms per batch")
    medians = {version: statistics.median(times) for version, times in rounds.items()}
    change = medians[this] / medians[base] - 1
    print(f"median ms per batch: {this} {medians[this]:.0f}, {base} {medians[base]:.0f} ({change:+.0%})")
    output = REPO / "bench" / "results" / f"training_step_{args.dataset}.json"
    write_report(output, {"dataset": args.dataset, "batches": args.batches, "threads": args.threads,
                          "ms_per_batch": rounds, "median_ms_per_batch": medians})  # fmt: skip
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
