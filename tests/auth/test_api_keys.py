"""API keys: random, hashed at rest, revocable; every reader of the file sees a revocation."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from hopcast.auth.keys import (
    MAX_CREDENTIAL_CHARS,
    MAX_NAME_CHARS,
    RELOAD_EVERY_S,
    KeyFile,
    Principal,
    hash_secret,
    split_key,
)
from hopcast.auth.roles import Role
from hopcast.errors import ConfigError, InvalidInput, NotFound

NOW = 1_700_000_000_000_000


def test_a_created_key_carries_its_id_and_authenticates_as_its_holder(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    record, key = keys.create("ci", ["writer", "reader"], NOW)
    assert key.startswith(f"hck_{record.id}_")
    assert keys.authenticate(key) == Principal(record.id, "ci", (Role.READER, Role.WRITER))


def test_the_file_holds_the_hash_and_never_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    record, key = KeyFile(path).create("ci", ["admin"], NOW)
    secret = key.split("_", 2)[2]
    text = path.read_text()
    assert secret not in text and key not in text
    assert json.loads(text)["keys"][0]["hash"] == hash_secret(secret) == record.hash


def test_the_key_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    old = os.umask(0o022)
    try:
        KeyFile(path).create("ci", ["reader"], NOW)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_two_keys_have_different_ids_and_secrets(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    (a, ka), (b, kb) = keys.create("a", ["reader"], NOW), keys.create("b", ["reader"], NOW)
    assert a.id != b.id and ka.split("_", 2)[2] != kb.split("_", 2)[2]
    assert len(ka.split("_", 2)[2]) == 43  # 256 bits, base64url


@pytest.mark.parametrize(
    "credential",
    [
        "",
        "hck_",
        "hck_000000000000_" + "A" * 43,  # an id nobody has
        "not-a-key",
        "hck_" + "a" * 12 + "_" + "A" * (MAX_CREDENTIAL_CHARS + 1),
    ],
    ids=["empty", "prefix", "unknown-id", "garbage", "too-long"],
)
def test_a_malformed_or_unknown_credential_names_nobody(tmp_path: Path, credential: str) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    keys.create("ci", ["reader"], NOW)
    assert keys.authenticate(credential) is None


def test_a_right_id_with_a_wrong_secret_names_nobody(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    _, key = keys.create("ci", ["reader"], NOW)
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert split_key(wrong) is not None
    assert keys.authenticate(wrong) is None


def test_a_revoked_key_is_refused_and_still_listed(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    record, key = keys.create("ci", ["reader"], NOW)
    keys.revoke(record.id, NOW + 1)
    keys.refresh(force=True)
    assert keys.authenticate(key) is None
    assert [r.revoked for r in keys.records()] == [NOW + 1]
    assert keys.active() == []


def test_revoking_an_unknown_key_says_so(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    keys.create("ci", ["reader"], NOW)
    with pytest.raises(NotFound, match="no key 'abc'"):
        keys.revoke("abc", NOW)


def test_a_revocation_by_another_process_is_seen_within_a_second(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    server = KeyFile(path)  # what a server worker holds
    record, key = KeyFile(path).create("ci", ["operator"], NOW)
    assert server.authenticate(key) is not None
    KeyFile(path).revoke(record.id, NOW)  # what `hopcast auth revoke` does
    deadline = time.monotonic() + 1.0
    while server.authenticate(key) is not None:
        assert time.monotonic() < deadline, "the revocation was not seen within a second"
        time.sleep(0.01)


def test_the_file_is_checked_at_most_every_reload_interval(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "keys.json"
    server = KeyFile(path, clock=lambda: now[0])
    record, key = KeyFile(path).create("ci", ["reader"], NOW)
    assert server.authenticate(key) is not None
    KeyFile(path).revoke(record.id, NOW)
    now[0] += RELOAD_EVERY_S / 2
    assert server.authenticate(key) is not None, "re-read before the interval"
    now[0] += RELOAD_EVERY_S
    assert server.authenticate(key) is None


def test_an_unreadable_key_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys = KeyFile(path)
    _, key = keys.create("ci", ["reader"], NOW)
    path.write_text("{not json")
    keys.refresh(force=True)
    with pytest.raises(ConfigError, match="not valid"):
        keys.authenticate(key)


@pytest.mark.parametrize(
    ("name", "roles"),
    [("", ["reader"]), ("x" * (MAX_NAME_CHARS + 1), ["reader"]), ("a\nb", ["reader"]),
     ("ci", []), ("ci", ["root"])],
    ids=["empty-name", "long-name", "control-char", "no-role", "unknown-role"],
)  # fmt: skip
def test_a_key_needs_a_bounded_name_and_known_roles(
    tmp_path: Path, name: str, roles: list[str]
) -> None:
    with pytest.raises(InvalidInput):
        KeyFile(tmp_path / "keys.json").create(name, roles, NOW)
    assert not (tmp_path / "keys.json").exists()
