"""Live events persist through the KV layer (memory and LMDB): round trip, LWW, atomic execute."""

from __future__ import annotations

from pathlib import Path

import pytest

from hopcast.durations import HOUR, MINUTE
from hopcast.errors import NotFound, StorageError
from hopcast.kv import KVStore
from hopcast.kv.lmdb import LmdbKV
from hopcast.live.schedule import (
    Cancel,
    Create,
    IllegalTransition,
    InputKind,
    Persist,
    Reschedule,
    StageChanged,
    State,
    Tick,
    TimerSet,
    apply,
)
from hopcast.live.schedule_store import EVENTS_NS, RECORD, ScheduleStore

T0 = 1_700_000_000_000_000
START = T0 + HOUR
LEAD = 10 * MINUTE


def make(event_id: str = "final") -> Create:
    return Create(event_id, "The Final", START, START + 2 * HOUR, LEAD)


def test_a_saved_event_reads_back_equal_with_its_history(kv: KVStore) -> None:
    store = ScheduleStore(kv)
    event, _ = apply(None, make(), T0)
    event, _ = apply(event, Reschedule("final", START + MINUTE, None), T0 + 1)
    event, _ = apply(event, Tick("final"), START)
    assert store.save(event)
    assert store.get("final") == event
    assert store.load("final") == event
    assert store.events() == [event]


def test_events_are_listed_in_id_order(kv: KVStore) -> None:
    store = ScheduleStore(kv)
    for event_id in ["b", "c", "a"]:
        store.execute(make(event_id), T0)
    assert [e.id for e in store.events()] == ["a", "b", "c"]


def test_a_stale_writer_cannot_overwrite_a_newer_version(kv: KVStore) -> None:
    store = ScheduleStore(kv)
    v1, _ = apply(None, make(), T0)
    v2, _ = apply(v1, Cancel("final"), T0 + 1)
    assert store.save(v2)
    assert not store.save(v1)  # older
    assert not store.save(v2)  # a replay
    assert store.get("final") == v2


def test_an_unknown_event_is_none_or_not_found(kv: KVStore) -> None:
    store = ScheduleStore(kv)
    assert store.get("nope") is None
    assert store.events() == []
    with pytest.raises(NotFound, match="nope"):
        store.load("nope")


def test_execute_applies_and_stores_and_returns_the_effects_left_to_perform(
    kv: KVStore,
) -> None:
    store = ScheduleStore(kv)
    event, effects = store.execute(make(), T0)
    assert effects == [TimerSet("final", START - LEAD, InputKind.WINDOW_OPENS, 1)]
    assert store.get("final") == event
    opened, effects = store.execute(Tick("final"), START - LEAD)
    assert opened.state is State.PREFETCHING
    assert not any(isinstance(e, Persist) for e in effects)
    assert StageChanged("final", State.PREFETCHING, 2, START - LEAD) in effects
    assert store.get("final") == opened


def test_execute_stores_nothing_when_the_command_is_illegal_or_changes_nothing(
    kv: KVStore,
) -> None:
    store = ScheduleStore(kv)
    event, _ = store.execute(make(), T0)
    assert store.execute(Tick("final"), T0 + 1) == (event, [])
    with pytest.raises(IllegalTransition):
        store.execute(make(), T0 + 2)
    with pytest.raises(NotFound):
        store.execute(Cancel("other"), T0 + 2)
    assert store.events() == [event]


def test_events_survive_a_restart_of_the_lmdb_store(tmp_path: Path) -> None:
    kv = LmdbKV(tmp_path / "kv", sync=False)
    event, _ = ScheduleStore(kv).execute(make(), T0)
    kv.close()
    kv = LmdbKV(tmp_path / "kv", sync=False)
    try:
        assert ScheduleStore(kv).events() == [event]
    finally:
        kv.close()


def test_a_corrupt_record_raises_a_storage_error_naming_the_event(kv: KVStore) -> None:
    store = ScheduleStore(kv)
    with kv.writer() as w:
        w.put(EVENTS_NS, RECORD, b"broken", b"\xc1 not msgpack", 1, 0)
    with pytest.raises(StorageError, match="'broken'"):
        store.get("broken")
    with pytest.raises(StorageError):
        store.events()


def test_the_stored_item_is_versioned_by_the_event_version(kv: KVStore) -> None:
    store = ScheduleStore(kv)
    event, _ = store.execute(make(), T0)
    event, _ = store.execute(Cancel("final"), T0 + 1)
    item = kv.get(EVENTS_NS, RECORD, b"final", T0)
    assert item is not None
    assert (item.ts, item.token) == (event.version, 0) == (2, 0)
