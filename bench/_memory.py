"""Reading this process's memory, for the benches that report it."""

from __future__ import annotations

import resource


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
