"""Settings from the environment."""

from __future__ import annotations

import pytest

from hopcast.config import LIVE_SECRET_ENV, live_secret
from hopcast.errors import ConfigError


def test_the_live_secret_is_read_as_hex_and_must_be_long_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LIVE_SECRET_ENV, "cd" * 40)
    assert live_secret(required=True) == bytes([0xCD]) * 40
    monkeypatch.setenv(LIVE_SECRET_ENV, "cd" * 31)
    with pytest.raises(ConfigError, match="32 bytes"):
        live_secret()


def test_without_the_variable_a_random_secret_is_made_unless_one_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(LIVE_SECRET_ENV, raising=False)
    assert live_secret() != live_secret()
    with pytest.raises(ConfigError, match=LIVE_SECRET_ENV):
        live_secret(required=True)
