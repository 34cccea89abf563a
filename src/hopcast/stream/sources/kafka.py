"""Apache Kafka: :class:`KafkaSource` reads topics with positions kept by hopcast;
:class:`KafkaSink` publishes records (the demo, the tests, Debezium-format replays).

The only module that imports ``confluent_kafka`` (``pip install 'hopcast[kafka]'``); its errors
leave as :class:`~hopcast.errors.SourceError`.

Positions: a record's partition is ``"<topic>:<partition>"`` and its offset Kafka's offset.
:meth:`KafkaSource.open` *assigns* every partition of the topics itself (no consumer-group
rebalancing: scaling out is the Flink engine's job), each at the stored offset + 1; partitions
without a stored position start at ``start`` (``earliest``, the default, or ``latest``).
Partitions added to a topic while it runs are picked up within ``refresh_s`` and read from
``start`` too. Kafka's committed offsets are not used to resume: :meth:`KafkaSource.commit`
writes them (asynchronously, for lag monitoring with the usual Kafka tools) only when
``commit_offsets`` is on.

Values are the bytes on the topic; a Debezium-format topic (JSON converter, with or without
schemas) is decoded by a mapping with ``format: debezium`` like any other change events, and a
tombstone (null value) arrives as an empty value, which that decoder skips. The record's event
time is the Kafka message timestamp (µs), its key and headers are the message's.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from hopcast.errors import ConfigError, SourceError
from hopcast.stream.record import Position, Record

log = logging.getLogger(__name__)
#: librdkafka's own log lines (connection drops, retries) go here instead of stderr.
_client_log = logging.getLogger(f"{__name__}.client")

_STARTS = ("earliest", "latest")


def _driver() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the Kafka source needs confluent-kafka: pip install 'hopcast[kafka]'"
        ) from exc
    return confluent_kafka


def partition_name(topic: str, partition: int) -> str:
    """The position partition of a Kafka topic partition: ``"<topic>:<partition>"``."""
    return f"{topic}:{partition}"


def parse_partition(name: str) -> tuple[str, int]:
    """Inverse of :func:`partition_name`."""
    topic, sep, number = name.rpartition(":")
    if not sep or not number.isdigit():
        raise ValueError(f"not a Kafka position partition: {name!r}")
    return topic, int(number)


class KafkaSource:
    """The records of ``topics`` on the cluster at ``bootstrap``. See the module docstring.

    Args:
        name: the source name (records' ``source``).
        bootstrap: ``host:port[,host:port…]``.
        topics: topics to read, every partition of each.
        group_id: the consumer group offsets are committed under (default ``hopcast-<name>``).
        start: where partitions without a stored position begin: ``earliest`` or ``latest``.
        commit_offsets: commit offsets to Kafka on :meth:`commit` (monitoring only).
        config: more librdkafka settings (``security.protocol``, ``sasl.*``, …).
        refresh_s: how often to look for new partitions while polling.
        timeout_s: how long metadata requests may take.
    """

    def __init__(
        self,
        name: str,
        bootstrap: str,
        topics: Sequence[str],
        *,
        group_id: str | None = None,
        start: str = "earliest",
        commit_offsets: bool = True,
        config: Mapping[str, Any] | None = None,
        refresh_s: float = 30.0,
        timeout_s: float = 10.0,
    ) -> None:
        if start not in _STARTS:
            raise ConfigError(f"source {name!r}: start must be earliest or latest, not {start!r}")
        if not topics:
            raise ConfigError(f"source {name!r}: no topics to read")
        self.name = name
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.group_id = group_id or f"hopcast-{name}"
        self.start = start
        self.commit_offsets = commit_offsets
        self.config = dict(config or {})
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._consumer: Any = None
        self._assigned: set[tuple[str, int]] = set()
        self._last_polled: dict[tuple[str, int], int] = {}
        self._resume: dict[tuple[str, int], int] = {}
        self._refreshed = 0.0

    # -- Source ---------------------------------------------------------------------------

    def open(self, resume: Mapping[str, Position]) -> None:
        """Assign every partition of the topics: after ``resume`` where given, else ``start``."""
        self.close()
        kafka = _driver()
        settings = {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.start,
            "enable.partition.eof": False,
            "error_cb": self._on_error,
            "logger": _client_log,
            **self.config,
        }
        try:
            self._consumer = kafka.Consumer(settings)
        except kafka.KafkaException as exc:
            raise self._error("creating the consumer", exc) from exc
        self._resume = {}
        for partition, position in resume.items():
            try:
                key = parse_partition(partition)
            except ValueError:
                continue  # not one of ours
            self._resume[key] = position.offset + 1
        try:
            self._assign_new()
        except SourceError:
            self.close()
            raise

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` records; waits at most ``timeout_s`` when none are ready."""
        consumer = self._require_open()
        if time.monotonic() - self._refreshed >= self.refresh_s:
            try:  # a broker that is away now must not stop the pipeline: look again later
                self._assign_new(timeout_s=min(self.timeout_s, 0.5))
            except SourceError as exc:
                log.warning("source %s: looking for new partitions: %s", self.name, exc)
                self._refreshed = time.monotonic()
        kafka = _driver()
        try:
            messages = consumer.consume(num_messages=max_records, timeout=max(timeout_s, 0))
        except kafka.KafkaException as exc:
            raise self._error("consuming", exc) from exc
        out: list[Record] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal() or not error.retriable():
                    raise SourceError(f"source {self.name!r}: {error.str()}")
                log.warning("source %s: %s", self.name, error.str())
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            kind, stamp = message.timestamp()
            headers = message.headers() or ()
            out.append(
                Record(
                    source=self.name,
                    position=Position(partition_name(topic, partition), offset),
                    value=message.value() or b"",
                    key=message.key(),
                    event_time=stamp * 1000 if kind != kafka.TIMESTAMP_NOT_AVAILABLE else None,
                    headers=tuple((k, v or b"") for k, v in headers),
                )
            )
            self._last_polled[(topic, partition)] = offset
        return out

    def commit(self, positions: Mapping[str, Position]) -> None:
        """Commit these positions' offsets to Kafka (for monitoring) if ``commit_offsets``."""
        if not self.commit_offsets or self._consumer is None:
            return
        kafka = _driver()
        offsets = []
        for partition, position in positions.items():
            try:
                topic, number = parse_partition(partition)
            except ValueError:
                continue
            if (topic, number) in self._assigned:
                offsets.append(kafka.TopicPartition(topic, number, position.offset + 1))
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except kafka.KafkaException as exc:  # monitoring only: never stops the pipeline
            log.warning("source %s: committing offsets to Kafka failed: %s", self.name, exc)

    def close(self) -> None:
        """Close the consumer (nothing is committed on the way out)."""
        consumer, self._consumer = self._consumer, None
        self._assigned.clear()
        self._last_polled.clear()
        if consumer is not None:
            try:
                consumer.close()
            except Exception as exc:
                log.debug("source %s: closing the consumer: %s", self.name, exc)

    # -- LagAware ---------------------------------------------------------------------------

    def lag(self) -> Mapping[str, int]:
        """Per partition, records on the broker beyond the last one polled.

        From the watermarks the consumer's fetches brought (no request to the broker, so the
        engine may ask every batch); a partition not fetched from yet is left out.
        """
        consumer = self._require_open()
        kafka = _driver()
        out: dict[str, int] = {}
        for topic, number in sorted(self._assigned):
            try:
                low, high = consumer.get_watermark_offsets(
                    kafka.TopicPartition(topic, number), cached=True
                )
            except kafka.KafkaException as exc:
                raise self._error("reading watermarks", exc) from exc
            if low < 0 or high < 0:
                continue
            polled = self._last_polled.get((topic, number))
            next_offset = polled + 1 if polled is not None else self._resume.get((topic, number))
            if next_offset is None:
                next_offset = low if self.start == "earliest" else high
            out[partition_name(topic, number)] = max(0, high - max(next_offset, low))
        return out

    # -- helpers ----------------------------------------------------------------------------

    def partitions(self) -> list[tuple[str, int]]:
        """The assigned ``(topic, partition)`` pairs."""
        return sorted(self._assigned)

    def _assign_new(self, timeout_s: float | None = None) -> None:
        """Assign the topics' partitions that are not assigned yet (all of them at open)."""
        consumer = self._require_open()
        kafka = _driver()
        new = []
        for topic in self.topics:
            try:
                metadata = consumer.list_topics(
                    topic=topic, timeout=self.timeout_s if timeout_s is None else timeout_s
                )
            except kafka.KafkaException as exc:
                raise self._error(f"reading the metadata of topic {topic!r}", exc) from exc
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                reason = info.error.str() if info is not None and info.error else "not found"
                raise SourceError(
                    f"source {self.name!r}: topic {topic!r} on {self.bootstrap} is not "
                    f"available: {reason}"
                )
            for number in sorted(info.partitions):
                if (topic, number) in self._assigned:
                    continue
                offset = self._resume.get((topic, number))
                if offset is None:
                    offset = (
                        kafka.OFFSET_BEGINNING if self.start == "earliest" else kafka.OFFSET_END
                    )
                new.append(kafka.TopicPartition(topic, number, offset))
        if new:
            try:
                consumer.incremental_assign(new)
            except kafka.KafkaException as exc:
                raise self._error("assigning partitions", exc) from exc
            self._assigned.update((tp.topic, tp.partition) for tp in new)
        self._refreshed = time.monotonic()

    def _require_open(self) -> Any:
        if self._consumer is None:
            raise SourceError(f"source {self.name!r} is not open")
        return self._consumer

    def _on_error(self, error: Any) -> None:
        log.warning("source %s: kafka: %s", self.name, error.str())

    def _error(self, doing: str, exc: Exception) -> SourceError:
        return SourceError(f"source {self.name!r}: {doing} on {self.bootstrap} failed: {exc}")


class KafkaSink:
    """Publishes records to Kafka: ``send`` queues, ``flush`` waits and raises on any failure.

    Args:
        bootstrap: ``host:port[,host:port…]``.
        config: more librdkafka producer settings.
    """

    def __init__(self, bootstrap: str, *, config: Mapping[str, Any] | None = None) -> None:
        kafka = _driver()
        self.bootstrap = bootstrap
        settings = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "logger": _client_log,
            **(config or {}),
        }
        self._failures: list[str] = []
        try:
            self._producer = kafka.Producer(settings)
        except kafka.KafkaException as exc:
            raise SourceError(f"creating a producer for {bootstrap} failed: {exc}") from exc

    def create_topic(self, topic: str, partitions: int = 1, *, timeout_s: float = 30.0) -> None:
        """Create ``topic`` with ``partitions`` (replication factor 1); an existing one is kept."""
        kafka = _driver()
        admin_api = importlib.import_module("confluent_kafka.admin")
        admin = admin_api.AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [admin_api.NewTopic(topic, num_partitions=partitions, replication_factor=1)],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        try:
            futures[topic].result(timeout=timeout_s)
        except kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if getattr(error, "code", lambda: None)() == kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                return
            raise SourceError(
                f"creating topic {topic!r} on {self.bootstrap} failed: {exc}"
            ) from exc

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue one message (``value=None`` is a tombstone); waits while the queue is full."""
        kafka = _driver()
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.1)
            except kafka.KafkaException as exc:
                raise SourceError(f"producing to {topic!r} failed: {exc}") from exc
        self._producer.poll(0)

    def send_records(self, topic: str, records: Iterable[Record]) -> int:
        """Queue ``records`` (value, key, headers, event time in ms) to ``topic``; their count.

        Relays another source into Kafka: PostgreSQL CDC events become a Debezium topic.
        """
        count = 0
        for record in records:
            self.send(
                topic,
                record.value if record.value else None,
                record.key,
                headers=record.headers,
                timestamp_ms=record.event_time // 1000 if record.event_time is not None else None,
            )
            count += 1
        return count

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued message is acknowledged.

        Raises:
            SourceError: if messages are still queued after ``timeout_s`` or any failed.
        """
        left = self._producer.flush(timeout_s)
        failures, self._failures = self._failures, []
        if left:
            raise SourceError(f"{left} message(s) not delivered to {self.bootstrap} in time")
        if failures:
            raise SourceError(
                f"{len(failures)} message(s) not delivered to {self.bootstrap}: {failures[0]}"
            )

    def close(self) -> None:
        """Flush what is queued."""
        self.flush()

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error.str()}")


def from_spec(name: str, args: str) -> KafkaSource:
    """``kafka:BOOTSTRAP/TOPIC[,TOPIC…][#group=G&start=earliest&commit=yes&<librdkafka key>=V]``.

    Options whose name has a dot (``security.protocol=SSL``) go to librdkafka as they are.
    """
    target, _, fragment = args.partition("#")
    bootstrap, _, topics_text = target.partition("/")
    topics = [t for t in topics_text.split(",") if t]
    if not bootstrap or not topics:
        raise ConfigError(
            f"source {name!r}: kafka spec needs servers and topics: kafka:HOST:PORT/TOPIC[,…]"
        )
    options = dict(parse_qsl(fragment, keep_blank_values=True))
    config = {k: v for k, v in options.items() if "." in k}
    plain = {k: v for k, v in options.items() if "." not in k}
    known = {"group", "start", "commit"}
    unknown = set(plain) - known
    if unknown:
        raise ConfigError(
            f"source {name!r}: unknown kafka option(s) {sorted(unknown)} (known: {sorted(known)}"
            " and librdkafka settings with a dot)"
        )
    commit = plain.get("commit", "yes").lower()
    if commit not in ("yes", "no", "true", "false", "1", "0", "on", "off"):
        raise ConfigError(f"source {name!r}: commit={commit!r} is not yes or no")
    return KafkaSource(
        name,
        bootstrap,
        topics,
        group_id=plain.get("group") or None,
        start=plain.get("start", "earliest"),
        commit_offsets=commit in ("yes", "true", "1", "on"),
        config=config,
    )
