"""Which worker owns a partition of the events topic: the consumer group's description, read through the admin API
(the coordinator knows every member's host and assignment; a member knows only its own). Used by the read path to
send a caller to the right worker. The answer comes from a cache that a background thread refreshes when it is a
few seconds old, so a slow broker never holds up a request: a stale or missing owner only costs the caller one
more redirect.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

CACHE_S = 5.0


class GroupOwners:
    """``owner_of(partition)`` → ``host:port`` of the member that owns it (its HTTP port is assumed to be this
    worker's ``metrics_port``, as in a Deployment), or None when unknown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._owners: dict[int, str] = {}
        self._read_at = -CACHE_S
        self._lock = threading.Lock()
        self._admin: Any = None

    def owner_of(self, partition: int) -> str | None:
        with self._lock:
            if time.monotonic() - self._read_at > CACHE_S:
                self._read_at = time.monotonic()  # one refresh at a time
                threading.Thread(target=self._refresh, name="streamrec-group-owners", daemon=True).start()
            return self._owners.get(partition)

    def _refresh(self) -> None:
        try:
            owners = self._describe()
        except Exception as exc:  # the read path answers without an owner rather than failing
            log.warning("cannot describe consumer group %s: %s", self.settings.consumer_group, exc)
            owners = {}
        self._owners = owners  # one reference swap: readers see the old map or the new one

    def _describe(self) -> dict[int, str]:
        from kafka import KafkaAdminClient

        from streamrec.stream.runtime.security import kafka_python_options

        if self._admin is None:
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.settings.bootstrap_servers,
                client_id="streamrec-read-path",
                request_timeout_ms=5_000,
                **kafka_python_options(self.settings),
            )
        group = self._admin.describe_groups([self.settings.consumer_group]).get(self.settings.consumer_group, {})
        owners: dict[int, str] = {}
        for member in group.get("members", []):
            host = str(member.get("client_host", "")).lstrip("/")
            for topic, partitions in _assigned(member.get("member_assignment")):
                if topic == self.settings.events_topic and host:
                    for partition in partitions:
                        owners[int(partition)] = f"{host}:{self.settings.metrics_port}"
        return owners

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()


def _assigned(assignment: Any) -> Iterator[tuple[str, list[int]]]:
    """(topic, partitions) pairs of a decoded consumer assignment, whatever shape the client gave it."""
    if assignment is None:
        return
    if not isinstance(assignment, Mapping):
        assignment = getattr(assignment, "to_dict", lambda: {})()
    for entry in assignment.get("assigned_partitions", assignment.get("assignment", [])) or []:
        if isinstance(entry, Mapping):
            yield str(entry.get("topic")), list(entry.get("partitions", []))
        elif isinstance(entry, list | tuple) and len(entry) == 2:
            yield str(entry[0]), list(entry[1])
