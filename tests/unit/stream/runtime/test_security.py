"""Kafka TLS/SASL settings and the client options built from them: what each client library gets, where secrets
come from, that they never show up in logs, reprs or ``streamrec settings``, and that bad combinations are refused
with one clear error."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from faust.types.auth import AuthProtocol
from pydantic import ValidationError
from typer.testing import CliRunner

from streamrec.stream.runtime.network import free_port
from streamrec.stream.runtime.security import (
    KafkaSecurityError,
    aiokafka_options,
    faust_credentials,
    kafka_python_options,
)
from streamrec.stream.runtime.topics import required_topics
from streamrec.stream.settings import Settings
from tests.certificates import CertificateSet, encrypted_copy, make_certificates, openssl_unavailable_reason
from tests.paths import REPO

PASSWORD = "s3cr3t-Pa55word-never-shown"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    reason = openssl_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "sasl-password"
    path.write_text(PASSWORD + "\n")  # as `echo` or a Kubernetes Secret written by hand leaves it
    return path


def test_plaintext_by_default() -> None:
    settings = Settings()
    assert aiokafka_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert kafka_python_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(settings) is None


def test_tls_with_a_client_certificate(certs: CertificateSet) -> None:
    settings = Settings(
        security_protocol="SSL",
        ssl_cafile=certs.ca,
        ssl_certfile=certs.client_cert,
        ssl_keyfile=certs.client_key,
    )
    aio = aiokafka_options(settings)
    assert set(aio) == {"security_protocol", "ssl_context"}
    context = aio["ssl_context"]
    assert aio["security_protocol"] == "SSL"
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [cert["subject"] for cert in context.get_ca_certs()] == [((("commonName", "streamrec test CA"),),)]

    kp = kafka_python_options(settings)
    assert {k: v for k, v in kp.items() if k != "ssl_password"} == {
        "security_protocol": "SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": str(certs.ca),
        "ssl_certfile": str(certs.client_cert),
        "ssl_keyfile": str(certs.client_key),
    }
    # kafka-python builds its context exactly like this from those options.
    ssl.create_default_context(cafile=kp["ssl_cafile"]).load_cert_chain(
        kp["ssl_certfile"], kp["ssl_keyfile"], password=kp["ssl_password"]
    )

    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol is AuthProtocol.SSL and credentials.context.verify_mode == ssl.CERT_REQUIRED


def test_host_name_check_can_be_turned_off_but_the_chain_is_still_verified(certs: CertificateSet) -> None:
    settings = Settings(security_protocol="SSL", ssl_cafile=certs.ca, ssl_check_hostname=False)
    context = aiokafka_options(settings)["ssl_context"]
    assert not context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert kafka_python_options(settings)["ssl_check_hostname"] is False


def test_encrypted_private_key_password_from_a_file(certs: CertificateSet, tmp_path: Path) -> None:
    key = encrypted_copy(certs.client_key, "key-pass", tmp_path / "client-encrypted.key")
    base = {"security_protocol": "SSL", "ssl_cafile": certs.ca, "ssl_certfile": certs.client_cert, "ssl_keyfile": key}
    (tmp_path / "key-password").write_text("key-pass\n")
    settings = Settings(**base, ssl_key_password_file=tmp_path / "key-password")
    assert isinstance(aiokafka_options(settings)["ssl_context"], ssl.SSLContext)
    assert kafka_python_options(settings)["ssl_password"]() == "key-pass"

    # No password: a clear error instead of OpenSSL prompting on a terminal the worker does not have.
    with pytest.raises(KafkaSecurityError, match="is encrypted: set STREAMREC_SSL_KEY_PASSWORD_FILE"):
        aiokafka_options(Settings(**base))
    with pytest.raises(KafkaSecurityError, match="wrong key password"):
        aiokafka_options(Settings(**base, ssl_key_password="not-it"))


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_PLAINTEXT", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512")],
)
def test_sasl_with_user_and_password(protocol: str, mechanism: str, certs: CertificateSet) -> None:
    tls = {"ssl_cafile": certs.ca} if protocol == "SASL_SSL" else {}
    settings = Settings(
        security_protocol=protocol, sasl_mechanism=mechanism, sasl_username="alice", sasl_password=PASSWORD, **tls
    )
    aio = aiokafka_options(settings)
    assert aio["security_protocol"] == protocol and aio["sasl_mechanism"] == mechanism
    assert aio["sasl_plain_username"] == "alice" and aio["sasl_plain_password"] == PASSWORD
    assert ("ssl_context" in aio) == (protocol == "SASL_SSL")

    kp = kafka_python_options(settings)
    assert kp["sasl_mechanism"] == mechanism
    assert kp["sasl_plain_username"] == "alice" and kp["sasl_plain_password"] == PASSWORD
    assert kp.get("ssl_cafile") == (str(certs.ca) if tls else None)

    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol is AuthProtocol(protocol)
    assert credentials.mechanism.value == mechanism
    assert (credentials.username, credentials.password) == ("alice", PASSWORD)


def test_sasl_password_from_the_environment_or_a_mounted_file(
    monkeypatch: pytest.MonkeyPatch, password_file: Path
) -> None:
    monkeypatch.setenv("STREAMREC_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("STREAMREC_SASL_USERNAME", "alice")
    monkeypatch.setenv("STREAMREC_SASL_PASSWORD", PASSWORD)
    assert aiokafka_options(Settings())["sasl_plain_password"] == PASSWORD

    monkeypatch.delenv("STREAMREC_SASL_PASSWORD")
    monkeypatch.setenv("STREAMREC_SASL_PASSWORD_FILE", str(password_file))
    settings = Settings()
    assert kafka_python_options(settings)["sasl_plain_password"] == PASSWORD  # the trailing newline is not part
    password_file.write_text("rotated\n")  # the secret was rotated: the next client gets the new one
    assert aiokafka_options(settings)["sasl_plain_password"] == "rotated"


def test_oauthbearer_token_file_is_read_on_every_request(tmp_path: Path, certs: CertificateSet) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first.token.value\n")
    settings = Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_file=token_file,
        ssl_cafile=certs.ca,
    )
    aio = aiokafka_options(settings)
    kp = kafka_python_options(settings)
    assert aio["sasl_mechanism"] == kp["sasl_mechanism"] == "OAUTHBEARER"
    assert "sasl_plain_password" not in aio and "sasl_plain_password" not in kp
    assert asyncio.run(aio["sasl_oauth_token_provider"].token()) == "first.token.value"
    assert kp["sasl_oauth_token_provider"].token() == "first.token.value"
    token_file.write_text("refreshed.token.value")  # a sidecar refreshed it
    assert asyncio.run(aio["sasl_oauth_token_provider"].token()) == "refreshed.token.value"
    assert kp["sasl_oauth_token_provider"].token() == "refreshed.token.value"

    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.OAuthCredentials)
    assert credentials.protocol is AuthProtocol.SASL_SSL
    token_file.write_text("")
    with pytest.raises(KafkaSecurityError, match="is empty"):
        kp["sasl_oauth_token_provider"].token()


def test_secrets_never_appear_in_reprs_dumps_or_logs(
    password_file: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline = Settings(security_protocol="SASL_PLAINTEXT", sasl_username="alice", sasl_password=PASSWORD)
    from_file = Settings(security_protocol="SASL_PLAINTEXT", sasl_username="alice", sasl_password_file=password_file)
    for settings in (inline, from_file):
        assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
        assert PASSWORD not in str(settings.model_dump()) and PASSWORD not in settings.model_dump_json()
        options = kafka_python_options(settings)
        assert PASSWORD not in repr(options) and PASSWORD not in str(options)
        assert PASSWORD not in repr(faust_credentials(settings))

    # kafka-python's admin client logs its whole configuration at DEBUG: the password must not be in it.
    caplog.set_level(logging.DEBUG)
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaTimeoutError

    with pytest.raises(KafkaTimeoutError):  # nothing listens there: it gives up after the bootstrap timeout
        KafkaAdminClient(
            bootstrap_servers=f"127.0.0.1:{free_port()}", bootstrap_timeout_ms=300, **kafka_python_options(inline)
        )
    assert "Starting KafkaAdminClient with configuration" in caplog.text
    assert "sasl_plain_password" in caplog.text and PASSWORD not in caplog.text

    # A validation error quotes no input, so not the password either.
    with pytest.raises(ValidationError) as refused:
        Settings(security_protocol="SASL_PLAINTEXT", sasl_password=PASSWORD, sasl_password_file=password_file)
    assert PASSWORD not in str(refused.value)

    # `streamrec settings` prints every setting, secrets masked.
    from streamrec.stream.app.cli import app

    for name in list(os.environ):
        if name.startswith("STREAMREC_"):
            monkeypatch.delenv(name)
    env = {"STREAMREC_SECURITY_PROTOCOL": "SASL_SSL", "STREAMREC_SASL_USERNAME": "alice"}
    printed = CliRunner().invoke(app, ["settings"], env={**env, "STREAMREC_SASL_PASSWORD": PASSWORD})
    assert printed.exit_code == 0, printed.output
    assert PASSWORD not in printed.output
    assert "STREAMREC_SASL_PASSWORD=**********" in printed.output
    assert "STREAMREC_SASL_USERNAME=alice" in printed.output


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "SASL_SSL with PLAIN needs sasl_username"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "a"},
            "needs sasl_password or sasl_password_file",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "a", "sasl_password": "p", "password_file": 1},
            "sasl_password given both inline and as sasl_password_file",
        ),
        ({"sasl_username": "a", "sasl_password": "p"}, "security_protocol PLAINTEXT does not use SASL"),
        ({"security_protocol": "SASL_PLAINTEXT", "ca": 1}, "security_protocol SASL_PLAINTEXT does not use TLS"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "OAUTHBEARER"},
            "OAUTHBEARER needs sasl_oauth_token_file",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "token_file": 1, "sasl_username": "a"},
            "sasl_username set but OAUTHBEARER authenticates with a token only",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "a", "sasl_password": "p", "token_file": 1},
            "sasl_oauth_token_file set but sasl_mechanism is PLAIN",
        ),
        ({"security_protocol": "SSL", "ssl_keyfile": "KEY"}, "ssl_keyfile set without ssl_certfile"),
        (
            {
                "security_protocol": "SSL",
                "ssl_certfile": "KEY",
                "ssl_key_password": "p",
                "ssl_key_password_file": "KEY",
            },
            "ssl_key_password given both inline and as ssl_key_password_file",
        ),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "ssl_cafile: cannot read /nonexistent"),
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "a", "sasl_password_file": "/nonexistent/pw"},
            "sasl_password_file: cannot read /nonexistent/pw: No such file or directory",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "a", "sasl_password_file": "EMPTY"},
            "sasl_password_file: .* is empty",
        ),
        ({"security_protocol": "SSL", "ssl_cafile": "DIR"}, "ssl_cafile: cannot read .*: Is a directory"),
    ],
)
def test_bad_combinations_are_refused_with_one_clear_error(settings: dict, message: str, tmp_path: Path) -> None:
    key = tmp_path / "some.key"
    key.write_text("not really a key")
    (tmp_path / "empty").write_text("\n")
    placeholders = {"KEY": key, "EMPTY": tmp_path / "empty", "DIR": tmp_path}
    values = {name: placeholders.get(value, value) for name, value in settings.items()}
    if values.pop("password_file", None):
        values["sasl_password_file"] = key
    if values.pop("token_file", None):
        values["sasl_oauth_token_file"] = key
    if values.pop("ca", None):
        values["ssl_cafile"] = key
    with pytest.raises(ValidationError) as refused:
        Settings(**values)
    assert refused.value.error_count() == 1
    text = str(refused.value.errors()[0]["msg"])
    assert text.startswith("Value error, Kafka security settings: ")
    assert re.search(message, text), text


def test_create_topics_script_passes_the_client_properties_file(tmp_path: Path) -> None:
    """``deploy/create-topics.sh`` hands ``COMMAND_CONFIG`` to every kafka-topics call (a real run against a
    SASL_SSL broker is in tests/integration/test_kafka_security.py)."""
    calls = tmp_path / "calls"
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    properties = tmp_path / "client.properties"
    properties.write_text("security.protocol=SSL\n")
    env = {"PATH": "/usr/bin:/bin", "BOOTSTRAP": "broker:9093", "KAFKA_TOPICS": str(fake)}
    script = REPO / "deploy" / "create-topics.sh"

    subprocess.run(["bash", script], env={**env, "COMMAND_CONFIG": str(properties)}, check=True, timeout=30)
    lines = calls.read_text().splitlines()
    # One call per topic a worker needs.
    assert len(lines) == len(required_topics(Settings()))
    assert all(f"--command-config {properties} --create" in line for line in lines)

    calls.unlink()
    subprocess.run(["bash", script], env=env, check=True, timeout=30)
    assert "--command-config" not in calls.read_text()

    missing = subprocess.run(
        ["bash", script], env={**env, "COMMAND_CONFIG": str(tmp_path / "nope")}, capture_output=True, timeout=30
    )
    assert missing.returncode == 2 and b"is not a readable file" in missing.stderr
