"""Settings read from the environment, in one place.

``HOPCAST_STORE`` and ``HOPCAST_SCHEMA`` (the CLI's defaults) are read by :mod:`hopcast.cli`;
the live gateway's token secret is read here.
"""

from __future__ import annotations

import os

from hopcast.errors import ConfigError

#: Environment variable holding the device-token secret (hex, at least 32 bytes).
LIVE_SECRET_ENV = "HOPCAST_LIVE_SECRET"


def live_secret(required: bool = False) -> bytes:
    """The device-token secret: ``$HOPCAST_LIVE_SECRET`` (hex), else a random one for this
    process (tokens then die with it: fine for the demo, not for a fleet).

    Args:
        required: raise instead of inventing a secret (issuing tokens for another process).

    Raises:
        ConfigError: if the variable is not hex or shorter than 32 bytes.
    """
    value = os.environ.get(LIVE_SECRET_ENV)
    if not value:
        if required:
            raise ConfigError(
                f"set {LIVE_SECRET_ENV} to the gateway's token secret (64+ hex digits)"
            )
        return os.urandom(32)
    try:
        secret = bytes.fromhex(value)
    except ValueError:
        raise ConfigError(f"{LIVE_SECRET_ENV} must be hex") from None
    if len(secret) < 32:
        raise ConfigError(f"{LIVE_SECRET_ENV} must hold at least 32 bytes (64 hex digits)")
    return secret
