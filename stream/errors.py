"""Failures a user can act on. The command line prints such an error as one line and exits non-zero; ``--debug``
shows the traceback."""

from __future__ import annotations

import errno
import re
import ssl
import sys
from collections.abc import Iterator, Mapping


class StreamrecError(Exception):
    """A failure with a message that names the problem and, where there is one, the fix."""

    exit_code = 1


KAFKA_FIX = "start Kafka there, or pass --bootstrap HOST:PORT (or set STREAMREC_BOOTSTRAP_SERVERS)"

# Exception class names of both Kafka clients, looked up by name: a client that was never imported cannot have
# raised anything, and the names differ between versions (kafka-python 3 dropped NoBrokersAvailable).
_KAFKA_UNREACHABLE = ("NoBrokersAvailable", "KafkaConnectionError", "KafkaTimeoutError", "BrokerNotAvailableError")
_KAFKA_AUTHENTICATION = (
    "SaslAuthenticationFailedError",  # kafka-python
    "SaslAuthenticationFailed",  # aiokafka
    "AuthenticationFailedError",
    "AuthenticationMethodNotSupported",
    "UnsupportedSaslMechanismError",
    "IllegalSaslStateError",
)
_KAFKA_AUTHORIZATION = (
    "AuthorizationError",  # kafka-python: the base of every *AuthorizationFailedError
    "TopicAuthorizationFailedError",
    "GroupAuthorizationFailedError",
    "ClusterAuthorizationFailedError",
    "TransactionalIdAuthorizationFailed",
)


def one_line(text: object, limit: int = 400) -> str:
    """``text`` squeezed onto one line (client messages can hold newlines and repeat themselves at length)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _client_classes(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    classes: list[type[BaseException]] = []
    for module_name in ("kafka.errors", "aiokafka.errors"):
        module = sys.modules.get(module_name)
        for name in names:
            candidate = getattr(module, name, None) if module is not None else None
            if isinstance(candidate, type) and issubclass(candidate, BaseException):
                classes.append(candidate)
    return tuple(classes)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling: clients wrap TLS errors in their own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def kafka_failure(exc: BaseException, bootstrap: str | None, security: str | None = None) -> StreamrecError | None:
    """The one-line failure for an exception of either Kafka client (kafka-python, aiokafka) or of TLS; ``None``
    for anything else. ``bootstrap`` names the servers in the message when the caller knows them; ``security``
    (e.g. ``"SASL_SSL with SCRAM-SHA-512"``, ``None`` for plaintext) is how the client talked to them.

    The clients retry a refused login or handshake until their bootstrap times out and then report only the
    timeout, after the TCP connection was checked
    (:func:`streamrec.stream.runtime.network.wait_for_kafka`): with security on, the
    likely cause is named instead of "cannot reach"."""
    where = f"Kafka at {bootstrap}" if bootstrap else "Kafka"
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLError):
            return StreamrecError(
                f"TLS handshake with {where} failed ({one_line(cause)}); check the CA certificate, the client "
                "certificate and key, and that this address is the broker's TLS listener"
            )
    if isinstance(exc, _client_classes(_KAFKA_AUTHENTICATION)):
        return StreamrecError(
            f"{where} refused the login ({type(exc).__name__}: {one_line(exc)}); check the SASL mechanism, "
            "username and password"
        )
    if isinstance(exc, _client_classes(_KAFKA_AUTHORIZATION)):
        return StreamrecError(
            f"{where} denied access ({type(exc).__name__}: {one_line(exc)}); grant this client's principal the ACLs "
            "on the topics and the consumer group"
        )
    if isinstance(exc, _client_classes(_KAFKA_UNREACHABLE)):
        if security:
            return StreamrecError(
                f"{where} accepts connections but the client could not complete its {security} handshake "
                f"({type(exc).__name__}: {one_line(exc)}); check the credentials, the CA certificate, and that "
                "this address is the broker's listener for that protocol"
            )
        return StreamrecError(f"cannot reach {where} ({type(exc).__name__}: {one_line(exc)}); {KAFKA_FIX}")
    return None


_NESTED_SETTINGS = ("train",)  # sections of Settings set one field per variable


def settings_failure(exc: BaseException, cli_options: Mapping[str, str] | None = None) -> StreamrecError | None:
    """The one-line failure for invalid settings, naming the ``--option`` (``cli_options``: field → option given on
    the command line) or else the ``STREAMREC_*`` variable that holds the bad value; ``None`` for other errors."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    cli_options = cli_options or {}
    fix = "fix or unset it (`streamrec settings --markdown` documents every setting)"
    if isinstance(exc, SettingsError):  # a value pydantic-settings could not even parse, e.g. malformed JSON
        match = re.search(r'field "(\w+)"', str(exc))
        variable = f"STREAMREC_{match.group(1).upper()}" if match else "a STREAMREC_* variable"
        detail = f": {one_line(exc.__cause__)}" if exc.__cause__ else ""
        return StreamrecError(f"{variable} cannot be parsed{detail}; {fix}")
    if not isinstance(exc, ValidationError) or exc.title != "Settings":
        return None
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a check across several settings
            problems.append(message)
            continue
        field = str(error["loc"][0])
        if field in _NESTED_SETTINGS and len(error["loc"]) > 1:  # STREAMREC_TRAIN__DIM sets train.dim
            field = f"{field}__{error['loc'][1]}"
        source = cli_options.get(field, f"STREAMREC_{field.upper()}")
        problems.append(f"{source}={one_line(error.get('input'), 80)!r} is invalid: {message}")
    return StreamrecError(f"{one_line('; '.join(problems))}; {fix}")


def os_failure(exc: BaseException) -> StreamrecError | None:
    """The one-line failure for an operating system error about a file, a port or the disk; ``None`` for anything
    else, an error without a file name included (it is more likely a bug, reported with its traceback)."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    if exc.errno == errno.EADDRINUSE:
        return StreamrecError("a port is already in use; stop the process holding it or choose another port")
    name = str(exc.filename) if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return StreamrecError(f"no space left on the device{' of ' + name if name else ''}; free some space")
    if not name:
        return None
    if isinstance(exc, FileNotFoundError):
        return StreamrecError(f"not found: {name}; check the path")
    if isinstance(exc, PermissionError):
        return StreamrecError(f"permission denied: {name}; choose a path this user may read and write")
    if isinstance(exc, IsADirectoryError):
        return StreamrecError(f"{name} is a directory; pass a file")
    if isinstance(exc, NotADirectoryError):
        return StreamrecError(f"{name} is not a directory; pass a directory")
    reason = exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))
    return StreamrecError(f"{reason}: {name}; check the path and its permissions")
