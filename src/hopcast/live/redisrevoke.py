"""The revocation list in Redis, for gateway nodes fed through Redis (``hopcast live gateway``).

One hash, ``<prefix>revocations``: field ``<kind>:<value>`` → the entry's JSON
(:class:`~hopcast.live.revocation.Revocation`), and a counter, ``<prefix>revocations:version``,
that every add increments. Adding is ``HSET`` + ``INCR`` in one transaction; pruning expired
entries is an ``HDEL`` of what a load found expired. Every node polls with one round trip per
:data:`~hopcast.live.revocation.POLL_S` (``GET`` the counter, ``HLEN`` the hash) and reads the
whole hash (``HGETALL``) only when either changed or an entry of its snapshot expired, so an
unchanged list of 10,000 entries costs no decoding on the gateway's event loop. A hash of more
than :data:`MAX_HASH_ENTRIES` is refused before it is read. The client and its errors come from
:mod:`hopcast.live.redisfan`; a Redis failure is a :class:`~hopcast.errors.HopcastError` here.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from hopcast.errors import HopcastError
from hopcast.kv import KVStore
from hopcast.kv.redis import (
    RedisKV,
    _split_prefix,  # the store URL without its ?prefix= parameter
)
from hopcast.live.redisfan import DEFAULT_PREFIX, Keys, RedisError, connect
from hopcast.live.revocation import MAX_ENTRIES, Revocation, RevocationList

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Revocation).decode

#: Largest hash a reader accepts: twice the list's bound, since concurrent adders check the
#: bound without a lock and may pass it by a few; more was not written through hopcast.
MAX_HASH_ENTRIES = 2 * MAX_ENTRIES


def for_store(kv: KVStore) -> RedisRevocations | None:
    """The list beside a Redis store's keys (``<store prefix>live:revocations``: with the
    default prefix the same hash as ``hopcast live gateway`` nodes and ``hopcast live revoke
    --redis`` use), or ``None`` for a store that is not on one Redis server. (A Redis Cluster
    store has none: this adapter's client speaks to one server; pass ``--redis``.)"""
    if not isinstance(kv, RedisKV) or kv.cluster:
        return None
    return RedisRevocations(_split_prefix(kv.url)[1], prefix=kv.prefix + "live:")


class RedisRevocations:
    """A :class:`~hopcast.live.revocation.RevocationSource` in a Redis hash."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.key = Keys(prefix).prefix + "revocations"
        self.version_key = self.key + ":version"
        # Typed as Any: redis-py's stubs type every command as "Awaitable[T] | T".
        self._client: Any = connect(url)
        self._stamp: tuple[object, int] | None = None  # (version, HLEN) of the snapshot
        self._cached = RevocationList()

    async def load(self, now: int) -> RevocationList:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self.version_key)
                pipe.hlen(self.key)
                version, size = await pipe.execute()
        except RedisError as exc:
            raise HopcastError(f"cannot read the revocation list from Redis: {exc}") from exc
        stamp = (version, int(size))
        if stamp == self._stamp:
            current = self._cached.current_at(now)
            if current is self._cached:
                return current  # unchanged, nothing expired: no HGETALL, no decoding
        if stamp[1] > MAX_HASH_ENTRIES:
            raise HopcastError(
                f"the revocation list {self.key} in Redis holds {stamp[1]} entries, over "
                f"{MAX_HASH_ENTRIES}: it was not written through hopcast; delete it or prune it"
            )
        try:
            raw = await self._client.hgetall(self.key)
        except RedisError as exc:
            raise HopcastError(f"cannot read the revocation list from Redis: {exc}") from exc
        entries: list[Revocation] = []
        expired: list[bytes | str] = []
        for field, value in raw.items():
            try:
                entry = _decode(value)
            except msgspec.DecodeError:
                expired.append(field)  # not ours to keep: nothing can read it
                continue
            if entry.until <= now:
                expired.append(field)
            else:
                entries.append(entry)
        if expired:
            with contextlib.suppress(RedisError):  # pruning is retried at the next load
                await self._client.hdel(self.key, *expired)
        self._cached = RevocationList(entries, now)
        self._stamp = stamp if not expired else None  # pruned: the next poll re-stamps
        return self._cached

    async def add(self, entry: Revocation, now: int) -> RevocationList:
        current = await self.load(now)
        if len(current) >= MAX_ENTRIES:
            current.with_entry(entry, now)  # raises InvalidInput past the bound
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(self.key, entry.key, _encode(entry))
                pipe.incr(self.version_key)
                await pipe.execute()
        except RedisError as exc:
            raise HopcastError(f"cannot write the revocation list to Redis: {exc}") from exc
        return current.with_entry(entry, now)

    async def close(self) -> None:
        await self._client.aclose()
