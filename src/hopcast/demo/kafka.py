"""The demo company's records on Kafka: one topic per source, for the Kafka source and the Flink
engine (``hopcast flink seed``, the parity tests, ``make bench-scale``).

Each record is one message: the JSON line as value, no key (the producer spreads messages over
the partitions), and the record's time as the message timestamp (ms), which both engines read
as the event time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hopcast.demo.company import Company, CompanyConfig
from hopcast.demo.records import SOURCES, CompanyRecords, DemoRecord
from hopcast.durations import DAY, now_us


@dataclass(frozen=True)
class DemoInput:
    """A recorded input: the catalogue and members snapshot, then ``events`` interactions."""

    snapshot: list[DemoRecord]
    activity: list[DemoRecord]

    def records(self) -> list[DemoRecord]:
        return [*self.snapshot, *self.activity]

    def by_source(self) -> dict[str, list[DemoRecord]]:
        out: dict[str, list[DemoRecord]] = {name: [] for name in SOURCES}
        for r in self.records():
            out[r.source].append(r)
        return out


def demo_input(
    events: int,
    *,
    accounts: int = 500,
    titles: int = 2000,
    seed: int = 7,
    now: int | None = None,
    bad_share: float | None = None,
) -> DemoInput:
    """The snapshot and ``events`` interactions' records over the day before ``now``."""
    now = now_us() if now is None else now
    config = CompanyConfig(
        accounts=accounts, heavy_accounts=3, heavy_share=0.05, titles=titles, seed=seed
    )
    company = Company(config, now - 2 * DAY)
    records = (
        CompanyRecords(company)
        if bad_share is None
        else CompanyRecords(company, bad_share=bad_share)
    )
    snapshot = list(records.snapshot(now - DAY))
    activity = list(records.activity(events, now - DAY, now))
    return DemoInput(snapshot, activity)


def topic_name(prefix: str, source: str) -> str:
    """The topic of a source: ``<prefix><source>``."""
    return f"{prefix}{source}"


def publish(
    bootstrap: str,
    records: Iterable[DemoRecord],
    *,
    prefix: str = "",
    partitions: int = 3,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Create one topic per demo source (``partitions`` each, if missing) and send ``records``;
    returns the count per topic. Needs ``hopcast[kafka]``.

    Raises:
        SourceError: if the broker cannot be reached or refuses a topic or a message.
    """
    from hopcast.stream.sources.kafka import KafkaSink

    sink = KafkaSink(bootstrap)
    counts: dict[str, int] = {}
    try:
        for source in SOURCES:
            sink.create_topic(topic_name(prefix, source), partitions)
        for i, r in enumerate(records, 1):
            topic = topic_name(prefix, r.source)
            sink.send(topic, r.value, timestamp_ms=r.ts // 1000)
            counts[topic] = counts.get(topic, 0) + 1
            if progress is not None and i % 1000 == 0:
                progress(i)
        sink.flush()
    finally:
        sink.close()
    return counts
