"""API keys: the format, hashing at rest, and the key file every server worker reads.

Format::

    hck_<id>_<secret>

* ``id`` — 12 lowercase hex digits, random; names the key in ``hopcast auth list`` and in logs,
  and makes the lookup O(1) (no scan over every stored hash).
* ``secret`` — 43 base64url characters: 256 random bits from :mod:`secrets`.

Only ``SHA-256(secret)`` is stored. A slow password hash (bcrypt, argon2) protects low-entropy
secrets people choose; a 256-bit random secret cannot be guessed, so a fast hash is enough and
keeps every request's check at microseconds. Hashes are compared with
:func:`hmac.compare_digest` (constant time).

The key file (JSON, mode 0600)::

    {"version": 1, "keys": [{"id", "name", "roles", "hash", "created", "revoked"}]}

``created``/``revoked`` are µs since the epoch (``revoked`` null while the key is valid). Every
change is written to a temporary file and renamed over the old one, so a reader sees the old
file or the new one, never half of one; changes from several ``hopcast auth`` processes are
serialised by a lock file beside it. A server worker re-reads the file when it changes (a
``stat`` at most every :data:`RELOAD_EVERY_S`), so a revocation takes effect in every worker
within about that time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hopcast.auth.roles import Role, parse_roles
from hopcast.errors import ConfigError, InvalidInput, NotFound

#: Every key starts with this, so a leaked key is recognisable (secret scanners, logs).
PREFIX = "hck"
#: Random bytes in a key's id: 48 bits make a collision among MAX_KEYS keys negligible
#: (and create() retries one anyway).
ID_BYTES = 6
#: Random bytes in a key's secret: 256 bits, beyond any guessing.
SECRET_BYTES = 32
#: Longest credential looked at: a key is 4 + 12 + 1 + 43 = 60 characters; anything much
#: longer is refused before it is parsed or hashed.
MAX_CREDENTIAL_CHARS = 128
#: Longest key name (a label for people: "ci-ingest", "alice's console").
MAX_NAME_CHARS = 100
#: Most keys in one file, revoked ones included: a file read on every change stays small
#: (about 250 bytes a key), and a deployment with more keys wants an identity provider.
MAX_KEYS = 1_000
#: Largest key file read: MAX_KEYS entries with room to spare; a bigger file is refused.
MAX_FILE_BYTES = 1 << 20
#: How often a server checks whether the key file changed: a revocation is seen by every
#: worker within this (plus a request), while a stat per request would cost a syscall each.
RELOAD_EVERY_S = 0.25

#: The environment variable clients (``hopcast query --url``, the load simulator) take their
#: API key from.
API_KEY_ENV = "HOPCAST_API_KEY"

FILE_VERSION = 1
_KEY = re.compile(r"hck_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[^\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored key (never its secret)."""

    id: str
    name: str
    roles: tuple[Role, ...]
    hash: str
    created: int
    revoked: int | None = None

    def to_dict(self, *, with_hash: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "roles": [r.value for r in self.roles],
            "created": self.created,
            "revoked": self.revoked,
        }
        if with_hash:
            doc["hash"] = self.hash
        return doc


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the key's id and name and the roles it holds."""

    key_id: str
    name: str
    roles: tuple[Role, ...]


def client_headers() -> dict[str, str]:
    """``{"Authorization": "Bearer <key>"}`` from ``$HOPCAST_API_KEY``, or ``{}`` if unset."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def hash_secret(secret: str) -> str:
    """``SHA-256(secret)`` in hex (what the key file stores)."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def new_key() -> tuple[str, str, str]:
    """A fresh key: ``(id, secret, the whole key as given to its user)``."""
    key_id = secrets.token_hex(ID_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return key_id, secret, f"{PREFIX}_{key_id}_{secret}"


def split_key(credential: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else None (checked before any lookup)."""
    if len(credential) > MAX_CREDENTIAL_CHARS:
        return None
    match = _KEY.fullmatch(credential)
    return None if match is None else (match[1], match[2])


def check_name(name: str) -> str:
    """A key's name, stripped.

    Raises:
        InvalidInput: empty, longer than MAX_NAME_CHARS, or with control characters.
    """
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"a key name has 1 to {MAX_NAME_CHARS} characters, no control characters"
        )
    return name


class KeyFile:
    """The key file at ``path``: read, create, revoke (one process or many).

    ``authenticate`` is what the server calls per request; it re-reads the file when it changed
    (see the module docstring). ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.monotonic
    ):
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: dict[str, KeyRecord] = {}
        self._seen: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._error: str | None = None

    # -- reading -------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.is_file()

    def records(self) -> list[KeyRecord]:
        """Every key in the file, oldest first (read now).

        Raises:
            ConfigError: the file is missing, too large or not a key file.
        """
        return _parse(self._read_bytes(), self.path)

    def active(self) -> list[KeyRecord]:
        """The keys not revoked."""
        return [r for r in self.records() if r.revoked is None]

    def authenticate(self, credential: str) -> Principal | None:
        """The principal a credential names, or None (malformed, unknown, wrong secret, revoked).

        Raises:
            ConfigError: the key file cannot be read (the server answers 503 rather than let
                anyone in or lock everyone out silently).
        """
        parts = split_key(credential)
        self.refresh()
        if self._error is not None:
            raise ConfigError(self._error)
        if parts is None:
            return None
        key_id, secret = parts
        record = self._by_id.get(key_id)
        # Hash even for an unknown id, so timing does not tell known ids from unknown ones.
        digest = hash_secret(secret)
        if record is None or not hmac.compare_digest(digest, record.hash):
            return None
        if record.revoked is not None:
            return None
        return Principal(record.id, record.name, record.roles)

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the file if it changed since the last read (checked at most every
        RELOAD_EVERY_S unless ``force``)."""
        now = self._clock()
        if not force and now - self._checked < RELOAD_EVERY_S:
            return
        with self._lock:
            self._checked = now
            try:
                st = os.stat(self.path)
            except OSError as exc:
                self._by_id, self._seen = {}, None
                self._error = f"cannot read the key file {self.path}: {exc.strerror}"
                return
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._seen and self._error is None:
                return
            try:
                records = self.records()
            except ConfigError as exc:
                self._by_id, self._seen, self._error = {}, None, str(exc)
                return
            self._by_id = {r.id: r for r in records}
            self._seen, self._error = stamp, None

    # -- changing ------------------------------------------------------------------------------

    def create(self, name: str, roles: Iterable[str], now: int) -> tuple[KeyRecord, str]:
        """Add a key; returns its record and the key itself (shown once, never stored).

        Raises:
            InvalidInput: a bad name or role, or the file already holds MAX_KEYS keys.
        """
        name = check_name(name)
        try:
            parsed = parse_roles(roles)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        with self._locked():
            records = self.records() if self.exists() else []
            if len(records) >= MAX_KEYS:
                raise InvalidInput(
                    f"the key file holds {len(records)} keys, the most allowed; "
                    "remove revoked ones by hand or use another file"
                )
            taken = {r.id for r in records}
            key_id, secret, key = new_key()
            while key_id in taken:  # pragma: no cover - 48 random bits
                key_id, secret, key = new_key()
            record = KeyRecord(key_id, name, parsed, hash_secret(secret), now)
            self._write([*records, record])
        return record, key

    def revoke(self, key_id: str, now: int) -> KeyRecord:
        """Mark a key revoked (kept in the file, so ``list`` shows when). Revoking a revoked
        key changes nothing.

        Raises:
            NotFound: no key has that id.
        """
        with self._locked():
            records = self.records()
            for i, record in enumerate(records):
                if record.id == key_id:
                    if record.revoked is None:
                        records[i] = record = replace(record, revoked=now)
                        self._write(records)
                    return record
        raise NotFound(f"no key {key_id!r} in {self.path}")

    # -- file ------------------------------------------------------------------------------------

    def _read_bytes(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise ConfigError(
                f"no key file at {self.path}; create a key with `hopcast auth create`"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read the key file {self.path}: {exc.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(f"the key file {self.path} is larger than {MAX_FILE_BYTES} bytes")
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write cycles across processes (a lock file beside the file)."""
        import fcntl  # POSIX; the server never needs it, only `hopcast auth`

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, records: list[KeyRecord]) -> None:
        doc = {"version": FILE_VERSION, "keys": [r.to_dict() for r in records]}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by the umask; make sure
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _parse(data: bytes, path: Path) -> list[KeyRecord]:
    """The records of a key file's bytes.

    Raises:
        ConfigError: not JSON, another version, a malformed entry, or too many keys.
    """
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
            raise ValueError(f"not a version {FILE_VERSION} key file")
        entries = doc["keys"]
        if not isinstance(entries, list) or len(entries) > MAX_KEYS:
            raise ValueError(f"'keys' must be a list of at most {MAX_KEYS} keys")
        records = []
        for e in entries:
            revoked = e["revoked"]
            record = KeyRecord(
                id=str(e["id"]),
                name=str(e["name"]),
                roles=parse_roles(e["roles"]),
                hash=str(e["hash"]),
                created=int(e["created"]),
                revoked=None if revoked is None else int(revoked),
            )
            if not re.fullmatch(r"[0-9a-f]{12}", record.id) or len(record.hash) != 64:
                raise ValueError(f"key {record.id!r}: malformed id or hash")
            records.append(record)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"the key file {path} is not valid: {exc}") from None
    return records
