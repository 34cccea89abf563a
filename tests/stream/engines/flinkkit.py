"""Helpers of the Flink engine tests: the demo company's records on Kafka, the embedded engine's
graph of them (the reference), and a backend-neutral dump of a graph store to compare two."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hopcast.demo.kafka import DemoInput, demo_input, publish, topic_name
from hopcast.demo.records import SOURCES
from hopcast.graph import schema as schema_module
from hopcast.graphdb import Graph
from hopcast.kv.lmdb import LmdbKV
from hopcast.kv.redis import RedisKV
from hopcast.stream.deadletter import DeadLetterStore
from hopcast.stream.engines import engine_for
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.sources.kafka import KafkaSource

#: Namespaces that are not the graph: dead letters, side tables.
_NOT_GRAPH = ("dl.", "st.")

Dump = dict[tuple[str, bytes, bytes], bytes]


def seed(bootstrap: str, prefix: str, events: int, *, partitions: int = 3) -> DemoInput:
    """A small demo company's records (with late, duplicated and bad ones) on Kafka."""
    data = demo_input(events, accounts=80, titles=300, seed=11, bad_share=0.02)
    publish(bootstrap, data.records(), prefix=prefix, partitions=partitions)
    return data


def spec(bootstrap: str, prefix: str, source: str) -> str:
    return f"kafka:{bootstrap}/{topic_name(prefix, source)}"


def embedded_reference(
    bootstrap: str,
    prefix: str,
    data: DemoInput,
    path: Path,
    names: tuple[str, ...] = SOURCES,
    *,
    mappings: Path = DEMO_MAPPINGS,
    schema: Path | None = None,
    first: tuple[str, ...] = (),
) -> Graph:
    """The embedded engine's graph of the sources' topics, in LMDB (open; the caller closes).

    The sources in ``first`` are read to their end before the others start (reference data
    that enrichments read: then every enrichment sees the final side tables, as it does when
    one job per source runs after the other)."""
    graph = Graph.open(path, schema)
    maps = Mapping.load_dir(mappings, graph.schema)
    phases = [tuple(n for n in first if n in names), tuple(n for n in names if n not in first)]
    for phase in phases:
        if not phase:
            continue
        sources = [
            KafkaSource(name, bootstrap, [topic_name(prefix, name)], group_id=f"ref-{prefix}")
            for name in phase
        ]
        engine = engine_for(graph, sources, maps, batch_ms=50)
        engine.open()
        want = sum(1 for r in data.records() if r.source in phase)
        deadline = time.monotonic() + 120
        while engine.stats.events < want and time.monotonic() < deadline:
            engine.step()
        engine.close()
        assert engine.stats.events == want, (phase, engine.stats.events, want)
    return graph


def enriching_mappings(directory: Path) -> tuple[Path, Path]:
    """The demo mappings and schema in ``directory``, with playback enriching from the side
    table the catalogue keeps (``titles``): ``started_watching`` gains the title's ``kind``
    (required: a watch of an unknown title is ``enrichment_missing``). Returns (mapping dir,
    schema file). (No demo mapping enriches; an enrichment has no ``when``, so ``live``, whose
    ``team_follow`` events carry no ``event_id``, cannot join ``live_events``.)"""
    maps = directory / "mappings"
    maps.mkdir(parents=True)
    for f in DEMO_MAPPINGS.glob("*.yaml"):
        (maps / f.name).write_text(f.read_text())
    _edit(
        maps / "playback.yaml",
        ("format: debezium\n",
         "format: debezium\nenrich:\n"
         '  - {table: titles, key: "{row.title_id}", as: title, required: true}\n'),
        ('          device: "device:{row.device_id}"\n',
         '          device: "device:{row.device_id}"\n          kind: "{title.kind}"\n'),
    )  # fmt: skip
    schema = directory / "schema.yaml"
    demo = Path(schema_module.__file__).with_name("demo_schema.yaml").read_text()
    edited = demo.replace(
        "      position_s: int\n      device: str\n",
        "      position_s: int\n      device: str\n      kind: str\n",
    )
    assert edited.count("kind: str") == 2
    schema.write_text(edited)
    return maps, schema


def _edit(path: Path, *replacements: tuple[str, str]) -> None:
    text = path.read_text()
    for old, new in replacements:
        assert text.count(old) == 1, (path.name, old)
        text = text.replace(old, new)
    path.write_text(text)


def dump(graph: Graph) -> Dump:
    """Every stored item of the graph's namespaces (tombstones too), header and value, keyed by
    ``(namespace, record id, item key)``, from an LMDB or a single-node Redis store."""
    kv: Any = graph.store.kv
    out: Dump = {}
    if isinstance(kv, LmdbKV):
        for ns in kv.namespaces():
            if ns.startswith(_NOT_GRAPH):
                continue
            db = kv._open_db(ns, create=False)
            with kv._env.begin(db=db) as txn:
                for k, v in txn.cursor():
                    k = bytes(k)
                    n = int.from_bytes(k[:2], "big")
                    out[(ns, k[2 : 2 + n], k[2 + n :])] = bytes(v)
        return out
    assert isinstance(kv, RedisKV), type(kv)
    client = kv._r
    pattern = kv.prefix.encode() + b"h{*"
    for key in client.scan_iter(match=pattern, count=1000):
        tag = key[key.index(b"{") + 1 : key.rindex(b"}")]
        ns_hex, _, rid_hex = tag.partition(b":")
        ns = bytes.fromhex(ns_hex.decode()).decode()
        if ns.startswith(_NOT_GRAPH):
            continue
        rid = bytes.fromhex(rid_hex.decode())
        for item, value in client.hgetall(key).items():
            out[(ns, rid, bytes(item))] = bytes(value)
    return out


def dead_letters(graph: Graph) -> dict[str, tuple[str, bytes]]:
    """Dead letters by id: (reason, payload)."""
    return {d.id: (d.reason, d.payload) for d in DeadLetterStore(graph.store.kv)}


def differences(a: Dump, b: Dump, limit: int = 5) -> list[str]:
    """A few lines saying how two dumps differ (empty when equal)."""
    lines = [f"only in the first: {k!r}" for k in sorted(a.keys() - b.keys())[:limit]]
    lines += [f"only in the second: {k!r}" for k in sorted(b.keys() - a.keys())[:limit]]
    lines += [
        f"differs: {k!r}: {a[k]!r} != {b[k]!r}"
        for k in sorted(k for k in a.keys() & b.keys() if a[k] != b[k])[:limit]
    ]
    return lines
