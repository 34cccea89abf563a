"""Power loss: the store loses every write after some moment, the sources keep what they were
told. The engine tells a source a batch is done only once the write holding the batch's
positions has returned (an fsync'd LMDB commit), so whatever a power cut takes from the store
is still in the source, and a restart replays it into the graph of one uninterrupted run."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from demo_records import demo_records, graph_dump

from hopcast.graphdb import Graph
from hopcast.kv.lmdb import LmdbKV
from hopcast.stream.engines import engine_for
from hopcast.stream.mapping import DEMO_MAPPINGS
from hopcast.stream.mapping import Mapping as StreamMapping
from hopcast.stream.record import Position
from hopcast.stream.sources.journal import Journal, JournalSource

RECORDS = demo_records(4000, seed=13)
#: Small segments, so that telling a journal a batch is done deletes files (what a source
#: cannot give back).
SEGMENT_BYTES = 16 << 10
#: The moments of the cuts: right after the n-th time a source is told a batch is done.
CUTS = (3, 11, 24)


def write_journals(root: Path) -> None:
    for name, values in RECORDS.items():
        journal = Journal(root / name, segment_bytes=SEGMENT_BYTES, fsync=False)
        for i in range(0, len(values), 50):
            journal.append(values[i : i + 50])
        journal.close()


def run(store: Path, journals: Path, **options: object) -> None:
    with Graph.open(store) as g:
        sources = [JournalSource(name, journals / name) for name in RECORDS]
        maps = StreamMapping.load_dir(DEMO_MAPPINGS, g.schema)
        engine = engine_for(g, sources, maps, batch_records=97, batch_ms=10, **options)
        engine.run(until_idle=True)


class CutAfterCommit(JournalSource):
    """A journal source that, right after being told a batch is done, records the world as a
    power cut at that moment would leave it: the store's committed state and the journal."""

    def __init__(self, name: str, directory: Path, kv: LmdbKV, world: _World) -> None:
        super().__init__(name, directory)
        self._kv, self._world = kv, world

    def commit(self, positions: Mapping[str, Position]) -> None:
        super().commit(positions)
        self._world.told += 1
        if self._world.told in CUTS:
            at = self._world.root / f"cut-{self._world.told}"
            self._kv.backup(at / "store")
            shutil.copytree(self._world.journals, at / "journals")


class _World:
    def __init__(self, root: Path, journals: Path) -> None:
        self.root, self.journals, self.told = root, journals, 0


def test_a_power_cut_after_a_source_was_told_done_loses_nothing_the_source_dropped(
    tmp_path: Path,
) -> None:
    clean_journals = tmp_path / "clean-journals"
    write_journals(clean_journals)
    live_journals = tmp_path / "journals"
    shutil.copytree(clean_journals, live_journals)
    originally = sum(len(list((live_journals / n).glob("*.seg"))) for n in RECORDS)
    run(tmp_path / "clean", clean_journals)
    with Graph.open(tmp_path / "clean") as clean:
        want = graph_dump(clean)

    # The live run: overlapped writes (the default), cut at several moments.
    world = _World(tmp_path, live_journals)
    with Graph.open(tmp_path / "live") as g:
        assert isinstance(g.store.kv, LmdbKV)
        sources = [CutAfterCommit(n, live_journals / n, g.store.kv, world) for n in RECORDS]
        maps = StreamMapping.load_dir(DEMO_MAPPINGS, g.schema)
        engine_for(g, sources, maps, batch_records=97, batch_ms=10).run(until_idle=True)
        assert graph_dump(g) == want
    assert world.told > max(CUTS), f"only {world.told} commits: the cuts did not all happen"

    for cut in CUTS:
        at = tmp_path / f"cut-{cut}"
        segments = sum(len(list((at / "journals" / n).glob("*.seg"))) for n in RECORDS)
        if cut == max(CUTS):
            assert segments < originally, "no segment was dropped: the cut proves nothing"
        # The restart after the cut: the store as it was, the journals as they were.
        run(at / "store", at / "journals")
        with Graph.open(at / "store") as g:
            assert graph_dump(g) == want, f"the graph after the cut at commit {cut} differs"
