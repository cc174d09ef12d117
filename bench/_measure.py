"""What the scale benches share: reading this process's memory, and writing a report with when and where."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def rss_mib() -> float:
    """Resident memory now (MiB)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """The most resident memory this process has held (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_report(path: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Write ``body`` as JSON to ``path``, after the time of the run and the machine it ran on; returns it all."""
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        **body,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return report


def streamrec(*args: str) -> list[str]:
    """The command line of ``streamrec ARGS`` in this interpreter."""
    return [sys.executable, "-m", "streamrec.stream.app.cli", *args]


def run(command: list[str], log: Path, env: dict[str, str]) -> float:
    """Run ``command`` with its output in ``log``; its wall seconds, or exit with the log's tail if it fails."""
    started = time.perf_counter()
    with log.open("wb") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise SystemExit(f"{' '.join(command[2:4])} failed ({code}); see {log}: {tail}")
    return round(time.perf_counter() - started, 1)
