"""TLS contexts for the API (HTTPS), the gateway (``wss://``) and the device SDK, from PEM files.

The standard library's :mod:`ssl` only, its errors translated to :class:`ConfigError` with the
file named. Servers take a certificate chain and its private key (``--tls-cert``,
``--tls-key``); clients verify against the system's trusted CAs or a given CA file (a private
CA, or the server's self-signed certificate). TLS 1.2 is the oldest version accepted: older
ones have known weaknesses and every current client speaks 1.2 or 1.3.
"""

from __future__ import annotations

import ssl

from hopcast.errors import ConfigError


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context presenting ``cert_file`` (PEM chain) with ``key_file`` (PEM key).

    Raises:
        ConfigError: a file is missing or unreadable, or the key does not match the certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate {cert_file!r} / key {key_file!r}: {exc}"
        ) from exc
    return context


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context verifying servers against ``ca_file`` (PEM), or the system's CAs.

    Raises:
        ConfigError: ``ca_file`` is missing or not a PEM certificate.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA file {ca_file!r}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def check_pair(cert_file: str | None, key_file: str | None) -> None:
    """Both or neither of ``--tls-cert`` and ``--tls-key``.

    Raises:
        ConfigError: only one was given.
    """
    if (cert_file is None) != (key_file is None):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
