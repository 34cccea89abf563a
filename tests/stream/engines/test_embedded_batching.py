"""How the embedded engine closes its batches while the previous batch's write runs."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from demo_records import demo_records

from hopcast.graphdb import Graph
from hopcast.stream.engines import engine_for
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.record import Position, Record
from hopcast.stream.sources import ListSource

PLAYBACK = demo_records(400, seed=3)["playback"]
#: Generous bound on every wait of these tests (they wait for events, not for time).
TIMEOUT_S = 30.0


class GatedStore:
    """Wraps a GraphStore: a write holding records waits until ``gate`` opens; ``writing``
    is set when the first such write starts; ``ends`` are the source offsets each write
    stored (the batch's last record)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.gate = threading.Event()
        self.writing = threading.Event()
        self.ends: list[int] = []
        self.changed = threading.Condition()

    def apply(self, mutations: Any, checkpoints: Any = None, **options: Any) -> Any:
        if mutations:
            self.writing.set()
            assert self.gate.wait(TIMEOUT_S), "the test never opened the gate"
        result = self._store.apply(mutations, checkpoints, **options)
        if mutations:
            with self.changed:
                self.ends.append(Position.from_bytes(checkpoints["playback/0"]).offset)
                self.changed.notify_all()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class WatchedSource(ListSource):
    """A ListSource that tells when a poll has returned records."""

    def __init__(self, name: str, values: list[bytes]) -> None:
        super().__init__(name, values)
        self.returned = threading.Event()

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        out = super().poll(max_records, timeout_s)
        if out:
            self.returned.set()
        return out


def test_records_arriving_while_a_write_runs_join_the_next_batch_until_that_write_returns(
    tmp_path: Path,
) -> None:
    first, early, late = PLAYBACK[:50], PLAYBACK[50:80], PLAYBACK[80:120]
    with Graph.open(tmp_path / "g") as g:
        store = GatedStore(g.store)
        source = WatchedSource("playback", list(first))
        maps = Mapping.load_dir(DEMO_MAPPINGS, g.schema)
        # linger 0: without a write running, a batch closes at the first round that finds
        # nothing more; batch_ms is far longer than the test
        engine = engine_for(g, [source], maps, batch_ms=60_000, linger_ms=0)
        engine.store = store  # type: ignore[assignment]
        last = len(first) + len(early) + len(late) - 1
        runner = threading.Thread(target=engine.run, daemon=True)
        runner.start()
        assert store.writing.wait(TIMEOUT_S), "the first batch was never written"
        source.returned.clear()
        for v in early:
            source.append(v)
        assert source.returned.wait(TIMEOUT_S), "the engine did not poll while the write ran"
        for v in late:  # the engine has read `early`; its batch must still be open
            source.append(v)
        store.gate.set()
        with store.changed:
            written = store.changed.wait_for(lambda: last in store.ends, TIMEOUT_S)
        engine.stop()
        runner.join(TIMEOUT_S)
        assert written, f"not every record was written: batches ended at {store.ends}"
    assert store.ends == [len(first) - 1, last], "early and late records form one batch"
