"""Throw-away TLS certificates for the tests, made with the ``openssl`` command line.

One CA signs a server certificate for 127.0.0.1/localhost, a client certificate, and a server certificate that
names another host (for the host-name check). EC P-256 keys: quick to make, and every party here (Python's ssl,
stunnel, Kafka's PEM keystore) reads them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertificateSet:
    ca: Path
    server_cert: Path
    """Names 127.0.0.1 and localhost."""
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_name_cert: Path
    """Signed by the same CA, but names only ``kafka.invalid``: a host-name check against 127.0.0.1 fails."""
    wrong_name_key: Path
    directory: Path


def openssl_unavailable_reason() -> str | None:
    return None if shutil.which("openssl") else "the openssl command line is not installed"


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30)


def _new_key(name: str, cwd: Path) -> Path:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key", cwd=cwd)
    return cwd / f"{name}.key"


def _signed(name: str, subject: str, extensions: str, cwd: Path) -> tuple[Path, Path]:
    key = _new_key(name, cwd)
    _openssl("req", "-new", "-key", key, "-subj", subject, "-out", f"{name}.csr", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=cwd,
    )  # fmt: skip
    return cwd / f"{name}.pem", key


def make_certificates(directory: Path) -> CertificateSet:
    """A CA and the certificates signed by it, as PEM files in ``directory`` (keys unencrypted, PKCS#8)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key("ca", directory)
    _openssl(
        "req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=streamrec test CA", "-days", "2", "-out", "ca.pem",
        cwd=directory,
    )  # fmt: skip
    server_cert, server_key = _signed(
        "server", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n", directory
    )
    client_cert, client_key = _signed("client", "/CN=streamrec-worker", "extendedKeyUsage=clientAuth\n", directory)
    wrong_cert, wrong_key = _signed(
        "wrong-name", "/CN=kafka.invalid", "subjectAltName=DNS:kafka.invalid\nextendedKeyUsage=serverAuth\n", directory
    )
    return CertificateSet(
        ca=directory / "ca.pem",
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        wrong_name_cert=wrong_cert,
        wrong_name_key=wrong_key,
        directory=directory,
    )


def encrypted_copy(key: Path, password: str, out: Path) -> Path:
    """``key`` encrypted with ``password`` (AES-256, PKCS#8), for the key-password settings."""
    _openssl("pkey", "-in", key, "-aes256", "-passout", f"pass:{password}", "-out", out, cwd=out.parent)
    return out
