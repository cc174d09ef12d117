"""Kafka TLS and SASL options for every client streamrec creates, built from
:class:`~streamrec.stream.settings.Settings`.

Three client libraries take the same security settings under different names:

* aiokafka (the worker's consumer and producer, the catalog feed, the state restore): :func:`aiokafka_options`,
  with an ``ssl.SSLContext``;
* kafka-python (topic admin, the replay and catalog tools, test and demo consumers): :func:`kafka_python_options`,
  with its own ``ssl_*`` file options;
* faust (the alternative runtime): :func:`faust_credentials`, its ``broker_credentials`` object.

Each call reads the secret files again, so a client created after a mounted secret was rotated uses the new one,
and the OAUTHBEARER token file is re-read on every token request. Passwords handed to the clients are
:class:`RedactedStr`: the clients need the real string, but one of them (kafka-python's admin client) logs its
whole configuration at DEBUG level, and that must not print a password.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka.abc import AbstractTokenProvider as AiokafkaTokenProvider
from aiokafka.helpers import create_ssl_context
from kafka.net.sasl.oauth import AbstractTokenProvider as KafkaPythonTokenProvider

from streamrec.stream.errors import StreamrecError
from streamrec.stream.settings import Settings, read_secret_file

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

MASK = "**********"


class KafkaSecurityError(StreamrecError):
    """The Kafka security settings cannot be turned into client options (unreadable secret, bad certificate)."""


class RedactedStr(str):
    """A string whose ``repr`` is masked: it still works as the password a client library needs, but a client
    that logs its configuration dictionary (which formats values with ``repr``) prints the mask instead."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)


def uses_tls(settings: Settings) -> bool:
    return settings.security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: Settings) -> bool:
    return settings.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def sasl_password(settings: Settings) -> RedactedStr:
    """The SASL password, from ``sasl_password`` or read now from ``sasl_password_file``."""
    if settings.sasl_password is not None:
        return RedactedStr(settings.sasl_password.get_secret_value())
    if settings.sasl_password_file is None:
        raise KafkaSecurityError("no SASL password: set STREAMREC_SASL_PASSWORD or STREAMREC_SASL_PASSWORD_FILE")
    return RedactedStr(_read_secret(settings.sasl_password_file, "sasl_password_file"))


def read_oauth_token(path: Path) -> str:
    """The OAUTHBEARER token in ``path``; surrounding whitespace is dropped (a JWT has none)."""
    return _read_secret(path, "sasl_oauth_token_file").strip()


def _read_secret(path: Path, setting: str) -> str:
    try:
        return read_secret_file(path)
    except ValueError as exc:
        raise KafkaSecurityError(f"{setting}: {exc}") from None


def _key_password_callback(settings: Settings) -> Callable[[], str]:
    """What ``SSLContext.load_cert_chain`` calls if, and only if, the private key is encrypted.

    Always passing a callback matters: without one, OpenSSL would prompt for the password on the terminal, and a
    worker without a terminal would hang there instead of failing.
    """
    inline, path, keyfile = settings.ssl_key_password, settings.ssl_key_password_file, settings.ssl_keyfile

    def key_password() -> str:
        if inline is not None:
            return inline.get_secret_value()
        if path is not None:
            return _read_secret(path, "ssl_key_password_file")
        raise KafkaSecurityError(
            f"the private key in {keyfile or settings.ssl_certfile} is encrypted: set STREAMREC_SSL_KEY_PASSWORD_FILE "
            "(or STREAMREC_SSL_KEY_PASSWORD)"
        )

    return key_password


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context: broker certificates verified against ``ssl_cafile`` (or the system CAs), the host
    name checked unless ``ssl_check_hostname`` is off, and the client certificate loaded when one is set."""
    cafile = str(settings.ssl_cafile) if settings.ssl_cafile else None
    try:
        context = create_ssl_context(cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise KafkaSecurityError(f"ssl_cafile {cafile}: cannot load CA certificates from it ({exc})") from None
    if settings.ssl_certfile is not None:
        keyfile = str(settings.ssl_keyfile) if settings.ssl_keyfile else None
        try:
            context.load_cert_chain(str(settings.ssl_certfile), keyfile, password=_key_password_callback(settings))
        except (ssl.SSLError, OSError) as exc:
            raise KafkaSecurityError(
                f"cannot load the client certificate {settings.ssl_certfile} with the key in "
                f"{keyfile or 'the same file'}: not a matching PEM certificate and private key, or a wrong key "
                f"password ({exc})"
            ) from None
    # create_ssl_context always checks host names; verify_mode stays CERT_REQUIRED either way.
    context.check_hostname = settings.ssl_check_hostname
    return context


class AiokafkaTokenFile(AiokafkaTokenProvider):
    """OAUTHBEARER tokens for aiokafka (and faust), read from a file on every request."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def token(self) -> str:
        return await asyncio.to_thread(read_oauth_token, self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class KafkaPythonTokenFile(KafkaPythonTokenProvider):
    """OAUTHBEARER tokens for kafka-python, read from a file on every request."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def token(self) -> str:
        return read_oauth_token(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient``."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if uses_tls(settings):
        options["ssl_context"] = ssl_context(settings)
    if uses_sasl(settings):
        options["sasl_mechanism"] = settings.sasl_mechanism
        if settings.sasl_mechanism == "OAUTHBEARER":
            assert settings.sasl_oauth_token_file is not None  # Settings validated it
            options["sasl_oauth_token_provider"] = AiokafkaTokenFile(settings.sasl_oauth_token_file)
        else:
            options["sasl_plain_username"] = settings.sasl_username
            options["sasl_plain_password"] = sasl_password(settings)
    return options


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient``."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if uses_tls(settings):
        # kafka-python loads the files only when it connects, inside a loop that retries any failure until its
        # bootstrap timeout: load them once now, so a bad file or key password fails at once with a clear message.
        ssl_context(settings)
        options["ssl_check_hostname"] = settings.ssl_check_hostname
        if settings.ssl_cafile is not None:
            options["ssl_cafile"] = str(settings.ssl_cafile)
        if settings.ssl_certfile is not None:
            options["ssl_certfile"] = str(settings.ssl_certfile)
            options["ssl_password"] = _key_password_callback(settings)
        if settings.ssl_keyfile is not None:
            options["ssl_keyfile"] = str(settings.ssl_keyfile)
    if uses_sasl(settings):
        options["sasl_mechanism"] = settings.sasl_mechanism
        if settings.sasl_mechanism == "OAUTHBEARER":
            assert settings.sasl_oauth_token_file is not None
            options["sasl_oauth_token_provider"] = KafkaPythonTokenFile(settings.sasl_oauth_token_file)
        else:
            options["sasl_plain_username"] = settings.sasl_username
            options["sasl_plain_password"] = sasl_password(settings)
    return options


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """``broker_credentials`` for ``faust.App``: faust hands them to the aiokafka clients it creates."""
    import faust  # imported here: only the faust runtime needs it, and it is slow to import

    context = ssl_context(settings) if uses_tls(settings) else None
    if not uses_sasl(settings):
        return faust.SSLCredentials(context) if context is not None else None
    if settings.sasl_mechanism == "OAUTHBEARER":
        assert settings.sasl_oauth_token_file is not None
        return faust.OAuthCredentials(oauth_cb=AiokafkaTokenFile(settings.sasl_oauth_token_file), ssl_context=context)
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=sasl_password(settings),
        ssl_context=context,
        mechanism=settings.sasl_mechanism,
    )
