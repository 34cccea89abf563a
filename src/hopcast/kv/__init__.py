"""Key-value backends: ``memory`` (reference), ``lmdb`` (embedded default), ``redis`` (scale-out).

Open one by URL with :func:`open_kv`: ``memory://``, ``lmdb:///path/to/dir`` (also a bare path) or
``redis://host:port/db`` (one Redis server) or ``redis+cluster://host:port`` (a Redis Cluster).
"""

from __future__ import annotations

from hopcast.errors import ConfigError
from hopcast.kv.base import Item, KVStore, Page, ReadTxn, WriteTxn

__all__ = ["Item", "KVStore", "Page", "ReadTxn", "WriteTxn", "open_kv"]


def open_kv(url: str, **options: object) -> KVStore:
    """Open a backend by URL.

    Args:
        url: ``memory://``, ``lmdb:///abs/path``, ``lmdb://rel/path``, a bare directory path
            (LMDB), ``redis://host:port/db`` (also ``rediss://`` and ``unix://``; one Redis
            server), or ``redis+cluster://host:port`` (also ``rediss+cluster://``; a Redis
            Cluster, named by any one of its nodes).
        options: backend keyword arguments (e.g. ``sync=False`` for LMDB, ``prefix="app:"`` for
            Redis).

    Raises:
        ConfigError: for an unknown scheme.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "lmdb", url
    if scheme == "memory":
        from hopcast.kv.memory import MemoryKV

        return MemoryKV()
    if scheme == "lmdb":
        from hopcast.kv.lmdb import LmdbKV

        if not rest:
            raise ConfigError("lmdb:// needs a directory, e.g. lmdb:///var/lib/hopcast/graph")
        return LmdbKV(rest, **options)  # type: ignore[arg-type]
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        from hopcast.kv.redis import RedisKV

        return RedisKV(url, **options)  # type: ignore[arg-type]
    raise ConfigError(
        f"unknown store URL scheme {scheme!r} in {url!r} "
        "(use memory://, lmdb://, redis:// or redis+cluster://)"
    )
