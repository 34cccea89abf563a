"""Ingestion: from the records of a company's services to graph mutations.

The pipeline of one source, every part of it pure (values in, values out; time passed in)::

    Record ──decode──▶ Event ──filter/project, time, changelog, enrich──▶ Event ──map──▶ Mutations
      │                                                                                  │
      └──────────────── any failure: one DeadLetter for the record ◀─────────────────────┤
                                                                                          ▼
                                              Coalescer (window per node/edge, timers) ──▶ store

* :mod:`~hopcast.stream.record` — :class:`Record` (raw bytes, source, ``(partition, offset)``
  position, event time) and :class:`Event` (the decoded, canonical document);
* :mod:`~hopcast.stream.operators` — decoders (JSON, Debezium), filter, project, event time,
  side tables kept current from a changelog, enrichment, and :class:`Pipeline`, which runs them
  and turns every failure into a dead letter (all of a record's mutations or none);
* :mod:`~hopcast.stream.mapping` — one YAML file per source: conditions, ids, types, times,
  properties, CDC delete handling, hooks; builds the pipeline (new verticals without code);
  :mod:`~hopcast.stream.fields` compiles its paths, templates, values and conditions, and
  :mod:`~hopcast.stream.rules` its rules; the demo company's files are in ``mappings/``;
* :mod:`~hopcast.stream.dedup` — :class:`Coalescer`: overlapping updates per node and edge
  merged in a window with last-write-wins, so the store sees fewer writes and the same graph;
* :mod:`~hopcast.stream.deadletter` — :class:`DeadLetter` (reason code, message, raw payload,
  source, position) and its KV-backed store;
* :mod:`~hopcast.stream.sources` — where records come from (the :class:`Source` protocol and
  its contract check; a list, JSON-lines log files, the HTTP ingest journal, PostgreSQL CDC,
  Kafka), each with resumable positions;
* :mod:`~hopcast.stream.engines` — what drives it: the embedded engine writes each batch's
  mutations together with the positions they came from in one atomic write.
"""

from __future__ import annotations

from hopcast.stream.deadletter import DeadLetter, DeadLetterStore, Reason
from hopcast.stream.dedup import Coalescer
from hopcast.stream.mapping import Mapping
from hopcast.stream.operators import Pipeline, SideTable
from hopcast.stream.record import Event, Position, Record

__all__ = [
    "Coalescer",
    "DeadLetter",
    "DeadLetterStore",
    "Event",
    "Mapping",
    "Pipeline",
    "Position",
    "Reason",
    "Record",
    "SideTable",
]
