"""The revocation list: what an entry revokes (one token id; a subject's tokens issued until the
revocation), pruning, the bound; the file adapter under concurrent writers; the Redis adapter;
and ``hopcast live revoke`` / ``hopcast live token`` on a store directory."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hopcast.cli import cli
from hopcast.config import LIVE_SECRET_ENV
from hopcast.durations import HOUR, SECOND, now_us
from hopcast.errors import ConfigError, InvalidInput
from hopcast.live import revocation as rv
from hopcast.live import tokens
from hopcast.live.revocation import FileRevocations, RevocationList, revocation

SECRET = bytes(range(32))
NOW = 1_767_225_600_000_000


def claims(device: str = "tv", issued: int = NOW, token_id: str | None = "t1") -> tokens.Claims:
    return tokens.Claims(device, ("global",), issued, issued, issued + HOUR, "k0", token_id)


def test_a_token_id_entry_revokes_that_token_only() -> None:
    revoked = RevocationList([revocation("token_id", "t1", NOW)])
    assert revoked.reason(claims(token_id="t1")) is not None
    assert revoked.reason(claims(token_id="t2")) is None
    assert revoked.reason(claims(token_id=None)) is None  # a legacy token has no id


def test_a_subject_entry_revokes_the_tokens_issued_until_then_and_not_later() -> None:
    revoked = RevocationList([revocation("subject", "tv", NOW)])
    assert revoked.reason(claims(issued=NOW - SECOND, token_id=None)) is not None
    assert revoked.reason(claims(issued=NOW)) is not None
    assert revoked.reason(claims(issued=NOW + 1)) is None
    assert revoked.reason(claims(device="phone", issued=NOW - SECOND)) is None


def test_entries_past_their_keep_time_are_pruned() -> None:
    entry = revocation("token_id", "t1", NOW, retention_us=HOUR)
    assert len(RevocationList([entry], NOW + HOUR - 1)) == 1
    assert len(RevocationList([entry], NOW + HOUR)) == 0


def test_the_list_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rv, "MAX_ENTRIES", 2)
    full = RevocationList([revocation("token_id", f"t{i}", NOW) for i in range(2)])
    with pytest.raises(InvalidInput, match="at most 2"):
        full.with_entry(revocation("token_id", "t9", NOW), NOW)


@pytest.mark.parametrize(
    ("kind", "value", "keep"),
    [("user", "x", HOUR), ("subject", "", HOUR), ("subject", "x" * 129, HOUR), ("subject", "x", 0)],
)
def test_a_malformed_entry_is_refused(kind: str, value: str, keep: int) -> None:
    with pytest.raises(InvalidInput):
        revocation(kind, value, NOW, retention_us=keep)


def test_concurrent_writers_to_the_file_lose_no_entry(tmp_path: Path) -> None:
    path = tmp_path / "revocations.json"

    def write(i: int) -> None:
        FileRevocations(path).add_sync(revocation("token_id", f"t{i}", NOW), NOW)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded = asyncio.run(FileRevocations(path).load(NOW))
    assert {e.value for e in loaded} == {f"t{i}" for i in range(16)}


def test_a_missing_file_is_an_empty_list_and_a_corrupt_one_a_clear_error(tmp_path: Path) -> None:
    source = FileRevocations(tmp_path / "revocations.json")
    assert len(asyncio.run(source.load(NOW))) == 0
    (tmp_path / "revocations.json").write_text("{not json")
    with pytest.raises(ConfigError, match="revocation list"):
        asyncio.run(source.load(NOW))


def test_the_redis_list_adds_loads_and_prunes(redis_url: str, redis_prefix: str) -> None:
    from hopcast.live.redisrevoke import RedisRevocations

    async def main() -> None:
        source = RedisRevocations(redis_url, prefix=redis_prefix)
        try:
            await source.add(revocation("subject", "tv", NOW, retention_us=HOUR), NOW)
            await source.add(revocation("token_id", "t1", NOW, retention_us=2 * HOUR), NOW)
            assert {e.key for e in await source.load(NOW)} == {"subject:tv", "token_id:t1"}
            later = await source.load(NOW + HOUR)
            assert {e.key for e in later} == {"token_id:t1"}
            raw = await source._client.hkeys(source.key)
            assert raw == [b"token_id:t1"]  # the expired entry was deleted, not only hidden
        finally:
            await source.close()

    asyncio.run(main())


def test_the_cli_issues_a_token_with_its_id_and_revokes_it_into_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LIVE_SECRET_ENV, SECRET.hex())
    store = str(tmp_path / "store")
    runner = CliRunner()
    issued = runner.invoke(
        cli, ["--store", store, "live", "token", "tv", "--channel", "global", "--json"]
    )
    assert issued.exit_code == 0, issued.output
    doc = json.loads(issued.output)
    token_id = tokens.verify(SECRET, doc["token"], doc["expires_at"] - HOUR).token_id
    assert doc["token_id"] == token_id and token_id is not None
    done = runner.invoke(
        cli,
        ["--store", store, "live", "revoke", "--token-id", token_id, "--note", "lost", "--json"],
    )
    assert done.exit_code == 0, done.output
    answer = json.loads(done.output)
    assert (answer["kind"], answer["value"], answer["entries"]) == ("token_id", token_id, 1)
    (entry,) = asyncio.run(FileRevocations.in_directory(store).load(answer["revoked_at"]))
    assert (entry.value, entry.note) == (token_id, "lost")
    both = runner.invoke(
        cli, ["--store", store, "live", "revoke", "--token-id", "a", "--subject", "b"]
    )
    assert both.exit_code == 2 and "exactly one" in both.output


# -- bounds and polling cost (found by attacking the list) -------------------------------------


def test_a_revocation_kept_longer_than_a_year_is_refused_so_no_unreadable_time_is_written() -> None:
    with pytest.raises(InvalidInput, match="at most 366 days"):
        revocation("subject", "tv", NOW, retention_us=10**30)
    assert revocation("subject", "tv", NOW, retention_us=rv.MAX_RETENTION_US).until > NOW


def test_a_revocation_file_over_its_size_bound_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "revocations.json"
    FileRevocations(path).add_sync(revocation("token_id", "t1", NOW), NOW)
    monkeypatch.setattr(rv, "MAX_FILE_BYTES", path.stat().st_size - 1)
    read: list[Path] = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: read.append(p) or real(p))
    with pytest.raises(ConfigError, match="bytes, over the"):
        asyncio.run(FileRevocations(path).load(NOW))
    assert read == []  # refused on its size alone


def test_a_revocation_file_with_more_entries_than_the_bound_is_refused_with_the_remedy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "revocations.json"
    for i in range(3):
        FileRevocations(path).add_sync(revocation("token_id", f"t{i}", NOW), NOW)
    monkeypatch.setattr(rv, "MAX_ENTRIES", 2)
    with pytest.raises(ConfigError, match="holds 3 entries, over 2: repair it, or move it aside"):
        asyncio.run(FileRevocations(path).load(NOW))


def test_polling_an_unchanged_file_reuses_its_snapshot_until_an_entry_expires(
    tmp_path: Path,
) -> None:
    path = tmp_path / "revocations.json"
    FileRevocations(path).add_sync(revocation("token_id", "t1", NOW, retention_us=HOUR), NOW)
    source = FileRevocations(path)
    first = asyncio.run(source.load(NOW))
    assert asyncio.run(source.load(NOW + HOUR - 1)) is first  # no rebuild per poll
    assert len(asyncio.run(source.load(NOW + HOUR))) == 0  # the entry's time is up: pruned


def test_the_redis_list_is_read_whole_only_when_it_changed_or_an_entry_expired(
    redis_url: str, redis_prefix: str
) -> None:
    from hopcast.live.redisrevoke import RedisRevocations

    async def main() -> None:
        reader = RedisRevocations(redis_url, prefix=redis_prefix)
        writer = RedisRevocations(redis_url, prefix=redis_prefix)
        reads = 0
        real = reader._client.hgetall

        async def counted(key: str) -> Any:
            nonlocal reads
            reads += 1
            return await real(key)

        reader._client.hgetall = counted
        try:
            await writer.add(revocation("token_id", "t1", NOW, retention_us=HOUR), NOW)
            first = await reader.load(NOW)
            assert (await reader.load(NOW + 1)) is first and reads == 1
            # Re-adding the same key keeps HLEN: the version counter still tells the change.
            await writer.add(revocation("token_id", "t1", NOW + 5, retention_us=2 * HOUR), NOW)
            again = await reader.load(NOW + 6)
            assert reads == 2 and next(iter(again)).revoked_at == NOW + 5
            assert len(await reader.load(NOW + 2 * HOUR + 5)) == 0 and reads == 3
        finally:
            await reader.close()
            await writer.close()

    asyncio.run(main())


def test_hopcast_serve_and_live_revoke_on_a_redis_store_share_the_list_beside_its_keys(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hopcast.api.server import revocation_source
    from hopcast.kv import open_kv
    from hopcast.live.redisrevoke import RedisRevocations

    store = f"{redis_url}?prefix={redis_prefix}"
    monkeypatch.setenv(LIVE_SECRET_ENV, SECRET.hex())
    done = CliRunner().invoke(cli, ["--store", store, "live", "revoke", "--subject", "tv"])
    assert done.exit_code == 0, done.output
    kv = open_kv(store)

    async def main() -> None:
        source = revocation_source(kv, None)  # what `hopcast serve` on this store polls
        assert isinstance(source, RedisRevocations)
        assert source.key == f"{redis_prefix}live:revocations"
        try:
            (entry,) = await source.load(now_us())
            assert entry.key == "subject:tv"
        finally:
            await source.close()

    try:
        asyncio.run(main())
    finally:
        kv.close()
