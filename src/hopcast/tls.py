"""TLS contexts for the API (HTTPS), the gateway (``wss://``) and the device SDK, from PEM files.

The standard library's :mod:`ssl` only, its errors translated to :class:`ConfigError` with the
file named. Servers take a certificate chain and its private key (``--tls-cert``,
``--tls-key``); clients verify against the system's trusted CAs or a given CA file (a private
CA, or the server's self-signed certificate). TLS 1.2 is the oldest version accepted: older
ones have known weaknesses and every current client speaks 1.2 or 1.3.
"""

from __future__ import annotations

import ssl
import time

from hopcast.errors import ConfigError


def server_context(cert_file: str, key_file: str, now_s: float | None = None) -> ssl.SSLContext:
    """A server context presenting ``cert_file`` (PEM chain) with ``key_file`` (PEM key).

    Args:
        cert_file, key_file: the PEM files.
        now_s: the time the certificate must still be valid at, seconds since the epoch
            (default: now).

    Raises:
        ConfigError: a file is missing or unreadable, the key does not match the certificate,
            or the certificate has expired (every client that verifies it would refuse it: a
            server that starts anyway only looks up).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate {cert_file!r} / key {key_file!r}: {exc}"
        ) from exc
    expires = not_after(cert_file)
    if expires is not None and expires <= (time.time() if now_s is None else now_s):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        raise ConfigError(f"TLS certificate {cert_file!r} expired at {when}: renew it")
    return context


def not_after(cert_file: str) -> float | None:
    """When the first certificate of ``cert_file`` expires (seconds since the epoch), or
    ``None`` if this Python cannot tell (the decoder used is CPython's own, not public API)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        return float(ssl.cert_time_to_seconds(decode(cert_file)["notAfter"]))
    except (OSError, ssl.SSLError, KeyError, ValueError):
        return None


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
