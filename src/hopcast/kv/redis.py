"""The scale-out KV backend, on Redis (redis-py, synchronous, hiredis parser when installed):
one Redis server (``redis://``) or a Redis Cluster (``redis+cluster://``).

URLs::

    redis://host:port/db           one server (also rediss:// for TLS, unix:///path.sock)
    redis+cluster://host:port      a Redis Cluster, any one of its nodes (rediss+cluster:// TLS);
                                   the others are discovered from it
    ...?prefix=app:                the key prefix (default ``hopcast:``), e.g. for the CLI's
                                   --store; the ``prefix`` argument wins over it

Layout (every key starts with the store's ``prefix``)::

    <prefix>z{<ns hex>:<rid hex>}   sorted set: the record's item keys, score 0 (lexicographic)
    <prefix>h{<ns hex>:<rid hex>}   hash: item key -> header (base.HEADER) + value

    one server                      Redis Cluster
    <prefix>meta                    <prefix>{<prefix>g}meta   hash: namespace -> TTL in µs
    <prefix>cp                      <prefix>{<prefix>g}cp     hash: source -> position
    <prefix>exp                     <prefix>x{<slot tag>}     sorted set: expiring items,
                                                              score = expires_at (µs); may
                                                              hold stale entries (see TTL)
                                    <prefix>{<prefix>g}jnl    hash: batch id -> journal
                                    <prefix>{<prefix>g}jage   sorted set: batch id -> server ms

The ``{...}`` hash tag holds the namespace and record id in hex, so both keys of one record
live in one Cluster slot and a record read is one single-slot script. On a Cluster the global
keys share one slot (tag = the prefix), and the expiry index is split per slot: the index of a
record's items lives in the record's own slot (``<slot tag>`` is a short string that hashes to
that slot), so a record's data and its index entries change in one single-slot script. Scans
are ZRANGEBYLEX / ZREVRANGEBYLEX pages of :data:`~hopcast.kv.base.SCAN_BATCH` keys plus an
HMGET, done in one Lua script so a page is atomic.

Writes: a :meth:`RedisKV.writer` block buffers its operations (reads inside it see them) and
sends them at exit; an exception in the block sends nothing. ``put_lww`` decides its return
value from what the transaction sees (stored data plus its own writes) and is *also* re-checked
in the script against the stored version, so a concurrent writer in another process can never
be overwritten by an older version: LWW holds on the server. Writers in one process are
serialised by a lock, as on the other backends.

What a block sends is its final state, each item once: the last put or delete of every item
it changed, grouped by record. Per record the script runs one variadic HDEL + ZREM (deletes)
and one HSET (puts), plus a ZADD of the put keys only when HSET added a field; the expiry
entries of the whole batch are one variadic ZADD. An item goes as a conditional (LWW-checked)
put only if every change the block made to it was a ``put_lww``; after an unconditional put or
a delete of it in the same block, its final put is unconditional (that is what running the
changes in order gives). Puts and deletes are sent blind: :meth:`WriteTxn.discard` queues a
delete without reading the item, ``delete`` still reads it to answer whether it existed.
:meth:`WriteTxn.put_indexed` (the graph store's edges: the ``key`` item and its entries in the
``out``/``in`` lists) is decided on the server, from what is stored when the script runs, not
from what this block read: on one server the script reads the stored item and moves the list
entries it places; on a Cluster the lists live in other slots, so each list entry is checked
against a per-entry marker in its own record that holds the newest version written (see
:data:`_APPLY`, sections 6 and 7). Writers in several processes writing the same edges at
once (API replicas, the API beside an ingest engine) thus always leave exactly the winner's
entries, on one server and on a Cluster (each list converges in its own slot, whatever order
the slots' scripts run in); ``tests/kv/test_redis_concurrent_writers.py`` checks every index
against the LWW winners. The read-ahead of a batch (:meth:`WriteTxn.prefetch`) is one script
call on one server (one pipeline per node of a Cluster). So a graph-store batch costs three
round trips on one server -- the node-delete marker page, the read-ahead, the commit --
whatever its size.

*One server*: the whole batch -- data, deletes, the expiry index, namespace declarations and
checkpoints -- is **one Lua script**, which Redis runs atomically.

*Redis Cluster*: a batch spans slots and no script or MULTI can cover several slots, so:

1. the batch's writes are grouped by hash slot; each group is the same LWW script as above
   restricted to one slot (its records plus that slot's expiry index), so every record changes
   atomically;
2. the groups are sent in one cluster pipeline: written to every primary before any reply is
   read, so the nodes apply their groups concurrently;
3. the checkpoint (source positions) is written **only after every group succeeded**, in its
   own slot. A batch whose groups fail leaves the checkpoint where it was.

A crash between groups leaves some groups applied and the checkpoint old. Replaying the
*mutations* from the old checkpoint over that half-applied state is not enough on its own:
:class:`~hopcast.graph.store.GraphStore` decides what to write from what it reads (a node
upsert merges into the stored node; an edge upsert is skipped when its ``key`` item is
already as new), and a replay that finds one record already updated would skip the others
that were not. So a batch of more than one group is first written as a **journal**
(its exact per-slot scripts' arguments, one HSET in the checkpoint's slot), then applied, and
the journal entry is removed in the same script that advances the checkpoint. A journal left
behind (crash, network failure, node restart) is *rolled forward*: by the same store before its
next write, and by every :class:`RedisKV` opened on the Cluster (the restarted engine, API
workers) once the entry is older than :data:`JOURNAL_GRACE_MS`. Re-applying a group is
idempotent -- the same puts of the same bytes, deletes, and LWW puts that find their version
already stored -- so applying the remaining groups and then the checkpoint gives exactly the
state of a clean run: exactly-once *effect*, at-least-once application. Only the first store to
finish a journal advances the checkpoint (the removal of the entry is checked in the same
script), so a late roll-forward can never move a checkpoint back. A batch within one slot needs
no journal: its one group is atomic, and a crash before its checkpoint leaves it whole, so the
replay is an ordinary LWW replay. ``tests/kv/test_redis_cluster.py`` cuts batches between
groups, through the KV and through the graph store, and shows the replay of the mutations alone
diverging where the journal does not.

What Redis Cluster does not give: readers may see a batch half-applied until it is finished or
rolled forward (each record is always whole). Bounded: while the writer applies the batch (its
slot groups go to every primary at once: milliseconds, see ``bench/store_writes.py``'s
atomicity probe, which finds torn reads on a Cluster and none on one server), or, if the writer
stops half-way, until the writer's next batch or a store opened on the Cluster rolls the
journal forward (after :data:`JOURNAL_GRACE_MS`). ``tests/kv/test_redis_cluster.py`` pins
both. A reader that needs every record of a batch at once reads one server. A writer in another
process that writes the same items with unconditional puts while a journal waits to be rolled
forward can be overwritten by it (LWW puts cannot). Namespace declarations go with the journal
(or just before a one-group batch); they are idempotent.

Connection failures, timeouts, CLUSTERDOWN, TRYAGAIN and redirections that redis-py could not
settle (a MOVED storm while slots move) are retried: every step of a Cluster batch (all are
idempotent) with exponential backoff (:data:`CLUSTER_RETRIES` retries, up to
:data:`CLUSTER_BACKOFF_CAP_S` between them, about 7 s in all: a node restart), reads by
redis-py itself (it refreshes the slot map and retries). What still fails becomes a
:class:`StorageError` naming the Cluster; a batch cut that way is finished before the same
store's next batch. One Redis server: no retries (as before), errors translated the same way.

TTL: expiry is decided at read time from ``expires_at`` and the ``now`` passed in, exactly as
the reference does, and :meth:`RedisKV.sweep` removes expired items through the expiry index
(on a Cluster: the per-slot indexes found by SCAN on every primary). Every put with an expiry
sets its item's entry (score = its ``expires_at``); a delete, or a put without expiry, leaves
the old entry behind instead of removing it (one command per item saved on the write path).
The sweep therefore reads each due entry's item and removes the item only if it still expires
at or before ``now`` by its own header; a stale entry is dropped when its score comes due and
costs its memory until then. Redis's own key expiry is
not used: ``now`` is the caller's clock (tests and replays use generation times far from the
wall clock) and a record's keys hold items with different expiry times, so a Redis EXPIRE could
drop items a reader at an earlier ``now`` must still see. Expiry-index scores are doubles:
exact for ``expires_at`` below 2**53 µs (the year 2255).

Only this module imports ``redis``; its errors are translated to :class:`StorageError` here.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import urllib.parse
from binascii import crc_hqx, hexlify
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from itertools import chain
from typing import Any

import msgspec

from hopcast.errors import ConfigError, StorageError, StoreClosed
from hopcast.kv.base import (
    CHECKPOINT_NS,
    FLAG_TOMBSTONE,
    HEADER,
    HEADER_SIZE,
    META_NS,
    SCAN_BATCH,
    Item,
    KVStore,
    ReadTxn,
    T,
    WriteTxn,
    expiry,
    time_key,
    visible,
)

try:
    import redis as _redis
    from redis.backoff import ExponentialBackoff
    from redis.cluster import RedisCluster
    from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
    from redis.exceptions import (
        AskError,
        ClusterDownError,
        ClusterError,
        RedisClusterException,
        SlotNotCoveredError,
        TryAgainError,
    )
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError("the Redis backend needs redis-py: pip install 'hopcast[redis]'") from exc

_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:  # the extra installs it; redis-py's own packer (per command in Python) otherwise
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - depends on the installed extras
    _pack_command = None

_header_unpack = HEADER.unpack_from
_time_pack = struct.Struct(">Q").pack
_TIME_BASE = (1 << 63) - 1  # time_key(ts) == _time_pack(_TIME_BASE - ts)
_header_pack = HEADER.pack
_LEN = struct.Struct(">H")

#: What a redis-py call may raise (cluster routing errors are not RedisErrors).
_ERRORS = (_redis.RedisError, RedisClusterException)
#: Errors a Cluster recovers from by itself (a node restarting or failing over, slots moving):
#: worth retrying with backoff.
_TRANSIENT = (
    _redis.ConnectionError,
    _redis.TimeoutError,
    ClusterDownError,
    TryAgainError,
    AskError,  # MovedError too
    ClusterError,  # "TTL exhausted": redirections without end while slots move
    SlotNotCoveredError,
)


#: Errors after which a Cluster's slot map is updated: a slot is served elsewhere now (MOVED:
#: that slot's owner is recorded; ASK: retried, the migration ends it), or a node did not
#: answer (a replica may have taken over: the whole map is read again).
_REROUTE = (AskError, _redis.ConnectionError, _redis.TimeoutError)


def _is_error(result: object) -> bool:
    return isinstance(result, BaseException)


#: Keys read per round trip by ``count`` (it reads everything in range anyway).
COUNT_BATCH = 1000

#: Expired items removed per sweep script.
SWEEP_CHUNK = 1000

#: URL schemes of a Redis Cluster (the ``+cluster`` is removed before redis-py sees the URL).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

#: Retries of a step of a Cluster batch after a connection error, timeout, CLUSTERDOWN or
#: redirection, with exponential backoff from :data:`CLUSTER_BACKOFF_BASE_S` up to the cap:
#: about 7 s in all, which rides out a node restart; a longer outage is a StorageError and the
#: writer's next batch finishes this one.
CLUSTER_RETRIES = 8
CLUSTER_BACKOFF_BASE_S = 0.05
CLUSTER_BACKOFF_CAP_S = 2.0

#: A Cluster node that does not accept a connection, or answer a command, within these many
#: seconds is failed (and the step retried); one server keeps redis-py's defaults (none).
CLUSTER_CONNECT_TIMEOUT_S = 5.0
CLUSTER_TIMEOUT_S = 30.0

#: A journal entry older than this (server time) belongs to a writer that stopped before
#: finishing it: any store opened on the Cluster rolls it forward. A live writer finishes its
#: batch in milliseconds; younger entries are waited for (up to this long) instead.
JOURNAL_GRACE_MS = 5_000

#: One page of a record: keys in lexicographic range (forward or reverse) and their values.
_PAGE = """
local ks
if ARGV[4] == '1' then
  ks = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[2], ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
else
  ks = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
end
if #ks == 0 then return {ks, {}} end
return {ks, redis.call('HMGET', KEYS[2], unpack(ks))}
"""

#: Arguments a script passes to one ``redis.call`` at most: Lua's ``unpack`` refuses more than
#: a few thousand values (LUAI_MAXCSTACK is 8000 in Redis), so variadic commands are chunked.
#: Even, so that field/value and score/member pairs never split.
_LUA_CHUNK = 1000

#: The write shared by the one-server batch and the Cluster's per-slot groups. ARGV is read in
#: sections, each led by its count (all arguments are strings; counts are decimal):
#:
#: 1. records: count, then per record: its sorted set's index in KEYS (the hash follows it),
#:    the number of puts, (item key, blob) per put, the number of deletes, item key per delete.
#:    Puts and deletes are unconditional and each item appears once per batch (the transaction
#:    coalesces), so a record is one variadic HDEL + ZREM and one HSET + ZADD.
#: 2. conditional puts in the layout of earlier releases (a journal they left): count, then
#:    (key index, item key, blob, expiry score or '', expiry member) per put; written only if
#:    the blob's (ts, token) header is strictly newer than the stored one. Now always 0.
#: 3. the expiry index: count of (score, member) pairs, then the pairs (one variadic ZADD).
#: 4. namespaces to declare if absent: count, then names (only with a ``meta`` key).
#: 5. checkpoints: count of (source, position) pairs, then the pairs (only with a ``cp`` key).
#: 6. per record: its key index, its expiry-member prefix, the number of conditional puts
#:    (``put_lww``) and (item key, blob, expiry score or '') per put, then the number of list
#:    entries (``put_indexed``) and (item key ``time_key(ts) ‖ suffix``, blob, expiry score
#:    or '', hint) per entry. Last,
#:    so that a journal written before this section existed still parses. A record is one
#:    HMGET of what it checks, then one variadic HDEL + ZREM, HSET and ZADD.
#:
#:    A conditional put is written only if its (ts, token) is strictly newer than the stored
#:    item's. A list entry is checked against its *marker*: the field ``\xff ‖ suffix`` of the
#:    list record's hash (never in the sorted set, so no read sees it), the header of the
#:    newest write of that entry, tombstones included. A write strictly newer than the marker
#:    removes the entry the marker places (or, with no marker yet -- edges bulk loaded without
#:    one -- the hint: the entry the writer read), with its expiry-index entry; writes
#:    ``time_key(ts) ‖ suffix`` unless it is a tombstone; and becomes the marker. Each list
#:    thus converges to its newest write in whatever order concurrent writers' scripts run, on
#:    one server and per slot of a Cluster. A live entry's marker goes with the entry when the
#:    sweep removes it; a tombstone's marker has its own expiry-index entry.
#: 7. one server only: items with time-ordered lists (``put_indexed``): the count of
#:    (key index, expiry-member prefix) pairs of the records named below, the pairs, then the
#:    number of items and per item: key index, item key, blob, expiry score or '', time key
#:    (``time_key(ts)``), the number of lists, and per list: key index, suffix, the entry's
#:    header or '' when it is the item's, expiry score or ''. The script reads the item: if
#:    the write is strictly newer, it writes the item, removes the entries the *stored* item
#:    places (``time_key(stored ts) ‖ suffix`` in every list, with their expiry-index
#:    entries) and, unless it is a tombstone, writes ``time_key(ts) ‖ suffix``. Decided from
#:    what is stored when the script runs, so concurrent writers leave the winner's entries
#:    only, with no marker (one script sees every record of the batch).#:
#: A delete or a put without expiry leaves the item's expiry-index entry behind: the sweep
#: reads the item before removing it, so a stale entry only costs its memory until its score
#: comes due (see :meth:`RedisKV.sweep`).
_APPLY = (
    f"local CHUNK = {_LUA_CHUNK}\n"
    + """
local function many(cmd, key, args, first, last)
  local total = 0
  for i = first, last, CHUNK do
    total = total + redis.call(cmd, key, unpack(args, i, math.min(i + CHUNK - 1, last)))
  end
  return total
end
local function hmget(h, ks)
  if #ks <= CHUNK then return redis.call('HMGET', h, unpack(ks)) end
  local out = {}
  for first = 1, #ks, CHUNK do
    local vs = redis.call('HMGET', h, unpack(ks, first, math.min(first + CHUNK - 1, #ks)))
    for j = 1, #vs do out[#out + 1] = vs[j] end
  end
  return out
end
local function newer(new, old)
  for i = 1, 16 do
    local a, b = string.byte(new, i), string.byte(old, i)
    if i == 1 or i == 9 then a = bit.bxor(a, 128); b = bit.bxor(b, 128) end
    if a ~= b then return a > b end
  end
  return false
end
-- the time key of a header's ts: 2**63 - 1 - ts, big-endian (ts >= 0 flips the low 63 bits)
local function inv(header)
  local b = {string.byte(header, 1, 8)}
  b[1] = bit.bxor(b[1], 127)
  for j = 2, 8 do b[j] = bit.bxor(b[j], 255) end
  return string.char(unpack(b))
end
local function apply(exp, cp, meta)
  local i = 2
  for _ = 1, tonumber(ARGV[1]) do
    local k = tonumber(ARGV[i])
    local z, h = KEYS[k], KEYS[k + 1]
    local n = tonumber(ARGV[i + 1])
    i = i + 2
    if n > 0 then
      local last = i + 2 * n - 1
      -- HSET counts the fields it added: only those need an entry in the sorted set
      if many('HSET', h, ARGV, i, last) > 0 then
        local zs = {}
        for j = i, last, 2 do zs[#zs + 1] = '0'; zs[#zs + 1] = ARGV[j] end
        many('ZADD', z, zs, 1, #zs)
      end
      i = last + 1
    end
    n = tonumber(ARGV[i])
    i = i + 1
    if n > 0 then
      local last = i + n - 1
      if many('HDEL', h, ARGV, i, last) > 0 then many('ZREM', z, ARGV, i, last) end
      i = last + 1
    end
  end
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    local k = tonumber(ARGV[i])
    local z, h, key, blob = KEYS[k], KEYS[k + 1], ARGV[i + 1], ARGV[i + 2]
    local old = redis.call('HGET', h, key)
    if not old or newer(blob, old) then
      redis.call('HSET', h, key, blob)
      redis.call('ZADD', z, 0, key)
      if ARGV[i + 3] ~= '' then redis.call('ZADD', exp, ARGV[i + 3], ARGV[i + 4]) end
    end
    i = i + 5
  end
  n = tonumber(ARGV[i])
  i = i + 1
  if n > 0 then
    many('ZADD', exp, ARGV, i, i + 2 * n - 1)
    i = i + 2 * n
  end
  if meta then
    n = tonumber(ARGV[i])
    i = i + 1
    for j = i, i + n - 1 do redis.call('HSETNX', meta, ARGV[j], '') end
    i = i + n
  end
  if cp then
    n = tonumber(ARGV[i])
    i = i + 1
    if n > 0 then many('HSET', cp, ARGV, i, i + 2 * n - 1) end
    i = i + 2 * n
  end
  -- 6. per record: conditional puts, then list entries (see the section's comment)
  n = tonumber(ARGV[i] or '0')
  i = i + 1
  local expadd, expdel = {}, {}
  for _ = 1, n do
    local k = tonumber(ARGV[i])
    local z, h, pre = KEYS[k], KEYS[k + 1], ARGV[i + 1]
    local hset, zadd, hdel = {}, {}, {}
    local nc = tonumber(ARGV[i + 2])
    i = i + 3
    if nc > 0 then
      local ks = {}
      for j = i, i + 3 * nc - 1, 3 do ks[#ks + 1] = ARGV[j] end
      local olds = hmget(h, ks)
      for j = 1, nc do
        local key, blob, old = ARGV[i], ARGV[i + 1], olds[j]
        if not old or newer(blob, old) then
          hset[#hset + 1] = key; hset[#hset + 1] = blob
          zadd[#zadd + 1] = '0'; zadd[#zadd + 1] = key
          if ARGV[i + 2] ~= '' then
            expadd[#expadd + 1] = ARGV[i + 2]; expadd[#expadd + 1] = pre .. key
          end
        end
        i = i + 3
      end
    end
    local ni = tonumber(ARGV[i])
    i = i + 1
    if ni > 0 then
      local ks = {}
      for j = i, i + 4 * ni - 1, 4 do ks[#ks + 1] = '\\255' .. string.sub(ARGV[j], 9) end
      local marks = hmget(h, ks)
      for j = 1, ni do
        local nk, blob, score, m = ARGV[i], ARGV[i + 1], ARGV[i + 2], marks[j]
        if not m or newer(blob, m) then
          local old = ARGV[i + 3]
          if m then
            if string.byte(m, 25) % 2 == 0 then old = inv(m) .. string.sub(nk, 9) else old = '' end
          end
          local tomb = string.byte(blob, 25) % 2 == 1
          if old ~= '' and (tomb or old ~= nk) then
            hdel[#hdel + 1] = old
            expdel[#expdel + 1] = pre .. old
          end
          hset[#hset + 1] = ks[j]; hset[#hset + 1] = string.sub(blob, 1, 25)
          if tomb then
            if score ~= '' then
              expadd[#expadd + 1] = score; expadd[#expadd + 1] = pre .. ks[j]
            end
          else
            hset[#hset + 1] = nk; hset[#hset + 1] = blob
            zadd[#zadd + 1] = '0'; zadd[#zadd + 1] = nk
            if score ~= '' then
              expadd[#expadd + 1] = score; expadd[#expadd + 1] = pre .. nk
            end
          end
        end
        i = i + 4
      end
    end
    if #hdel > 0 then
      many('HDEL', h, hdel, 1, #hdel)
      many('ZREM', z, hdel, 1, #hdel)
    end
    if #hset > 0 then many('HSET', h, hset, 1, #hset) end
    if #zadd > 0 then many('ZADD', z, zadd, 1, #zadd) end
  end
  -- 7. items with time-ordered lists, one server (see the section's comment)
  n = tonumber(ARGV[i] or '0')
  i = i + 1
  if n > 0 then
    local front = {}
    for j = i, i + 2 * n - 1, 2 do front[tonumber(ARGV[j])] = ARGV[j + 1] end
    i = i + 2 * n
    local order, acc = {}, {}
    local function rec(k)
      local r = acc[k]
      if not r then
        r = {{}, {}, {}}
        acc[k] = r
        order[#order + 1] = k
      end
      return r
    end
    local ne = tonumber(ARGV[i])
    i = i + 1
    for _ = 1, ne do
      local k, key, blob = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
      local score, t = ARGV[i + 3], ARGV[i + 4]
      local nl = tonumber(ARGV[i + 5])
      i = i + 6
      local old = redis.call('HGET', KEYS[k + 1], key)
      if not old or newer(blob, old) then
        local r = rec(k)
        local hs, zs = r[1], r[2]
        hs[#hs + 1] = key; hs[#hs + 1] = blob
        zs[#zs + 1] = '0'; zs[#zs + 1] = key
        if score ~= '' then
          expadd[#expadd + 1] = score; expadd[#expadd + 1] = front[k] .. key
        end
        local was = false
        if old and string.byte(old, 25) % 2 == 0 then was = inv(old) end
        local tomb = string.byte(blob, 25) % 2 == 1
        for j = i, i + 4 * nl - 1, 4 do
          local lk, s = tonumber(ARGV[j]), ARGV[j + 1]
          local lr = rec(lk)
          if was and (tomb or was ~= t) then
            local gone = was .. s
            lr[3][#lr[3] + 1] = gone
            expdel[#expdel + 1] = front[lk] .. gone
          end
          if not tomb then
            local nk, b = t .. s, blob
            if ARGV[j + 2] ~= '' then b = ARGV[j + 2] .. string.sub(blob, 26) end
            local lh, lz = lr[1], lr[2]
            lh[#lh + 1] = nk; lh[#lh + 1] = b
            lz[#lz + 1] = '0'; lz[#lz + 1] = nk
            if ARGV[j + 3] ~= '' then
              expadd[#expadd + 1] = ARGV[j + 3]; expadd[#expadd + 1] = front[lk] .. nk
            end
          end
        end
      end
      i = i + 4 * nl
    end
    for _, k in ipairs(order) do
      local r = acc[k]
      if #r[3] > 0 then
        many('HDEL', KEYS[k + 1], r[3], 1, #r[3])
        many('ZREM', KEYS[k], r[3], 1, #r[3])
      end
      if #r[1] > 0 then many('HSET', KEYS[k + 1], r[1], 1, #r[1]) end
      if #r[2] > 0 then many('ZADD', KEYS[k], r[2], 1, #r[2]) end
    end
  end
  if #expdel > 0 then many('ZREM', exp, expdel, 1, #expdel) end
  if #expadd > 0 then many('ZADD', exp, expadd, 1, #expadd) end
  return 1
end
"""
)

#: One atomic write batch on one server. KEYS[1..3] = exp, cp, meta; then (zset, hash) pairs.
_COMMIT = _APPLY + "return apply(KEYS[1], KEYS[2], KEYS[3])\n"

#: One slot's share of a batch on a Cluster. KEYS[1] = the slot's expiry index, then
#: (zset, hash) pairs of that slot; no namespace or checkpoint sections.
_GROUP = _APPLY + "return apply(KEYS[1], nil, nil)\n"

#: The stored blobs of items, for a transaction's read-ahead (one server): one HMGET per
#: record. KEYS = the records' hashes; ARGV = per hash, the number of its item keys, then the
#: keys. Returns the blobs in ARGV's order, false for a missing item.
_READ = (
    f"local CHUNK = {_LUA_CHUNK}\n"
    + """
local out, i = {}, 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  local last = i + n - 1
  for first = i, last, CHUNK do
    local vs = redis.call('HMGET', KEYS[k], unpack(ARGV, first, math.min(first + CHUNK - 1, last)))
    for j = 1, #vs do out[#out + 1] = vs[j] end
  end
  i = i + n
end
return out
"""
)

#: The slot-group script of releases before the sectioned ARGV above, kept to roll forward a
#: write journal such a release left behind: ARGV holds operations of 6 fields each (op, key
#: index, item key, blob, expires_at, index member); 'P' put, 'L' put if newer, 'D' delete.
_LEGACY_GROUP = """
local function newer(new, old)
  for i = 1, 16 do
    local a, b = string.byte(new, i), string.byte(old, i)
    if i == 1 or i == 9 then a = bit.bxor(a, 128); b = bit.bxor(b, 128) end
    if a ~= b then return a > b end
  end
  return false
end
local exp = KEYS[1]
for i = 1, #ARGV, 6 do
  local op, k = ARGV[i], tonumber(ARGV[i + 1])
  local z, h, key, m = KEYS[k], KEYS[k + 1], ARGV[i + 2], ARGV[i + 5]
  if op == 'D' then
    if redis.call('HDEL', h, key) == 1 then
      redis.call('ZREM', z, key)
      redis.call('ZREM', exp, m)
    end
  else
    local blob = ARGV[i + 3]
    local old = op == 'L' and redis.call('HGET', h, key)
    if not old or newer(blob, old) then
      redis.call('HSET', h, key, blob)
      redis.call('ZADD', z, 0, key)
      if ARGV[i + 4] == '0' then
        redis.call('ZREM', exp, m)
      else
        redis.call('ZADD', exp, ARGV[i + 4], m)
      end
    end
  end
end
return 1
"""

#: Open a journal entry (Cluster). KEYS = jnl, jage, meta; ARGV = batch id, journal, then the
#: namespaces the batch declares.
_BEGIN = """
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
for i = 3, #ARGV do redis.call('HSETNX', KEYS[3], ARGV[i], '') end
return 1
"""

#: Advance the checkpoints (Cluster), closing the batch's journal entry first when it has one.
#: KEYS = cp, jnl, jage; ARGV = batch id ('' = no journal), then (source, position) pairs.
#: Returns 0 if the entry was already closed (another store finished the batch).
_FINISH = """
if ARGV[1] ~= '' then
  if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
  redis.call('ZREM', KEYS[3], ARGV[1])
end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

#: The journal's entries with their age in ms (server clock). KEYS = jage.
_AGES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  out[#out + 1] = entries[i]
  out[#out + 1] = tostring(now - tonumber(entries[i + 1]))
end
return out
"""

#: Count the visible items of a record in a key range, on the server (no item leaves Redis):
#: not a tombstone (flags, header byte 25) and not expired (expires_at, bytes 17-24, is 0 or
#: later than now). KEYS = zset, hash; ARGV = lex min, lex max, now (8 bytes big-endian, sign
#: bit flipped), page size, pages per call. Returns {count, last key seen or false when the
#: range is exhausted}: a call reads at most pages x page size items, so a huge record does
#: not block the server for long; the caller continues after the last key.
_COUNT = """
local function later(blob, now)
  for i = 1, 8 do
    local a, b = string.byte(blob, 16 + i), string.byte(now, i)
    if i == 1 then a = bit.bxor(a, 128) end
    if a ~= b then return a > b end
  end
  return false
end
local never = string.rep('\0', 8)
local lo, n, count = ARGV[1], tonumber(ARGV[4]), 0
for _ = 1, tonumber(ARGV[5]) do
  local ks = redis.call('ZRANGEBYLEX', KEYS[1], lo, ARGV[2], 'LIMIT', 0, n)
  if #ks == 0 then return {count, false} end
  local vs = redis.call('HMGET', KEYS[2], unpack(ks))
  for i = 1, #ks do
    local v = vs[i]
    if v and string.byte(v, 25) % 2 == 0 then
      if string.sub(v, 17, 24) == never or later(v, ARGV[3]) then count = count + 1 end
    end
  end
  if #ks < n then return {count, false} end
  lo = '(' .. ks[#ks]
end
return {count, string.sub(lo, 2)}
"""

#: Pages of :data:`COUNT_BATCH` items a count script reads per call (~1.3 µs of server time
#: per item measured here: a call holds the server a few ms at most).
COUNT_PAGES = 2

_NOW = struct.Struct(">Q")

#: Remove expired items. KEYS[1] = exp, then (zset, hash) pairs; ARGV[1] = now, ARGV[2] = now
#: as 8 bytes (as in :data:`_COUNT`), then (index member, item key) per pair. An index entry
#: whose score has come due goes; its item goes with it only if the item is still stored and
#: expires (per its own header) at or before now: a delete, or a rewrite without expiry, leaves
#: its old entry behind, and a rewrite with expiry moves the entry's score, so an entry never
#: removes an item that is not due.
_SWEEP = """
local function later(blob, now)
  for i = 1, 8 do
    local a, b = string.byte(blob, 16 + i), string.byte(now, i)
    if i == 1 then a = bit.bxor(a, 128) end
    if a ~= b then return a > b end
  end
  return false
end
local never = string.rep('\0', 8)
local now = tonumber(ARGV[1])
local removed = 0
for j = 2, #KEYS, 2 do
  local m, key = ARGV[j + 1], ARGV[j + 2]
  local s = redis.call('ZSCORE', KEYS[1], m)
  if s and tonumber(s) <= now then
    redis.call('ZREM', KEYS[1], m)
    local v = redis.call('HGET', KEYS[j + 1], key)
    if v and string.sub(v, 17, 24) ~= never and not later(v, ARGV[2]) then
      redis.call('HDEL', KEYS[j + 1], key)
      -- a list's marker (see _APPLY) is not in the sorted set and is not an item
      if redis.call('ZREM', KEYS[j], key) == 1 then
        removed = removed + 1
        -- the marker of a list entry that is the newest write of its suffix goes with it
        if #key > 8 then
          local mk = '\\255' .. string.sub(key, 9)
          local mv = redis.call('HGET', KEYS[j + 1], mk)
          if mv and #mv == 25 and string.sub(mv, 1, 16) == string.sub(v, 1, 16)
              and not redis.call('ZSCORE', KEYS[j], mk) then
            redis.call('HDEL', KEYS[j + 1], mk)
          end
        end
      end
    end
  end
end
return removed
"""

# A journal: the checkpoints and every slot group's (keys, args) of one Cluster batch.
_Journal = tuple[list[tuple[str, bytes]], list[tuple[list[bytes], list[bytes | int]]]]
_journal_encode = msgspec.msgpack.Encoder().encode
_journal_decode = msgspec.msgpack.Decoder(_Journal).decode

_slot_tags: list[bytes] = []
_slot_tags_lock = threading.Lock()


def slot_tag(slot: int) -> bytes:
    """A short string whose Cluster hash slot is ``slot`` (the table is built on first use)."""
    if not _slot_tags:
        with _slot_tags_lock:
            if not _slot_tags:
                table: list[bytes | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
                missing, i = REDIS_CLUSTER_HASH_SLOTS, 0
                while missing:
                    tag = b"%x" % i
                    s = crc_hqx(tag, 0) % REDIS_CLUSTER_HASH_SLOTS  # key_slot without braces
                    if table[s] is None:
                        table[s] = tag
                        missing -= 1
                    i += 1
                _slot_tags.extend(t for t in table if t is not None)
    return _slot_tags[slot]


def _decode(key: bytes, blob: bytes) -> Item:
    ts, token, expires_at, flags = _header_unpack(blob)
    return Item(key, blob[HEADER_SIZE:], ts, token, expires_at, bool(flags & FLAG_TOMBSTONE))


def _encode(value: bytes, ts: int, token: int, expires_at: int, tombstone: bool) -> bytes:
    return _header_pack(ts, token, expires_at, FLAG_TOMBSTONE if tombstone else 0) + value


def _member(ns: str, rid: bytes, key: bytes) -> bytes:
    """The expiry index's name for an item: ``len(ns) ‖ ns ‖ len(rid) ‖ rid ‖ key``."""
    nsb = ns.encode()
    if len(nsb) > 0xFFFF or len(rid) > 0xFFFF:
        raise StorageError("namespace or record id too long (the limit is 65535 bytes)")
    return _LEN.pack(len(nsb)) + nsb + _LEN.pack(len(rid)) + rid + key


def _unmember(member: bytes) -> tuple[str, bytes, bytes]:
    (n,) = _LEN.unpack_from(member)
    ns = member[2 : 2 + n].decode()
    (r,) = _LEN.unpack_from(member, 2 + n)
    rid = member[4 + n : 4 + n + r]
    return ns, rid, member[4 + n + r :]


def _lex_bounds(
    start: bytes | None, stop: bytes | None, after: bytes | None, reverse: bool
) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX (min, max) for ``start <= key < stop``, resuming past ``after``."""
    lo = b"-" if start is None else b"[" + start
    hi = b"+" if stop is None else b"(" + stop
    if after is not None:
        if reverse:
            hi = b"(" + after
        else:
            lo = b"(" + after
    return lo, hi


def _glob_escape(raw: bytes) -> bytes:
    """``raw`` as a literal in a SCAN MATCH pattern."""
    out = bytearray()
    for c in raw:
        if c in b"*?[]\\":
            out += b"\\"
        out.append(c)
    return bytes(out)


def _split_prefix(url: str) -> tuple[str | None, str]:
    """(the ``prefix`` query parameter or None, the URL without it) -- redis-py would pass an
    unknown parameter on to the connection and fail."""
    base, sep, query = url.partition("?")
    if not sep:
        return None, url
    prefix: str | None = None
    kept = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "prefix":
            prefix = urllib.parse.unquote(value)
        elif part:
            kept.append(part)
    return prefix, base + ("?" + "&".join(kept) if kept else "")


def cluster_url(url: str) -> str | None:
    """The redis-py URL of a ``redis+cluster://`` (or ``rediss+cluster://``) URL, else None."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme)
    return None if plain is None or not sep else f"{plain}://{rest}"


class RedisKV(KVStore):
    """Redis-backed store, on one server or a Redis Cluster (see the module docstring).

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS, ``unix://`` for a socket), or
            ``redis+cluster://host:port`` (``rediss+cluster://``) for a Redis Cluster.
        prefix: prefix of every key, so several stores (or tests) share one Redis; default:
            the URL's ``prefix`` query parameter, else ``hopcast:``. It must not contain ``{``
            or ``}`` (they would change the Cluster hash tag).
        sync: accepted for symmetry with LMDB (``Graph.open`` passes it); durability on Redis
            is the server's own setting (``appendfsync``).
        journal_grace_ms: on a Cluster, how old an unfinished journal entry must be before
            this store, when it opens, rolls it forward (see :meth:`recover`).
        options: further keyword arguments for ``redis.Redis.from_url`` (or
            ``redis.cluster.RedisCluster.from_url``).
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str | None = None,
        *,
        sync: bool = True,
        journal_grace_ms: int = JOURNAL_GRACE_MS,
        **options: Any,
    ) -> None:
        url_prefix, client_url = _split_prefix(url)
        if prefix is None:
            prefix = "hopcast:" if url_prefix is None else url_prefix
        if "{" in prefix or "}" in prefix:
            raise ConfigError(f"Redis key prefix {prefix!r} must not contain '{{' or '}}'")
        self.url = url
        self.prefix = prefix
        self._p = prefix.encode()
        #: per namespace: the front of its records' sorted set and hash names (see _keys)
        self._fronts: dict[str, tuple[bytes, bytes]] = {}
        #: per Cluster slot, the name of its expiry index (see _exp_of)
        self._exp_names: dict[int, bytes] = {}
        self._closed = False
        self._lock = threading.RLock()
        plain = cluster_url(client_url)
        self.cluster = plain is not None
        #: Journal entries this store opened and could not finish (rolled forward first).
        self._pending: list[bytes] = []
        if self.cluster:
            g = self._p + b"{" + self._p + b"g}"  # never an empty tag, even with no prefix
            self._meta, self._cp, self._exp = g + b"meta", g + b"cp", b""
            self._jnl, self._jage = g + b"jnl", g + b"jage"
        else:
            self._meta, self._cp, self._exp = self._p + b"meta", self._p + b"cp", self._p + b"exp"
            self._jnl = self._jage = b""
        try:
            client: Any
            if plain is not None:
                # Per connection: a couple of quick reconnects; a batch's steps retry longer
                # (_retrying). Timeouts, so that a hung node is an error and not a hang.
                backoff = ExponentialBackoff(CLUSTER_BACKOFF_CAP_S, CLUSTER_BACKOFF_BASE_S)
                options.setdefault("retry", Retry(backoff, 2))
                options.setdefault("socket_connect_timeout", CLUSTER_CONNECT_TIMEOUT_S)
                options.setdefault("socket_timeout", CLUSTER_TIMEOUT_S)
                client = RedisCluster.from_url(plain, **options)
            else:
                client = _redis.Redis.from_url(client_url, **options)
            self._r: Any = client
            self._page: Any = client.register_script(_PAGE)
            self._commit: Any = client.register_script(_COMMIT)
            self._group: Any = client.register_script(_GROUP)
            self._legacy_group: Any = client.register_script(_LEGACY_GROUP)
            self._read_ahead: Any = client.register_script(_READ)
            self._begin: Any = client.register_script(_BEGIN)
            self._finish: Any = client.register_script(_FINISH)
            self._ages: Any = client.register_script(_AGES)
            self._sweep: Any = client.register_script(_SWEEP)
            self._count: Any = client.register_script(_COUNT)
            if self.cluster:
                # Pipelined EVALSHAs do not load a missing script; load them on every primary.
                self._load_scripts()
            raw: dict[bytes, bytes] = client.hgetall(self._meta)
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {url!r}: {exc}") from exc
        except _ERRORS as exc:
            raise StorageError(f"cannot open Redis at {url}: {exc}") from exc
        self._ttls: dict[str, int | None] = {
            k.decode(): (int(v) if v else None) for k, v in raw.items()
        }
        if self.cluster:
            self.recover(journal_grace_ms)

    # keys ----------------------------------------------------------------------------------

    def _keys(self, ns: str, rid: bytes) -> tuple[bytes, bytes]:
        fronts = self._fronts.get(ns)
        if fronts is None:
            tag = b"{" + hexlify(ns.encode()) + b":"
            fronts = self._fronts[ns] = (self._p + b"z" + tag, self._p + b"h" + tag)
        tail = hexlify(rid) + b"}"
        return fronts[0] + tail, fronts[1] + tail

    def _exp_of(self, slot: int) -> bytes:
        """The Cluster expiry index of ``slot``."""
        name = self._exp_names.get(slot)
        if name is None:
            name = self._exp_names[slot] = self._p + b"x{" + slot_tag(slot) + b"}"
        return name

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed(f"Redis store at {self.url} is closed")

    def _fail(self, what: str, exc: BaseException) -> StorageError:
        where = f"Redis Cluster at {self.url}" if self.cluster else f"Redis at {self.url}"
        return StorageError(f"{what} ({where}): {exc}")

    def _load_scripts(self) -> None:
        scripts = [self._page, self._group, self._begin, self._finish, self._ages, self._sweep]
        scripts += [self._count, self._commit, self._legacy_group, self._read_ahead]
        for script in scripts:
            script.sha = self._r.script_load(script.script)

    def _queue(self, pipe: Any, script: Any, keys: list[bytes], args: list[Any]) -> None:
        """Queue a script call in ``pipe`` as a plain EVALSHA. (A Cluster pipeline refuses
        ``evalsha()``, and ``Script(client=pipe)`` makes a one-server pipeline ask SCRIPT
        EXISTS first: one more round trip per pipeline.) :meth:`_pipeline` loads the scripts
        when a server does not have them."""
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    def _pipeline(self, fill: Callable[[Any], object]) -> list[Any]:
        """Run the commands ``fill`` queues in one pipeline; results (or errors) in order.

        A script missing on a server (restarted, flushed, or a replica promoted that never
        loaded it) is loaded (on every primary of a Cluster) and the pipeline retried once; the
        pipelined commands are reads and idempotent writes.
        """
        for attempt in range(2):
            pipe = self._r.pipeline(transaction=False)
            fill(pipe)
            results: list[Any] = pipe.execute(raise_on_error=False)
            missing = any(isinstance(r, _redis.exceptions.NoScriptError) for r in results)
            if not (missing and attempt == 0):
                return results
            self._load_scripts()
        raise AssertionError("unreachable")

    # namespaces ----------------------------------------------------------------------------

    def configure(self, ns: str, ttl_us: int | None) -> None:
        self.configure_many({ns: ttl_us})

    def configure_many(self, ttls: dict[str, int | None]) -> None:
        self._check()
        if not ttls:
            return
        mapping = {ns: ("" if ttl is None else str(ttl)) for ns, ttl in ttls.items()}
        try:
            self._r.hset(self._meta, mapping=mapping)
        except _ERRORS as exc:
            raise self._fail("cannot configure namespaces", exc) from exc
        self._ttls.update(ttls)

    def _ns_ttl(self, ns: str) -> tuple[bool, int | None]:
        """(known, ttl), asking Redis when another process may have declared ``ns``."""
        if ns in self._ttls:
            return True, self._ttls[ns]
        try:
            raw = self._r.hget(self._meta, ns)
        except _ERRORS as exc:
            raise self._fail(f"cannot read namespace {ns!r}", exc) from exc
        if raw is None:
            return False, None
        ttl = int(raw) if raw else None
        self._ttls[ns] = ttl
        return True, ttl

    def ttl(self, ns: str) -> int | None:
        return self._ns_ttl(ns)[1]

    def namespaces(self) -> list[str]:
        self._check()
        try:
            raw: list[bytes] = self._r.hkeys(self._meta)
        except _ERRORS as exc:
            raise self._fail("cannot list namespaces", exc) from exc
        names = {k.decode() for k in raw}
        return sorted(names - {CHECKPOINT_NS, META_NS})

    # transactions --------------------------------------------------------------------------

    @contextmanager
    def reader(self) -> Iterator[ReadTxn]:
        self._check()
        yield _RedisRead(self)

    @contextmanager
    def writer(self) -> Iterator[WriteTxn]:
        self._check()
        with self._lock:
            if self._pending:
                # A batch of ours failed half-way: finish it before this block reads anything,
                # or it would decide its writes from a half-applied state.
                self._roll_forward(list(self._pending))
            txn = _RedisWrite(self)
            yield txn
            txn.commit()

    # Cluster batches -----------------------------------------------------------------------

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried with exponential backoff on a Cluster's transient errors
        (connection lost, timeout, CLUSTERDOWN, TRYAGAIN, redirections left after redis-py's
        own handling): :data:`CLUSTER_RETRIES` retries, sleeping from
        :data:`CLUSTER_BACKOFF_BASE_S` up to :data:`CLUSTER_BACKOFF_CAP_S`. Only for idempotent
        steps (every step of a Cluster batch is).

        Raises:
            StorageError: when the retries are exhausted, or at once for any other error.
        """
        delay = CLUSTER_BACKOFF_BASE_S
        for attempt in range(CLUSTER_RETRIES + 1):
            try:
                return call()
            except _TRANSIENT as exc:
                if attempt == CLUSTER_RETRIES:
                    raise self._fail(f"{what} after {attempt + 1} attempts", exc) from exc
            except _ERRORS as exc:
                raise self._fail(what, exc) from exc
            time.sleep(delay)
            delay = min(delay * 2, CLUSTER_BACKOFF_CAP_S)
        raise AssertionError("unreachable")

    def _apply_groups(self, groups: list[tuple[list[bytes], list[bytes | int]]]) -> None:
        """Send every slot group, all primaries at once; groups that failed on a transient
        error are sent again (with backoff, see :meth:`_retrying`).

        Raises:
            StorageError: if a group could not be applied (the others may have been).
        """
        todo = list(groups)

        def attempt() -> None:
            results = self._send_groups(todo)
            failed = [(g, r) for g, r in zip(todo, results, strict=True) if _is_error(r)]
            if not failed:
                todo.clear()
                return
            todo[:] = [g for g, _ in failed]
            errors = [r for _, r in failed]
            if any(isinstance(e, _redis.exceptions.NoScriptError) for e in errors):
                self._load_scripts()
            nodes = self._r.nodes_manager
            for e in errors:
                if isinstance(e, _redis.exceptions.MovedError):
                    # The slot's new owner, recorded as redis-py records a MOVED. Not a re-read of
                    # the whole map: that disconnects every pool's connections, those other
                    # threads are using too (a reader then fails mid-reply).
                    nodes.update_moved_exception(e)
                    with suppress(*_ERRORS):
                        nodes.get_node_from_slot(e.slot_id)
            if any(isinstance(e, _REROUTE) and not isinstance(e, AskError) for e in errors):
                with suppress(*_ERRORS):  # a node did not answer (a replica may have taken over)
                    nodes.initialize()
            first = next((e for e in errors if isinstance(e, _TRANSIENT)), errors[0])
            if isinstance(first, _redis.exceptions.NoScriptError):
                first = TryAgainError(str(first))  # type: ignore[no-untyped-call]  # loaded now: retry
            if len(failed) < len(results):
                # Keep the exception's type (transient or not) but say how much is missing.
                first.args = (f"{len(failed)} of {len(groups)} slot groups not applied: {first}",)
            raise first

        self._retrying("commit failed", attempt)

    def _send_groups(self, groups: list[tuple[list[bytes], list[bytes | int]]]) -> list[Any]:
        """Each slot group's script result or error, in order (see :meth:`_send_per_node`)."""
        sha, legacy = self._group.sha, self._legacy_group.sha
        commands: list[tuple[int, tuple[Any, ...]]] = []
        for keys, args in groups:
            # a journal left by an older release holds its 6-field operations
            script = legacy if args and isinstance(args[0], bytes) else sha
            commands.append((key_slot(keys[0]), ("EVALSHA", script, len(keys), *keys, *args)))
        return self._send_per_node(commands)

    def _send_per_node(self, commands: list[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        """Each ``(slot, command)``'s reply or error, in order, on a Cluster. The commands of
        one primary go down one connection as one packed write (redis-py's cluster pipeline
        works out every command's slot and node from its keys again), written to every primary
        before any reply is read, so the nodes work concurrently. A command whose slot lives
        elsewhere answers MOVED/ASK; a lost connection fails that primary's commands with the
        connection error. Both are transient for the caller.
        """
        by_node: dict[str, tuple[Any, list[int]]] = {}
        nodes = self._r.nodes_manager
        for i, (slot, _) in enumerate(commands):
            node = nodes.get_node_from_slot(slot)
            entry = by_node.get(node.name)
            if entry is None:
                entry = by_node[node.name] = (node, [])
            entry[1].append(i)
        results: list[Any] = [None] * len(commands)
        sent: list[tuple[Any, Any, list[int]]] = []  # (pool, connection, command indices)
        unread: set[int] = set()  # connections (by id) with replies still on the wire
        try:
            for node, indices in by_node.values():
                try:
                    pool = self._r.get_redis_connection(node).connection_pool
                    conn = pool.get_connection()
                except _ERRORS as exc:
                    for i in indices:
                        results[i] = exc
                    continue
                sent.append((pool, conn, indices))
                try:
                    if _pack_command is not None:  # a Cluster batch is thousands of commands
                        packed = b"".join([_pack_command(commands[i][1]) for i in indices])
                        conn.send_packed_command([packed])
                    else:
                        conn.send_packed_command(
                            conn.pack_commands([commands[i][1] for i in indices])
                        )
                    unread.add(id(conn))
                except _ERRORS as exc:
                    conn.disconnect()
                    for i in indices:
                        results[i] = exc
            for _, conn, indices in sent:
                if id(conn) not in unread:
                    continue
                for n, i in enumerate(indices):
                    try:
                        results[i] = conn.read_response()
                    except _redis.ResponseError as exc:
                        results[i] = exc
                    except _ERRORS as exc:
                        for j in indices[n:]:
                            results[j] = exc
                        break
                else:
                    unread.discard(id(conn))
        finally:
            for pool, conn, _ in sent:
                if id(conn) in unread:
                    conn.disconnect()  # replies left unread would answer the next command
                pool.release(conn)
        return results

    def _commit_cluster(
        self,
        groups: list[tuple[list[bytes], list[bytes | int]]],
        checkpoints: list[tuple[str, bytes]],
        declared: list[str],
    ) -> None:
        """Apply a batch on a Cluster (see the module docstring): journal when it spans slots,
        the slot groups, then the checkpoints."""
        if len(groups) <= 1:
            # One slot: the group is atomic by itself, so a crash before the checkpoint leaves
            # the whole batch applied and the replay of it a plain LWW replay.
            if declared:
                self._retrying(
                    "cannot declare namespaces",
                    lambda: self._pipeline(
                        lambda pipe: [pipe.hsetnx(self._meta, ns, "") for ns in declared]
                    ),
                )
            if groups:
                self._apply_groups(groups)
            if checkpoints:
                keys, args = [self._cp, self._jnl, self._jage], [b"", *_flat(checkpoints)]
                self._retrying(
                    "commit failed after its data was written (checkpoint)",
                    lambda: self._finish(keys=keys, args=args),
                )
            return
        batch = os.urandom(12).hex().encode()
        journal = _journal_encode((checkpoints, groups))
        begin = [self._jnl, self._jage, self._meta], [batch, journal, *declared]
        self._retrying("commit failed", lambda: self._begin(keys=begin[0], args=begin[1]))
        self._pending.append(batch)
        self._run_journal(batch, checkpoints, groups)

    def _run_journal(
        self,
        batch: bytes,
        checkpoints: list[tuple[str, bytes]],
        groups: list[tuple[list[bytes], list[bytes | int]]],
    ) -> None:
        """Apply a journaled batch's groups, then close its entry and advance its checkpoints.
        On failure the batch stays in ``_pending`` (and in the journal)."""
        self._apply_groups(groups)
        keys, args = [self._cp, self._jnl, self._jage], [batch, *_flat(checkpoints)]
        self._retrying(
            "commit failed after its data was written (checkpoint)",
            lambda: self._finish(keys=keys, args=args),
        )
        with suppress(ValueError):
            self._pending.remove(batch)

    def _roll_forward(self, batches: list[bytes]) -> int:
        """Finish the journaled ``batches`` still open; returns how many were."""
        if not batches:
            return 0
        raws: list[bytes | None] = self._retrying(
            "cannot read the write journal", lambda: self._r.hmget(self._jnl, batches)
        )
        done = 0
        for batch, raw in zip(batches, raws, strict=True):
            if raw is None:  # finished meanwhile (by us before a lost reply, or by another)
                with suppress(ValueError):
                    self._pending.remove(batch)
                continue
            checkpoints, groups = _journal_decode(raw)
            if batch not in self._pending:
                self._pending.append(batch)
            self._run_journal(batch, checkpoints, groups)
            done += 1
        return done

    def recover(self, grace_ms: int = JOURNAL_GRACE_MS) -> int:
        """Roll forward every batch a writer journaled but did not finish (Cluster only; called
        when the store opens). Entries younger than ``grace_ms`` may belong to a live writer
        and are waited for until they are finished or that old; entries that appear meanwhile
        (live writers keep opening them) are not waited for.

        Returns:
            How many batches were rolled forward.
        """
        self._check()
        if not self.cluster:
            return 0
        rolled = 0
        waiting: set[bytes] | None = None
        while True:
            raw: list[bytes] = self._retrying(
                "cannot read the write journal", lambda: self._ages(keys=[self._jage])
            )
            ages = {raw[i]: int(raw[i + 1]) for i in range(0, len(raw), 2)}
            if waiting is None:
                waiting = set(ages)
            waiting &= ages.keys()  # the others were finished
            stale = [b for b in waiting if ages[b] >= grace_ms]
            if stale:
                with self._lock:
                    rolled += self._roll_forward(stale)
                waiting.difference_update(stale)
            if not waiting:
                return rolled
            time.sleep(0.05)

    # reads ---------------------------------------------------------------------------------

    def _page_of(
        self,
        ns: str,
        rid: bytes,
        start: bytes | None,
        stop: bytes | None,
        after: bytes | None,
        reverse: bool,
        n: int,
    ) -> list[Item]:
        """Up to ``n`` stored items (tombstones and expired included), atomically."""
        z, h = self._keys(ns, rid)
        lo, hi = _lex_bounds(start, stop, after, reverse)
        try:
            ks, vs = self._page(keys=[z, h], args=[lo, hi, n, 1 if reverse else 0])
        except _ERRORS as exc:
            raise self._fail(f"cannot read {ns!r}", exc) from exc
        return [_decode(k, v) for k, v in zip(ks, vs, strict=True) if v is not None]

    def _stream(
        self,
        ns: str,
        rid: bytes,
        start: bytes | None,
        stop: bytes | None,
        reverse: bool,
        batch: int = SCAN_BATCH,
    ) -> Iterator[Item]:
        after: bytes | None = None
        while True:
            self._check()
            items = self._page_of(ns, rid, start, stop, after, reverse, batch)
            yield from items
            if len(items) < batch:
                return
            after = items[-1].key

    # expiry --------------------------------------------------------------------------------

    def _exp_keys(self) -> list[bytes]:
        """Every expiry index: the one key on one server, the per-slot keys of a Cluster (SCAN
        on every primary)."""
        if not self.cluster:
            return [self._exp]
        pattern = _glob_escape(self._p) + b"x{*}"
        found: set[bytes] = set()
        for node in self._r.get_primaries():
            cursor = 0
            while True:
                got, keys = self._r.execute_command(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, target_nodes=node
                )
                # redis-py answers a node-targeted SCAN with {node name: cursor}
                cursor = int(next(iter(got.values())) if isinstance(got, dict) else got)
                found.update(keys)
                if not cursor:
                    break
        return sorted(found)

    def sweep(self, now: int, limit: int | None = None) -> int:
        self._check()
        removed = 0
        when = _NOW.pack((now + (1 << 63)) & 0xFFFF_FFFF_FFFF_FFFF)  # as _COUNT compares it
        try:
            for exp in self._exp_keys():
                while limit is None or removed < limit:
                    n = SWEEP_CHUNK if limit is None else min(SWEEP_CHUNK, limit - removed)
                    members = self._r.zrangebyscore(exp, "-inf", now, start=0, num=n)
                    if not members:
                        break
                    keys: list[bytes] = [exp]
                    args: list[bytes | int] = [now, when]
                    for m in members:
                        ns, rid, key = _unmember(m)
                        keys += self._keys(ns, rid)
                        args += [m, key]
                    removed += int(self._sweep(keys=keys, args=args))
                if limit is not None and removed >= limit:
                    break
        except _ERRORS as exc:
            raise self._fail("sweep failed", exc) from exc
        return removed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with suppress(*_ERRORS):
            self._r.close()


def _flat(pairs: list[tuple[str, bytes]]) -> list[bytes | str]:
    out: list[bytes | str] = []
    for source, position in pairs:
        out += [source, position]
    return out


class _RedisRead(ReadTxn):
    __slots__ = ("_kv",)

    def __init__(self, kv: RedisKV) -> None:
        self._kv = kv

    def get(self, ns: str, rid: bytes, key: bytes, now: int) -> Item | None:
        kv = self._kv
        kv._check()
        try:
            blob = kv._r.hget(kv._keys(ns, rid)[1], key)
        except _ERRORS as exc:
            raise kv._fail(f"cannot read {ns!r}", exc) from exc
        if blob is None:
            return None
        item = _decode(key, blob)
        return item if visible(item, now) else None

    def scan(
        self,
        ns: str,
        rid: bytes,
        now: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[Item]:
        self._kv._check()
        return (i for i in self._kv._stream(ns, rid, start, stop, reverse) if visible(i, now))

    def fetch(
        self,
        ns: str,
        rid: bytes,
        now: int,
        limit: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        make: Callable[[bytes, bytes, int], T] | None = None,
    ) -> list[T]:
        kv = self._kv
        kv._check()
        if limit <= 0:
            return []
        first = kv._page_of(ns, rid, start, stop, None, False, limit)
        items = _finish(kv, ns, rid, now, limit, start, stop, first)
        if make is None:
            return items  # type: ignore[return-value]
        return [make(i.key, i.value, i.ts) for i in items]

    def fetch_many(
        self,
        ns: str,
        rids: list[bytes],
        now: int,
        limit: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        make: Callable[[int, bytes, bytes, int], T] | None = None,
    ) -> list[list[T]]:
        kv = self._kv
        kv._check()
        if limit <= 0 or not rids:
            return [[] for _ in rids]
        if len(rids) == 1:  # one script call costs less than a pipeline of one
            rid = rids[0]
            items = kv._page_of(ns, rid, start, stop, None, False, limit)
            items = _finish(kv, ns, rid, now, limit, start, stop, items)
            if make is None:
                return [items]  # type: ignore[list-item]
            return [[make(0, it.key, it.value, it.ts) for it in items]]
        lo, hi = _lex_bounds(start, stop, None, False)

        def fill(pipe: Any) -> None:
            for rid in rids:
                kv._queue(pipe, kv._page, list(kv._keys(ns, rid)), [lo, hi, limit, 0])

        try:
            pages = kv._pipeline(fill)
        except _ERRORS as exc:
            raise kv._fail(f"cannot read {ns!r}", exc) from exc
        for page in pages:
            if isinstance(page, BaseException):
                raise kv._fail(f"cannot read {ns!r}", page)
        out: list[list[T]] = []
        for i, (rid, (ks, vs)) in enumerate(zip(rids, pages, strict=True)):
            first = [_decode(k, v) for k, v in zip(ks, vs, strict=True) if v is not None]
            items = _finish(kv, ns, rid, now, limit, start, stop, first)
            if make is None:
                out.append(items)  # type: ignore[arg-type]
            else:
                out.append([make(i, it.key, it.value, it.ts) for it in items])
        return out

    def count(
        self, ns: str, rid: bytes, now: int, start: bytes | None = None, stop: bytes | None = None
    ) -> int:
        kv = self._kv
        kv._check()
        keys = list(kv._keys(ns, rid))
        # now as the script compares it: 8 bytes big-endian with the sign bit flipped
        when = _NOW.pack((now + (1 << 63)) & 0xFFFF_FFFF_FFFF_FFFF)
        total, after = 0, None
        while True:
            lo, hi = _lex_bounds(start, stop, after, False)
            try:
                n, last = kv._count(keys=keys, args=[lo, hi, when, COUNT_BATCH, COUNT_PAGES])
            except _ERRORS as exc:
                raise kv._fail(f"cannot read {ns!r}", exc) from exc
            total += int(n)
            if not last:
                return total
            after = last
            kv._check()

    def checkpoints(self) -> dict[str, bytes]:
        kv = self._kv
        kv._check()
        try:
            raw = kv._r.hgetall(kv._cp)
        except _ERRORS as exc:
            raise kv._fail("cannot read checkpoints", exc) from exc
        return {k.decode(): bytes(v) for k, v in raw.items()}


def _finish(
    kv: RedisKV,
    ns: str,
    rid: bytes,
    now: int,
    limit: int,
    start: bytes | None,
    stop: bytes | None,
    first: list[Item],
) -> list[Item]:
    """The visible items of a first page of ``limit`` stored items, topped up with further
    pages when tombstones or expired items left it short."""
    items = [i for i in first if visible(i, now)]
    page = first
    while len(items) < limit and len(page) == limit:
        page = kv._page_of(ns, rid, start, stop, page[-1].key, False, limit)
        items += [i for i in page if visible(i, now)]
    return items[:limit]


#: A buffered change: the item written, or None for a delete.
_Change = Item | None

#: Builds an :class:`Item` from a full tuple without the named tuple's Python-level
#: ``__new__`` (a write buffers one per item).
_item = tuple.__new__

#: Arguments of a slot group or of the one-server batch script.
_Args = list[bytes | int | str]

#: A ``put_indexed`` list entry's arguments (see section 6 of :data:`_APPLY`).
_Entry = tuple[bytes, bytes, int | bytes, bytes]

#: A ``put_indexed`` item on one server (see ``_RedisWrite._edges``).
_Edge = tuple[
    bytes, bytes, int | bytes, bytes, list[tuple[tuple[str, bytes], bytes, bytes, int | bytes]]
]

#: A record's share of a block: unconditional puts (flat key, blob), deletes, the expiry-index
#: entries of those puts (flat score, member), conditional puts (flat key, blob, score or
#: b"", member), (in a list of one) the record's expiry-index member prefix, and list entries
#: of ``put_indexed`` (flat suffix, blob, score or b"", member prefix, hint; see :data:`_APPLY`).
_Record = tuple[
    list[bytes], list[bytes], list[bytes | int], list[bytes | int], list[bytes], list[bytes | int]
]


class _RedisWrite(WriteTxn):
    """A buffered write: reads see its changes; :meth:`commit` sends them.

    Each item changed is sent once, in its final state (the last put or delete of it in the
    block): as an unconditional put or delete if any change of it in the block was one, else
    as a conditional put that the script checks against the version stored at commit time.
    """

    def __init__(self, kv: RedisKV) -> None:
        self._kv = kv
        self._changes: dict[tuple[str, bytes, bytes], _Change] = {}
        #: changed items whose every change in this block was a ``put_lww``
        self._lww: set[tuple[str, bytes, bytes]] = set()
        self._checkpoints: dict[str, bytes] = {}
        self._declared: list[str] = []
        #: stored items read ahead by :meth:`prefetch` (None: not stored)
        self._read: dict[tuple[str, bytes, bytes], Item | None] = {}
        #: the Redis keys of the records this block touched
        self._names: dict[tuple[str, bytes], tuple[bytes, bytes]] = {}
        #: per namespace, the front of its expiry-index members (see _member)
        self._fronts: dict[str, bytes] = {}
        #: list entries of ``put_indexed`` by list record, then suffix: their arguments in
        #: section 6 of :data:`_APPLY` (item key, blob, expiry score or b"", hint)
        self._indexed: dict[tuple[str, bytes], dict[bytes, _Entry]] = {}
        #: one server: the ``put_indexed`` items, sent as section 7 of :data:`_APPLY` instead
        #: of conditional puts and list entries: item -> (blob, time key, score or b"", time
        #: key read or b"", per list: ((list ns, list rid), suffix, entry header or b"" when
        #: it is the item's, score or b""))
        self._edges: dict[tuple[str, bytes, bytes], _Edge] = {}
        #: one server: ``_indexed`` built from ``_edges`` for reads in the block (on demand)
        self._view: dict[tuple[str, bytes], dict[bytes, _Entry]] | None = None

    def _keys(self, ns: str, rid: bytes) -> tuple[bytes, bytes]:
        names = self._names.get((ns, rid))
        if names is None:
            names = self._names[(ns, rid)] = self._kv._keys(ns, rid)
        return names

    def prefetch(self, items: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Read the stored items in one script call (one server) or one pipeline (per node of
        a Cluster), for ``get``."""
        kv = self._kv
        wanted = list(
            dict.fromkeys(k for k in items if k not in self._changes and k not in self._read)
        )
        if not wanted:
            return
        hashes = [self._keys(ns, rid)[1] for ns, rid, _ in wanted]
        try:
            if kv.cluster:
                blobs = kv._send_per_node(
                    [(key_slot(h), ("HGET", h, k[2])) for h, k in zip(hashes, wanted, strict=True)]
                )
                retry = [i for i, b in enumerate(blobs) if isinstance(b, Exception)]
                if retry:  # slots moving, a node failing over: redis-py's pipeline settles them

                    def fill(pipe: Any) -> None:
                        for i in retry:
                            pipe.hget(hashes[i], wanted[i][2])

                    for i, blob in zip(retry, kv._pipeline(fill), strict=True):
                        blobs[i] = blob
            else:
                by_hash: dict[bytes, list[int]] = {}
                for i, h in enumerate(hashes):
                    by_hash.setdefault(h, []).append(i)
                args: list[bytes | int] = []
                order: list[int] = []
                for positions in by_hash.values():
                    args.append(len(positions))
                    args += [wanted[i][2] for i in positions]
                    order += positions
                got = kv._read_ahead(keys=list(by_hash), args=args)
                blobs = [None] * len(wanted)
                for i, blob in zip(order, got, strict=True):
                    blobs[i] = blob
        except _ERRORS as exc:
            raise kv._fail("cannot read ahead", exc) from exc
        for k, blob in zip(wanted, blobs, strict=True):
            if isinstance(blob, Exception):
                raise kv._fail(f"cannot read {k[0]!r}", blob)
            self._read[k] = _decode(k[2], blob) if blob else None

    def _stored(self, ns: str, rid: bytes, key: bytes) -> Item | None:
        k = (ns, rid, key)
        if k in self._read:
            return self._read[k]
        kv = self._kv
        try:
            blob = kv._r.hget(kv._keys(ns, rid)[1], key)
        except _ERRORS as exc:
            raise kv._fail(f"cannot read {ns!r}", exc) from exc
        return None if blob is None else _decode(key, blob)

    def get(self, ns: str, rid: bytes, key: bytes) -> Item | None:
        k = (ns, rid, key)
        if k in self._changes:
            return self._changes[k]
        if self._indexed or self._edges:
            known, item = self._indexed_view(ns, rid, key)
            if known:
                return item
        return self._stored(ns, rid, key)

    def _namespace_ttl(self, ns: str) -> int | None:
        ttls = self._kv._ttls
        if ns in ttls:
            return ttls[ns]
        if ns in self._declared:
            return None
        known, ttl = self._kv._ns_ttl(ns)
        if not known:
            self._declared.append(ns)
        return ttl

    def put(
        self,
        ns: str,
        rid: bytes,
        key: bytes,
        value: bytes,
        ts: int,
        token: int,
        ttl_us: int | None = None,
        tombstone: bool = False,
    ) -> None:
        ttl = ttl_us if ttl_us is not None else self._namespace_ttl(ns)
        k = (ns, rid, key)
        value = bytes(value)
        self._changes[k] = _item(
            Item, (key, value, ts, token, expiry(ts, ttl, tombstone), tombstone)
        )
        if self._lww:
            self._lww.discard(k)
        if self._edges:
            self._edges.pop(k, None)
            self._view = None

    def put_lww(
        self,
        ns: str,
        rid: bytes,
        key: bytes,
        value: bytes,
        ts: int,
        token: int,
        ttl_us: int | None = None,
        tombstone: bool = False,
    ) -> bool:
        old = self.get(ns, rid, key)
        if old is not None and (ts, token) <= (old.ts, old.token):
            return False
        # Unless the block changed it unconditionally, the script re-checks the version
        # stored at commit time.
        ttl = ttl_us if ttl_us is not None else self._namespace_ttl(ns)
        k = (ns, rid, key)
        if k not in self._changes or k in self._lww:
            self._lww.add(k)
        value = bytes(value)
        self._changes[k] = _item(
            Item, (key, value, ts, token, expiry(ts, ttl, tombstone), tombstone)
        )
        return True

    indexes_on_server = True

    def put_indexed(
        self,
        ns: str,
        rid: bytes,
        key: bytes,
        value: bytes,
        ts: int,
        token: int,
        lists: Iterable[tuple[str, bytes, bytes]],
        tombstone: bool = False,
    ) -> bool:
        """The item goes as a conditional put (checked against the stored version at
        commit); each list entry as a marker-checked move (see :data:`_APPLY`), so the server
        decides which entries stay from what is stored when the script runs, not from what
        this block read. Reads in the block see the entries as this block would leave them
        (an explicit put or delete of the same list item in the block wins over that view)."""
        k = (ns, rid, key)
        changes = self._changes
        stored = self._stored(ns, rid, key)
        changed = k in changes
        old = changes[k] if changed else stored
        if old is not None and (ts, token) <= (old[2], old[3]):
            return False
        ttls = self._kv._ttls
        ttl = ttls[ns] if ns in ttls else self._namespace_ttl(ns)
        value = b"" if tombstone else bytes(value)
        kexp = expiry(ts, ttl, tombstone)
        changes[k] = _item(Item, (key, value, ts, token, kexp, tombstone))
        lww = self._lww
        if not changed or k in lww:
            lww.add(k)  # as put_lww: checked against the stored version at commit
        flags = FLAG_TOMBSTONE if tombstone else 0
        read = time_key(stored[2]) if stored is not None and not stored[5] else b""
        new_key = _time_pack(_TIME_BASE - ts)  # time_key(ts), inlined: once per edge
        pack = _header_pack
        head = pack(ts, token, kexp, flags)
        if not self._kv.cluster:  # one step for the item and its lists (section 7)
            moves: list[tuple[tuple[str, bytes], bytes, bytes, int | bytes]] = []
            for lns, lrid, suffix in lists:
                lttl = ttls[lns] if lns in ttls else self._namespace_ttl(lns)
                if lttl == ttl:
                    moves.append(((lns, lrid), suffix, b"", kexp or b""))
                else:
                    lexp = expiry(ts, lttl, tombstone)
                    moves.append(((lns, lrid), suffix, pack(ts, token, lexp, flags), lexp or b""))
            self._edges[k] = (head + value, new_key, kexp or b"", read, moves)
            self._view = None
            return True
        indexed = self._indexed
        for lns, lrid, suffix in lists:
            lttl = ttls[lns] if lns in ttls else self._namespace_ttl(lns)
            lexp = kexp if lttl == ttl else expiry(ts, lttl, tombstone)
            record = indexed.get((lns, lrid))
            if record is None:
                record = indexed[(lns, lrid)] = {}
            record[suffix] = (
                new_key + suffix,
                (head if lttl == ttl else pack(ts, token, lexp, flags)) + value,
                lexp or b"",
                read + suffix if read else b"",
            )
        return True

    def _lists(self) -> dict[tuple[str, bytes], dict[bytes, _Entry]]:
        """The block's ``put_indexed`` list entries by list record, then suffix."""
        if self._kv.cluster:
            return self._indexed
        if self._view is None:
            view: dict[tuple[str, bytes], dict[bytes, _Entry]] = {}
            for blob, new_key, _, read, moves in self._edges.values():
                for record, suffix, head, score in moves:
                    view.setdefault(record, {})[suffix] = (
                        new_key + suffix,
                        (head + blob[HEADER_SIZE:]) if head else blob,
                        score,
                        read + suffix if read else b"",
                    )
            self._view = view
        return self._view

    def _indexed_view(self, ns: str, rid: bytes, key: bytes) -> tuple[bool, Item | None]:
        """What this block's list entries make of a list item: (known, item or None)."""
        record = self._lists().get((ns, rid))
        entry = None if record is None else record.get(key[8:])
        if entry is not None:
            if entry[0] == key:
                item = _decode(key, entry[1])
                return True, None if item.tombstone else item
            if entry[3] == key:
                return True, None
        return False, None

    def put_many(self, items: Iterable[tuple[str, bytes, bytes, bytes, int, int]]) -> None:
        changes, lww = self._changes, self._lww
        ttls: dict[str, int | None] = {}
        for ns, rid, key, value, ts, token in items:
            if ns in ttls:
                ttl = ttls[ns]
            else:
                ttl = ttls[ns] = self._namespace_ttl(ns)
            k = (ns, rid, key)
            expires_at = 0 if ttl is None else ts + ttl
            changes[k] = _item(Item, (key, bytes(value), ts, token, expires_at, False))
            if lww:
                lww.discard(k)
        if self._edges:  # a plain put of a put_indexed item cancels its list moves
            for k in [k for k in self._edges if k not in lww]:
                del self._edges[k]
            self._view = None

    def delete(self, ns: str, rid: bytes, key: bytes) -> bool:
        existed = self.get(ns, rid, key) is not None
        if existed:
            self.discard(ns, rid, key)
        return existed

    def discard(self, ns: str, rid: bytes, key: bytes) -> None:
        """Delete without reading first: the script removes the item if it is stored."""
        k = (ns, rid, key)
        self._changes[k] = None
        if self._lww:
            self._lww.discard(k)
        if self._edges:
            self._edges.pop(k, None)
            self._view = None

    def scan(
        self,
        ns: str,
        rid: bytes,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[Item]:
        merged = {i.key: i for i in self._kv._stream(ns, rid, start, stop, reverse, COUNT_BATCH)}
        for key, blob, _, read in self._lists().get((ns, rid), {}).values():
            merged.pop(read, None)
            item = _decode(key, blob)
            if item.tombstone:
                merged.pop(key, None)
            elif (start is None or key >= start) and (stop is None or key < stop):
                merged[key] = item
        for (cns, crid, key), change in self._changes.items():
            if cns != ns or crid != rid:
                continue
            if (start is not None and key < start) or (stop is not None and key >= stop):
                continue
            if change is None:
                merged.pop(key, None)
            else:
                merged[key] = change
        return iter([merged[k] for k in sorted(merged, reverse=reverse)])

    def set_checkpoint(self, source: str, position: bytes) -> None:
        self._checkpoints[source] = bytes(position)

    def commit(self) -> None:
        if not (
            self._changes or self._checkpoints or self._declared or self._indexed or self._edges
        ):
            return
        kv = self._kv
        if kv.cluster:
            kv._commit_cluster(
                self._groups(), list(self._checkpoints.items()), list(self._declared)
            )
        else:
            keys, args = self._single()
            try:
                kv._commit(keys=keys, args=args)
            except _ERRORS as exc:
                raise kv._fail("commit failed", exc) from exc
        kv._ttls.update(dict.fromkeys(set(self._declared) - kv._ttls.keys()))

    def _records(self) -> dict[tuple[str, bytes], _Record]:
        """The block's changes by record, in the order records were first changed, each item
        once in its final state (see :data:`_Record`)."""
        records: dict[tuple[str, bytes], _Record] = {}
        lww, edges = self._lww, self._edges
        pack = _header_pack
        for k, item in self._changes.items():
            ns, rid, key = k
            if edges and k in edges:
                continue  # section 7 (one server)
            rec = records.get((ns, rid))
            if rec is None:
                rec = records[(ns, rid)] = ([], [], [], [], [], [])
            if item is None:
                rec[1].append(key)
                continue
            ts, token, expires_at = item[2], item[3], item[4]
            blob = pack(ts, token, expires_at, FLAG_TOMBSTONE if item[5] else 0) + item[1]
            if lww and k in lww:
                rec[3].extend((key, blob, expires_at or b""))
                continue
            if expires_at:
                prefix = rec[4]
                if not prefix:
                    prefix.append(_member(ns, rid, b""))
                rec[2].extend((expires_at, prefix[0] + key))
            rec[0].extend((key, blob))
        for (ns, rid), entries in self._indexed.items() if self._kv.cluster else ():
            rec = records.get((ns, rid))
            if rec is None:
                rec = records[(ns, rid)] = ([], [], [], [], [], [])
            rec[5].extend(chain.from_iterable(entries.values()))
        return records

    def _member_front(self, ns: str, rid: bytes) -> bytes:
        """``_member(ns, rid, b"")``, with the namespace's part cached."""
        front = self._fronts.get(ns)
        if front is None:
            front = self._fronts[ns] = _member(ns, b"", b"")[:-2]  # len(ns) ‖ ns
        if len(rid) > 0xFFFF:
            raise StorageError("record id too long (the limit is 65535 bytes)")
        return front + _LEN.pack(len(rid)) + rid

    def _tail(self, ns: str, rid: bytes, k: int, rec: _Record, out: list[bytes | int]) -> None:
        """Append a record's share of section 6 of :data:`_APPLY` to ``out``."""
        prefix = rec[4][0] if rec[4] else self._member_front(ns, rid)
        cond, ind = rec[3], rec[5]
        out += (k, prefix, len(cond) // 3, *cond, len(ind) // 4, *ind)

    def _single(self) -> tuple[list[bytes], _Args]:
        """KEYS and ARGV of the one-server batch script."""
        kv = self._kv
        records = self._records()
        keys: list[bytes] = [kv._exp, kv._cp, kv._meta]
        args: _Args = [0]
        plain = 0  # records with unconditional puts or deletes (section 1)
        tail: list[bytes | int] = []
        tails = 0
        index: list[bytes | int] = []
        for (ns, rid), rec in records.items():
            puts, dels, idx = rec[0], rec[1], rec[2]
            keys += self._keys(ns, rid)
            k = len(keys) - 1  # the record's sorted set, as a Lua index (from 1)
            if puts or dels:
                plain += 1
                args.append(k)
                args.append(len(puts) // 2)
                args += puts
                args.append(len(dels))
                args += dels
            if idx:
                index += idx
            if rec[3] or rec[5]:
                self._tail(ns, rid, k, rec, tail)
                tails += 1
        args.append(0)  # section 2: conditional puts go in section 6
        args += (len(index) // 2, *index, len(self._declared), *self._declared)
        args.append(len(self._checkpoints))
        for source, position in self._checkpoints.items():
            args += (source, position)
        args.append(tails)
        args += tail
        args[0] = plain
        if self._edges:
            self._edge_args(records, keys, args)
        return keys, args

    def _edge_args(
        self, records: dict[tuple[str, bytes], _Record], keys: list[bytes], args: _Args
    ) -> None:
        """Append section 7 of :data:`_APPLY` (one server) to ``args``, adding the records
        it names to ``keys``."""
        where: dict[tuple[str, bytes], int] = {}
        for i, r in enumerate(records):
            where[r] = -(2 * i + 4)  # KEYS after exp, cp, meta: (zset, hash) pairs; < 0: no
            # expiry-member front sent yet
        fronts: list[bytes | int] = []

        def index(ns: str, rid: bytes) -> int:
            k = where.get((ns, rid))
            if k is None:
                keys.extend(self._keys(ns, rid))
                k = len(keys) - 1
            elif k > 0:
                return k
            else:
                k = -k
            where[(ns, rid)] = k
            fronts.extend((k, self._member_front(ns, rid)))
            return k

        ops: list[bytes | int] = []
        for k, (blob, tkey, score, _, moves) in self._edges.items():
            kr = where.get((k[0], k[1]))
            ops += (kr if kr and kr > 0 else index(k[0], k[1]), k[2], blob, score, tkey, len(moves))
            for record, suffix, head, lscore in moves:
                kr = where.get(record)
                ops += (kr if kr and kr > 0 else index(*record), suffix, head, lscore)
        args += (len(fronts) // 2, *fronts, len(self._edges), *ops)

    def _groups(self) -> list[tuple[list[bytes], list[bytes | int]]]:
        """The batch as one (KEYS, ARGV) per hash slot, each for the group script, in the
        order the slots were first written."""
        kv = self._kv
        # per slot: KEYS, the records' arguments, their count, section 6, its count, index pairs
        by_slot: dict[
            int,
            tuple[
                list[bytes],
                list[bytes | int],
                list[int],
                list[bytes | int],
                list[int],
                list[bytes | int],
            ],
        ] = {}
        for (ns, rid), rec in self._records().items():
            puts, dels = rec[0], rec[1]
            z, h = self._keys(ns, rid)
            slot = key_slot(z)  # one string search and a C CRC: cheap next to the rest
            group = by_slot.get(slot)
            if group is None:
                group = by_slot[slot] = ([kv._exp_of(slot)], [], [0], [], [0], [])
            group[0].extend((z, h))
            k = len(group[0]) - 1
            if puts or dels:
                group[1].extend((k, len(puts) // 2, *puts, len(dels), *dels))
                group[2][0] += 1
            group[5].extend(rec[2])
            if rec[3] or rec[5]:
                self._tail(ns, rid, k, rec, group[3])
                group[4][0] += 1
        out: list[tuple[list[bytes], list[bytes | int]]] = []
        for keys, recs, n, tail, tails, idx in by_slot.values():
            args: list[bytes | int] = [n[0], *recs, 0, len(idx) // 2, *idx]
            if tails[0]:  # last (see _APPLY); a group without it keeps the earlier form
                args += (tails[0], *tail)
            out.append((keys, args))
        return out


__all__ = ["RedisKV", "cluster_url", "slot_tag"]
