"""Every common mistake with the command line ends in one line on stderr and a non-zero exit, without a traceback
and without waiting: each runs the installed ``streamrec`` script as a user would."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiokafka.errors
import kafka.errors
import orjson
import pytest
from pydantic import ValidationError

from streamrec.model.artifacts import write_latest
from streamrec.model.events import Event
from streamrec.stream.app.broker import EmbeddedBroker
from streamrec.stream.app.cli import describe_failure, main
from streamrec.stream.app.event_files import write_events_jsonl
from streamrec.stream.app.simulate import write_catalog_jsonl
from streamrec.stream.errors import StreamrecError, kafka_failure, settings_failure
from streamrec.stream.runtime.network import free_port, wait_for_kafka
from streamrec.stream.settings import Settings

STREAMREC = Path(sys.executable).with_name("streamrec")  # the installed script, as a user runs it
ERROR = "streamrec: error: "


def _clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the developer's own STREAMREC_* settings."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("STREAMREC_")}
    return {**env, **extra}


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STREAMREC), *args],
        env=env or _clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a failed run; fails the test unless stderr is exactly that."""
    assert result.returncode != 0, f"expected a failure, got exit 0:\n{result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith(ERROR), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def taken_port() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-inputs")
    garbage = bytes(range(256)) * 8  # not text, not UTF-8
    (root / "garbage.jsonl").write_bytes(garbage)
    (root / "garbage.csv").write_bytes(garbage)
    (root / "garbage.bin").write_bytes(garbage)
    (root / "notes.jsonl").write_text("hello\nworld\n")
    (root / "events.jsonl").write_text('{"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": 1795430000}\n')
    (root / "items.jsonl").write_text('{"item_id": "i1", "ts": 1795430000}\n')
    (root / "empty-artifacts").mkdir()
    return {path.name: path for path in root.iterdir()}


@dataclass
class Mistake:
    """One command line a user gets wrong, and what its error line must name."""

    args: list[str]
    expected: list[str]
    env: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None


def _mistakes(files: dict[str, Path], taken_port: int, dead: str) -> dict[str, Mistake]:
    events, garbage = str(files["events.jsonl"]), str(files["garbage.jsonl"])
    no_artifacts = str(files["empty-artifacts"])
    missing = str(files["events.jsonl"].with_name("missing.jsonl"))
    worker = ["worker", "--metrics-port", "0", "--bootstrap", dead]
    return {
        "worker with a dead broker": Mistake(
            [*worker, "--artifacts", no_artifacts, "--connect-timeout", "1"],
            [f"cannot reach Kafka at {dead}", "connection refused", "tried for 1 s", "--bootstrap"],
        ),
        "worker without --artifacts": Mistake(worker, ["no model artifacts given", "--artifacts"]),
        "worker with a missing artifact directory": Mistake(
            [*worker, "--artifacts", missing], ["artifact directory not found", "missing.jsonl"]
        ),
        "worker with the metrics port taken": Mistake(
            ["worker", "--metrics-port", str(taken_port), "--artifacts", no_artifacts, "--bootstrap", dead],
            [f"port {taken_port} on 127.0.0.1 is already in use", "--metrics-port"],
        ),
        "worker --log-level foo": Mistake(
            [*worker, "--log-level", "foo"], ["'--log-level'", "'foo' is not a log level"], exit_code=2
        ),
        "worker --metrics-port 70000": Mistake(
            ["worker", "--metrics-port", "70000"], ["'--metrics-port'"], exit_code=2
        ),
        "worker --runtime foo": Mistake(
            [*worker, "--runtime", "foo", "--artifacts", no_artifacts], ["--runtime='foo' is invalid", "kafka"]
        ),
        "worker --bootstrap without a port": Mistake(
            ["worker", "--bootstrap", "localhost:abc", "--artifacts", no_artifacts, "--metrics-port", "0"],
            ["'localhost:abc' is not HOST:PORT"],
        ),
        "bad STREAMREC_METRICS_PORT": Mistake(
            ["worker"], ["STREAMREC_METRICS_PORT='abc' is invalid"], env={"STREAMREC_METRICS_PORT": "abc"}
        ),
        "bad STREAMREC_EVENT_WEIGHTS": Mistake(
            ["settings"], ["STREAMREC_EVENT_WEIGHTS cannot be parsed"], env={"STREAMREC_EVENT_WEIGHTS": "{view: 1"}
        ),
        "forget a user id with a control character": Mistake(
            ["forget", "--user", "u\x07", "--bootstrap", dead], ["user id 'u\\x07' could never have been accepted"]
        ),
        "forget a padded user id": Mistake(["forget", "--user", " u1", "--bootstrap", dead], ["surrounding spaces"]),
        "forget with a dead broker": Mistake(
            ["forget", "--user", "u1", "--bootstrap", dead], [f"cannot reach Kafka at {dead}"]
        ),
        "train on a missing file": Mistake(
            ["train", "--events", missing, "--out", no_artifacts], ["event file not found", "missing.jsonl"]
        ),
        "train on a garbage file": Mistake(
            ["train", "--events", garbage, "--out", no_artifacts],
            ["garbage.jsonl holds no valid event", "invalid JSON"],
        ),
        "train on a binary CSV": Mistake(
            ["train", "--events", str(files["garbage.csv"]), "--out", no_artifacts], ["not a readable event file"]
        ),
        "train on text that is no event": Mistake(
            ["train", "--events", str(files["notes.jsonl"]), "--out", no_artifacts], ["holds no valid event"]
        ),
        "train --format foo": Mistake(
            ["train", "--events", events, "--out", no_artifacts, "--format", "foo"],
            ["'--format'", "'foo' is not an event file format"],
            exit_code=2,
        ),
        "train --epochs 0": Mistake(
            ["train", "--events", events, "--out", no_artifacts, "--epochs", "0"], ["'--epochs'"], exit_code=2
        ),
        "train --dim 3": Mistake(
            ["train", "--events", events, "--out", no_artifacts, "--dim", "3"], ["--dim 3 is odd"]
        ),
        "eval with missing artifacts": Mistake(
            ["eval", "--events", events, "--artifacts", missing], ["artifact directory not found"]
        ),
        "reindex with missing artifacts": Mistake(
            ["reindex", "--artifacts", missing], ["artifact directory not found"]
        ),
        "recontent with missing artifacts": Mistake(
            ["recontent", "--artifacts", missing, "--catalog", events], ["artifact directory not found"]
        ),
        "reblend with missing artifacts": Mistake(
            ["reblend", "--artifacts", missing, "--events", events], ["artifact directory not found"]
        ),
        "eval on a missing file": Mistake(
            ["eval", "--events", missing, "--artifacts", no_artifacts], ["event file not found"]
        ),
        "replay --rate 0": Mistake(
            ["replay", "--events", events, "--rate", "0"], ["'--rate'", "0 is not positive"], exit_code=2
        ),
        "replay to a dead broker": Mistake(
            ["replay", "--events", events, "--bootstrap", dead], [f"cannot reach Kafka at {dead}"]
        ),
        "replay of a file of unknown format": Mistake(
            ["replay", "--events", str(files["garbage.bin"]), "--bootstrap", dead], ["cannot tell the format"]
        ),
        "catalog to a dead broker": Mistake(
            ["catalog", "--items", str(files["items.jsonl"]), "--bootstrap", dead], [f"cannot reach Kafka at {dead}"]
        ),
        "catalog of a missing file": Mistake(["catalog", "--items", missing], ["catalog file not found"]),
        "simulate --users 0": Mistake(["simulate", "--out", missing, "--users", "0"], ["'--users'"], exit_code=2),
        "broker on a taken port": Mistake(
            ["broker", "--port", str(taken_port)], [f"port {taken_port} on 127.0.0.1 is already in use", "--port"]
        ),
        "demo with the metrics port taken": Mistake(
            ["demo", "--metrics-port", str(taken_port), "--workdir", str(files["empty-artifacts"].parent / "demo")],
            [f"port {taken_port} on 127.0.0.1 is already in use", "--metrics-port"],
        ),
        "an unknown command": Mistake(["serve"], ["no such command 'serve'"], exit_code=2),
    }


class _AnyFile(dict[str, Path]):
    def __missing__(self, name: str) -> Path:
        return Path(name)


MISTAKES = list(_mistakes(_AnyFile(), 0, "127.0.0.1:1"))  # the names only, for the test ids


# Loaded into every interpreter of the mistakes (PYTHONPATH): at exit it writes down which heavy libraries the
# command had imported, so the tests see that inputs are checked before torch and FAISS are loaded.
_IMPORT_PROBE = """
import atexit, os, sys

def _record():
    with open(os.environ["STREAMREC_TEST_IMPORTS"], "w") as out:
        out.write(" ".join(name for name in ("torch", "faiss") if name in sys.modules))

atexit.register(_record)
"""


@pytest.fixture(scope="module")
def mistakes(
    files: dict[str, Path], taken_port: int, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Mistake, subprocess.CompletedProcess, str]]:
    """Every mistake run once, a few at a time: each is a fresh interpreter, and they do not interfere. With each
    result, the heavy libraries the command had imported when it failed."""
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    probe = tmp_path_factory.mktemp("import-probe")
    (probe / "sitecustomize.py").write_text(_IMPORT_PROBE)

    def attempt(numbered: tuple[int, Mistake]) -> tuple[Mistake, subprocess.CompletedProcess, str]:
        n, mistake = numbered
        imports = probe / f"imports-{n}.txt"
        env = _clean_env(**mistake.env, PYTHONPATH=str(probe), STREAMREC_TEST_IMPORTS=str(imports))
        result = run_cli(*mistake.args, env=env)
        return mistake, result, imports.read_text() if imports.exists() else "?"

    table = _mistakes(files, taken_port, dead)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(table, pool.map(attempt, enumerate(table.values())), strict=True))


@pytest.mark.parametrize("name", MISTAKES)
def test_a_mistake_is_one_line_naming_the_problem(
    name: str, mistakes: dict[str, tuple[Mistake, subprocess.CompletedProcess, str]]
) -> None:
    mistake, result, heavy_imports = mistakes[name]
    line = error_line(result)
    for fragment in mistake.expected:
        assert fragment in line, line
    if mistake.exit_code is not None:
        assert result.returncode == mistake.exit_code, line
    assert heavy_imports == "", f"{name} failed only after importing {heavy_imports}"


def test_reindex_publishes_the_index_the_settings_ask_for(tmp_path: Path, trained_artifacts: Path) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts, root / trained_artifacts.name)
    write_latest(root, trained_artifacts.name)
    result = run_cli("reindex", "--artifacts", str(root), env=_clean_env(STREAMREC_TRAIN__INDEX_KIND="ivf"))
    assert result.returncode == 0, result.stderr
    latest = (root / "LATEST").read_text().strip()
    assert latest != trained_artifacts.name and f"wrote {root / latest}" in result.stdout
    manifest = orjson.loads((root / latest / "manifest.json").read_bytes())
    assert manifest["index"]["kind"] == "ivf" and manifest["derived_from"] == trained_artifacts.name
    # The simulated shop's 300 items are too few for ivfpq's codes: one line, nothing published.
    refused = run_cli("reindex", "--artifacts", str(root), env=_clean_env(STREAMREC_TRAIN__INDEX_KIND="ivfpq"))
    assert "needs at least 1,000 items" in error_line(refused)
    assert (root / "LATEST").read_text().strip() == latest


def test_recontent_publishes_a_content_projection_fitted_with_today_s_settings(
    tmp_path: Path, trained_artifacts: Path, shop: tuple[list[Event], list[dict]]
) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts, root / trained_artifacts.name)
    write_latest(root, trained_artifacts.name)
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in shop[1]))
    env = _clean_env(STREAMREC_TRAIN__CONTENT_ENCODER="hashed-64", STREAMREC_TRAIN__CONTENT_FIELD_VALUES="0")
    result = run_cli("recontent", "--artifacts", str(root), "--catalog", str(catalog), env=env)
    assert result.returncode == 0, result.stderr
    latest = (root / "LATEST").read_text().strip()
    assert latest != trained_artifacts.name and f"wrote {root / latest}" in result.stdout
    manifest = orjson.loads((root / latest / "manifest.json").read_bytes())
    assert manifest["derived_from"] == trained_artifacts.name
    assert manifest["content"]["encoder"] == "hashed-64" and manifest["content"]["field_values"] == 0
    assert manifest["train_config"]["content_encoder"] == "hashed-64"
    # A catalogue that describes none of the trained items: one line, nothing published.
    strangers = tmp_path / "strangers.jsonl"
    strangers.write_bytes(orjson.dumps({"item_id": "nobody-knows", "title": "x", "ts": 0}) + b"\n")
    refused = run_cli("recontent", "--artifacts", str(root), "--catalog", str(strangers), env=_clean_env())
    assert "describes 0 of the items the model was trained on" in error_line(refused) and refused.returncode == 1
    assert (root / "LATEST").read_text().strip() == latest


def test_reblend_publishes_a_new_blend_and_refuses_another_log(
    tmp_path: Path, trained_artifacts: Path, files: dict[str, Path], shop: tuple[list[Event], list[dict]]
) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts, root / trained_artifacts.name)
    write_latest(root, trained_artifacts.name)
    wrong = run_cli("reblend", "--artifacts", str(root), "--events", str(files["events.jsonl"]), env=_clean_env())
    assert "is not the event log model version" in error_line(wrong)
    assert (root / "LATEST").read_text().strip() == trained_artifacts.name

    trained_on = tmp_path / "shop.jsonl"
    trained_on.write_bytes(
        b"".join(
            orjson.dumps({"user_id": e.user_id, "item_id": e.item_id, "event_type": e.event_type.value, "ts": e.ts})
            + b"\n"
            for e in shop[0]
        )
    )
    result = run_cli("reblend", "--artifacts", str(root), "--events", str(trained_on), env=_clean_env())
    assert result.returncode == 0, result.stderr
    latest = (root / "LATEST").read_text().strip()
    manifest = orjson.loads((root / latest / "manifest.json").read_bytes())
    assert (
        manifest["derived_from"] == trained_artifacts.name
        and "ranked as served" in manifest["blend_validation"]["protocol"]
    )
    assert f"blend weight {manifest['blend_weight']:g}" in result.stdout


def test_debug_shows_the_traceback(files: dict[str, Path]) -> None:
    result = run_cli("--debug", "train", "--events", "missing.jsonl", "--out", str(files["empty-artifacts"]))
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "StreamrecError: event file not found: missing.jsonl" in result.stderr


def test_ctrl_c_exits_130_without_a_traceback(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def pressed_ctrl_c(bootstrap: str, timeout_s: float) -> None:
        raise KeyboardInterrupt  # as if pressed while the worker waits for Kafka

    monkeypatch.setattr("streamrec.stream.runtime.network.wait_for_kafka", pressed_ctrl_c)
    args = ["worker", "--artifacts", str(files["empty-artifacts"]), "--metrics-port", "0"]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 130
    assert capsys.readouterr().err == "streamrec: interrupted\n"


def test_the_kafka_check_is_bounded() -> None:
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StreamrecError, match=f"cannot reach Kafka at {dead} .*tried for 0.6 s"):
        wait_for_kafka(dead, timeout_s=0.6)
    assert time.monotonic() - started < 3


def test_kafka_client_failures_name_the_servers() -> None:
    bootstrap = "kafka-1:9093"
    cases: list[tuple[BaseException, str]] = [
        (kafka.errors.KafkaTimeoutError("Unable to bootstrap from kafka-1:9093"), "cannot reach Kafka at kafka-1:9093"),
        (kafka.errors.KafkaConnectionError("111 ECONNREFUSED"), "cannot reach Kafka at kafka-1:9093"),
        (aiokafka.errors.KafkaConnectionError("Unable to bootstrap"), "cannot reach Kafka at kafka-1:9093"),
        (aiokafka.errors.NoBrokersAvailable(), "cannot reach Kafka at kafka-1:9093"),
        (kafka.errors.SaslAuthenticationFailedError("bad password"), "refused the login"),
        (aiokafka.errors.SaslAuthenticationFailed(), "refused the login"),
        (kafka.errors.TopicAuthorizationFailedError(), "denied access"),
        (ssl.SSLCertVerificationError("certificate verify failed"), "TLS handshake with Kafka at kafka-1:9093"),
    ]
    for exc, expected in cases:
        failure = kafka_failure(exc, bootstrap)
        assert failure is not None, exc
        assert expected in str(failure)
        assert "\n" not in str(failure)
    try:  # a client that wraps the TLS error in its own
        try:
            raise ssl.SSLError("wrong version number")
        except ssl.SSLError as tls:
            raise kafka.errors.KafkaConnectionError("connection failed") from tls
    except kafka.errors.KafkaConnectionError as wrapped:
        assert "TLS handshake" in str(kafka_failure(wrapped, bootstrap))
    assert kafka_failure(ValueError("not Kafka"), bootstrap) is None
    # With security on, a bootstrap timeout after the connection check passed is a handshake the broker refused.
    timeout = kafka.errors.KafkaTimeoutError("Unable to bootstrap from kafka-1:9093")
    secured = str(kafka_failure(timeout, bootstrap, "SASL_SSL with SCRAM-SHA-512"))
    assert "could not complete its SASL_SSL with SCRAM-SHA-512 handshake" in secured
    assert "check the credentials" in secured and "cannot reach" not in secured


def test_settings_errors_name_the_option_or_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_TOP_K", "many")
    with pytest.raises(ValidationError) as from_env:
        Settings()
    assert "STREAMREC_TOP_K='many' is invalid" in str(settings_failure(from_env.value))
    monkeypatch.delenv("STREAMREC_TOP_K")
    with pytest.raises(ValidationError) as from_option:
        Settings(runtime="foo")
    assert "--runtime='foo' is invalid" in str(settings_failure(from_option.value, {"runtime": "--runtime"}))


def test_an_unexpected_error_stays_visible() -> None:
    try:
        raise KeyError("boom")
    except KeyError as exc:
        message, exit_code = describe_failure(exc)
    assert exit_code == 1
    assert message.startswith("unexpected KeyError: 'boom'; probably a bug: traceback in ")
    saved = Path(message.split("traceback in ")[1].split(",")[0])
    try:
        assert "Traceback" in saved.read_text() and "KeyError" in saved.read_text()
    finally:
        saved.unlink()


def _tansu_children(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children]


def _is_gone(pid: int) -> bool:
    """Exited: no longer in /proc, or a zombie nobody reaped yet (a container's init may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}


def _wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_broker_command(port: int) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [str(STREAMREC), "broker", "--port", str(port)], env=_clean_env(), stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert "broker listening on" in process.stdout.readline()
    children = _tansu_children(process.pid)
    assert len(children) == 1
    return process, children[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_broker_command_stops_tansu_on_a_signal(sig: signal.Signals) -> None:
    port = free_port()
    process, tansu = _start_broker_command(port)
    process.send_signal(sig)
    assert process.wait(timeout=15) == 0
    assert _wait_for(lambda: _is_gone(tansu), 5)
    assert not _port_open(port)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_tansu_dies_with_a_killed_broker_command() -> None:
    port = free_port()
    process, tansu = _start_broker_command(port)
    process.kill()
    process.wait(timeout=5)
    assert _wait_for(lambda: _is_gone(tansu), 5), "Tansu outlived the SIGKILLed streamrec broker"
    assert _wait_for(lambda: not _port_open(port), 5)


def test_the_embedded_broker_names_a_taken_port(taken_port: int) -> None:
    with pytest.raises(StreamrecError, match=f"port {taken_port} on 127.0.0.1 is already in use"):
        EmbeddedBroker(taken_port).start()


@pytest.fixture
def demo_workdir(tmp_path: Path, shop: tuple[list[Event], list[dict]], trained_artifacts: Path) -> Path:
    """A demo work directory as a first run leaves it, with the shared test model instead of a fresh training."""
    workdir = tmp_path / "demo"
    workdir.mkdir()
    write_events_jsonl(shop[0][:100], workdir / "train.jsonl")
    write_events_jsonl(shop[0][-2000:], workdir / "live.jsonl")
    write_catalog_jsonl(shop[1], workdir / "items.jsonl")
    shutil.copytree(trained_artifacts, workdir / "artifacts" / trained_artifacts.name)
    write_latest(workdir / "artifacts", trained_artifacts.name)
    return workdir


def test_the_demo_fails_loudly_when_its_worker_crashes_and_ignores_files_in_the_current_folder(
    demo_workdir: Path, tmp_path: Path
) -> None:
    version = demo_workdir / "artifacts" / (demo_workdir / "artifacts" / "LATEST").read_text().strip()
    (version / "item_ids.json").write_text('["tampered"]')  # the worker refuses a corrupt model
    here = tmp_path / "a folder with look-alike modules"
    here.mkdir()
    for shadow in ("model.py", "index.py", "stream.py"):
        (here / shadow).write_text('raise SystemExit("the current folder shadowed streamrec")\n')

    result = run_cli(
        "demo", "--workdir", str(demo_workdir), "--metrics-port", "0", "--events", "10", cwd=here, timeout_s=120
    )

    line = error_line(result)
    assert "the demo's worker exited with code 1 before it was ready" in line
    assert "item_ids.json is corrupt" in line  # the worker got as far as the model: nothing was shadowed
    assert "worker.log" in line
