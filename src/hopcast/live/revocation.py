"""Device-token revocation: by token id (the ``jti`` claim) or by subject, shared by every
gateway process through a list they poll.

:class:`RevocationList` is the pure part: an immutable snapshot of entries that answers "is
this token revoked?" (:meth:`RevocationList.reason`). An entry is one of:

* ``token_id`` — that one token (its ``jti``); tokens issued before ``jti`` existed have none
  and can only be revoked by subject;
* ``subject`` — every token of that device issued at or before the revocation (``iat <=
  revoked_at``): a token issued afterwards is accepted again, so a device can be let back in
  by issuing it a new token; revoke its new token's id too to keep it out.

An entry is kept until its ``until`` (default: :data:`DEFAULT_RETENTION_US` after it was made,
longer than any token should live), then pruned. At most :data:`MAX_ENTRIES` entries.

Where the list lives (one adapter each):

* :class:`FileRevocations` — a JSON file under the data directory (``<store>/revocations.json``
  for ``hopcast serve`` on an LMDB store), written atomically (temporary file + rename) under an
  advisory lock, so the CLI and the API can add to it while gateways read it;
* :class:`hopcast.live.redisrevoke.RedisRevocations` — a Redis hash beside the live fan-out's
  keys (``<prefix>revocations``), for gateway nodes fed through Redis.

The gateway polls its source every :data:`POLL_S` and closes the connections a new entry
matches (``bye revoked``); ``hello`` is checked against the latest snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Protocol

import msgspec
from msgspec import Meta

from hopcast.durations import DAY
from hopcast.errors import ConfigError, HopcastError, InvalidInput
from hopcast.live.messages import MAX_NAME_CHARS
from hopcast.live.tokens import MAX_TTL_US, Claims

#: How often a gateway re-reads its revocation source: "within seconds" on every process, for
#: one small read (a stat for the file, one HGETALL for Redis) per process per second.
POLL_S = 1.0
#: How long an entry is kept by default: as long as the longest token can live
#: (:data:`hopcast.live.tokens.MAX_TTL_US`, a week, which issue and verify enforce); a token
#: outliving its revocation entry would be accepted again.
DEFAULT_RETENTION_US = MAX_TTL_US
#: Longest an entry may be kept: a year, longer than any device token should live (an entry
#: only has to outlive the tokens it revokes), and a bound on ``until`` so an operator's typo
#: (``--keep 99999999d``) cannot write a time no date type can show.
MAX_RETENTION_US = 366 * DAY
#: Most entries in a list: revocation answers incidents, not routine logouts (short token
#: lifetimes do that). 10,000 entries with 16-character ids and no notes are ~1 MB of JSON
#: (about 40 ms to decode and index here, once per change).
MAX_ENTRIES = 10_000
#: Largest revocation file a reader accepts, checked (with ``stat``) before it is read: an entry
#: at its very longest (a value and a note of control characters, each escaped to 6 bytes) is
#: under 4 KiB of JSON, so :data:`MAX_ENTRIES` of them fit. A larger file was not written by
#: hopcast and would stall every gateway's event loop while it decodes.
MAX_FILE_BYTES = MAX_ENTRIES * 4 * 1024
#: The file's name under the data directory.
FILE_NAME = "revocations.json"


class RevocationKind(enum.StrEnum):
    TOKEN_ID = "token_id"
    SUBJECT = "subject"


_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]


class Revocation(msgspec.Struct, frozen=True, kw_only=True):
    """One entry.

    Attributes:
        kind: ``token_id`` or ``subject``.
        value: the token id, or the device id.
        revoked_at: when it was made, µs since the epoch (a subject's tokens issued later pass).
        until: when it is pruned, µs since the epoch.
        note: free text for the operator (why).
    """

    kind: RevocationKind
    value: _Name
    revoked_at: int
    until: int
    note: Annotated[str, Meta(max_length=512)] = ""

    @property
    def key(self) -> str:
        return f"{self.kind.value}:{self.value}"


def revocation(
    kind: RevocationKind | str,
    value: str,
    now: int,
    *,
    retention_us: int = DEFAULT_RETENTION_US,
    note: str = "",
) -> Revocation:
    """A checked entry made at ``now``.

    Raises:
        InvalidInput: an unknown kind, a value of the wrong length, a retention not in
            (0, :data:`MAX_RETENTION_US`] or a note over 512 characters.
    """
    try:
        kind = RevocationKind(kind)
    except ValueError:
        raise InvalidInput(f"revoke by 'token_id' or 'subject', not {kind!r}") from None
    if not 1 <= len(value) <= MAX_NAME_CHARS:
        raise InvalidInput(f"a {kind.value} has 1 to {MAX_NAME_CHARS} characters")
    if not 0 < retention_us <= MAX_RETENTION_US:
        raise InvalidInput(
            f"a revocation is kept a positive time of at most {MAX_RETENTION_US // DAY} days, "
            f"got {retention_us} µs"
        )
    if len(note) > 512:
        raise InvalidInput("a revocation note has at most 512 characters")
    return Revocation(kind=kind, value=value, revoked_at=now, until=now + retention_us, note=note)


class RevocationList:
    """An immutable snapshot of the entries in force; cheap to query per ``hello``."""

    def __init__(self, entries: Iterable[Revocation] = (), now: int | None = None) -> None:
        """Entries past their ``until`` at ``now`` are left out (all kept if ``now`` is None);
        for a repeated key the latest ``revoked_at`` wins."""
        live: dict[str, Revocation] = {}
        for entry in entries:
            if now is not None and entry.until <= now:
                continue
            old = live.get(entry.key)
            if old is None or entry.revoked_at >= old.revoked_at:
                live[entry.key] = entry
        self._entries = live
        self._ids = {e.value for e in live.values() if e.kind is RevocationKind.TOKEN_ID}
        self._subjects = {
            e.value: e.revoked_at for e in live.values() if e.kind is RevocationKind.SUBJECT
        }
        #: The earliest ``until`` of the entries (None: empty): until then, this snapshot is
        #: the same list at any later ``now``, so a poll can reuse it without rebuilding.
        self.next_expiry: int | None = min((e.until for e in live.values()), default=None)

    def current_at(self, now: int) -> RevocationList:
        """This list as it stands at ``now``: itself while no entry has expired (O(1), the
        common case of a poll), else a pruned copy."""
        if self.next_expiry is None or now < self.next_expiry:
            return self
        return RevocationList(self._entries.values(), now)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Revocation]:
        return iter(sorted(self._entries.values(), key=lambda e: (e.revoked_at, e.key)))

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        return isinstance(other, RevocationList) and self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]

    def reason(self, claims: Claims) -> str | None:
        """Why the token with ``claims`` is revoked, or ``None`` if it is not."""
        if claims.token_id is not None and claims.token_id in self._ids:
            return f"token {claims.token_id!r} was revoked"
        at = self._subjects.get(claims.device)
        if at is not None and claims.issued_at <= at:
            return f"the tokens of {claims.device!r} issued before {at} were revoked"
        return None

    def with_entry(self, entry: Revocation, now: int) -> RevocationList:
        """This list plus ``entry``, pruned at ``now``.

        Raises:
            InvalidInput: the list would exceed :data:`MAX_ENTRIES`.
        """
        out = RevocationList((*self._entries.values(), entry), now)
        if len(out) > MAX_ENTRIES:
            raise InvalidInput(
                f"the revocation list holds at most {MAX_ENTRIES} entries; revoke by subject, "
                "or issue shorter-lived tokens"
            )
        return out


class RevocationSource(Protocol):
    """Where a gateway reads revocations, and where the CLI and API add them."""

    async def load(self, now: int) -> RevocationList:
        """The entries in force at ``now``. Raises :class:`~hopcast.errors.HopcastError` (or a
        subclass) when the source cannot be read; the gateway keeps its last snapshot then."""
        ...

    async def add(self, entry: Revocation, now: int) -> RevocationList:
        """Add ``entry`` (pruning what expired at ``now``); returns the list in force."""
        ...

    async def close(self) -> None: ...


logger = logging.getLogger(__name__)


class RevocationWatch:
    """The list in force for a process that checks device tokens without a gateway of its own
    (``hopcast serve`` verifying with the shared ``$HOPCAST_LIVE_SECRET``, API workers): it
    polls ``source`` every ``poll_s`` as a gateway does, so a revocation bars a token from the
    HTTP routes devices call within about ``poll_s``, in every process.

    :meth:`start` reads the list once and raises if it cannot (serving with an empty list would
    let every revoked token back in); a later read that fails keeps the last list and logs once
    per distinct problem, like the gateway.
    """

    def __init__(
        self,
        source: RevocationSource,
        clock: Callable[[], int],
        *,
        poll_s: float = POLL_S,
    ) -> None:
        self._source = source
        self._clock = clock
        self._poll_s = poll_s
        self._list = RevocationList()
        self._task: asyncio.Task[None] | None = None
        self._problem: str | None = None

    def current(self) -> RevocationList:
        """The latest list read."""
        return self._list

    async def start(self) -> None:
        """Read the list (raises :class:`~hopcast.errors.HopcastError` if it cannot be read),
        then poll it in the background until :meth:`stop`."""
        self._list = await self._source.load(self._clock())
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def refresh(self) -> None:
        """Read the list now; a failure keeps the last one (logged when the problem changes)."""
        try:
            revoked = await self._source.load(self._clock())
        except HopcastError as exc:
            if str(exc) != self._problem:
                self._problem = str(exc)
                logger.warning("keeping the last device-token revocation list: %s", exc)
            return
        if self._problem is not None:
            self._problem = None
            logger.warning("the device-token revocation list is read again")
        self._list = revoked

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            await self.refresh()

    async def stop(self) -> None:
        """Stop polling and close the source."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._source.close()


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[Revocation]).decode
#: What a reader's error tells the operator to do (gateways keep their last list meanwhile).
_REPAIR = "repair it, or move it aside to start an empty list"


class FileRevocations:
    """A :class:`RevocationSource` in a JSON file (a list of entries).

    Readers skip the read while the file's modification time and size are unchanged (and
    reuse the snapshot itself while none of its entries expires, so a poll of an unchanged
    list costs a ``stat``); a file over :data:`MAX_FILE_BYTES` or :data:`MAX_ENTRIES` is
    refused before it is decoded or indexed. Writers
    take an exclusive ``flock`` on ``<file>.lock``, read, add, and replace the file atomically,
    so concurrent writers do not lose each other's entries and readers never see half a file.
    A missing file is an empty list.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int] | None = None
        self._cached = RevocationList()

    @classmethod
    def in_directory(cls, directory: str | os.PathLike[str]) -> FileRevocations:
        return cls(Path(directory) / FILE_NAME)

    def _read(self, now: int) -> RevocationList:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._cached = None, RevocationList()
            return self._cached
        except OSError as exc:
            raise ConfigError(f"cannot read the revocation list {self.path}: {exc}") from exc
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._seen:
            if st.st_size > MAX_FILE_BYTES:
                raise ConfigError(
                    f"the revocation list {self.path} is {st.st_size} bytes, over the "
                    f"{MAX_FILE_BYTES} a list of {MAX_ENTRIES} entries can take: {_REPAIR}"
                )
            try:
                entries = _decode(self.path.read_bytes())
            except (OSError, msgspec.DecodeError) as exc:
                raise ConfigError(
                    f"cannot read the revocation list {self.path}: {exc}: {_REPAIR}"
                ) from exc
            if len(entries) > MAX_ENTRIES:
                raise ConfigError(
                    f"the revocation list {self.path} holds {len(entries)} entries, over "
                    f"{MAX_ENTRIES}: {_REPAIR}"
                )
            self._seen, self._cached = stamp, RevocationList(entries, now)
        self._cached = self._cached.current_at(now)
        return self._cached

    async def load(self, now: int) -> RevocationList:
        return self._read(now)

    def load_sync(self, now: int) -> RevocationList:
        """:meth:`load` for callers without an event loop (a check before a server starts)."""
        return self._read(now)

    async def add(self, entry: Revocation, now: int) -> RevocationList:
        return self.add_sync(entry, now)

    def add_sync(self, entry: Revocation, now: int) -> RevocationList:
        """:meth:`add` for callers without an event loop (the CLI)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._seen = None  # re-read under the lock
                updated = self._read(now).with_entry(entry, now)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".revocations-")
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(_encode(list(updated)))
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, self.path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
        except OSError as exc:
            raise ConfigError(f"cannot write the revocation list {self.path}: {exc}") from exc
        return updated

    async def close(self) -> None:
        return None


class MemoryRevocations:
    """A :class:`RevocationSource` in this process only (a store without a directory)."""

    def __init__(self) -> None:
        self._list = RevocationList()

    async def load(self, now: int) -> RevocationList:
        self._list = self._list.current_at(now)
        return self._list

    async def add(self, entry: Revocation, now: int) -> RevocationList:
        self._list = self._list.with_entry(entry, now)
        return self._list

    async def close(self) -> None:
        return None
