"""The revocation list in Redis, for gateway nodes fed through Redis (``hopcast live gateway``).

One hash, ``<prefix>revocations``: field ``<kind>:<value>`` → the entry's JSON
(:class:`~hopcast.live.revocation.Revocation`). Adding is one ``HSET``; pruning expired entries
is an ``HDEL`` of what a load found expired. Every node polls it with one ``HGETALL`` per
:data:`~hopcast.live.revocation.POLL_S`. The client and its errors come from
:mod:`hopcast.live.redisfan`; a Redis failure is a :class:`~hopcast.errors.HopcastError` here.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from hopcast.errors import HopcastError
from hopcast.live.redisfan import DEFAULT_PREFIX, Keys, RedisError, connect
from hopcast.live.revocation import MAX_ENTRIES, Revocation, RevocationList

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Revocation).decode


class RedisRevocations:
    """A :class:`~hopcast.live.revocation.RevocationSource` in a Redis hash."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.key = Keys(prefix).prefix + "revocations"
        # Typed as Any: redis-py's stubs type every command as "Awaitable[T] | T".
        self._client: Any = connect(url)

    async def load(self, now: int) -> RevocationList:
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
        return RevocationList(entries, now)

    async def add(self, entry: Revocation, now: int) -> RevocationList:
        current = await self.load(now)
        if len(current) >= MAX_ENTRIES:
            current.with_entry(entry, now)  # raises InvalidInput past the bound
        try:
            await self._client.hset(self.key, entry.key, _encode(entry))
        except RedisError as exc:
            raise HopcastError(f"cannot write the revocation list to Redis: {exc}") from exc
        return current.with_entry(entry, now)

    async def close(self) -> None:
        await self._client.aclose()
