"""The compiled rules of a mapping (:mod:`hopcast.stream.mapping`) and how they emit mutations.

A :class:`Rule` holds compiled fields (templates, value specs, conditions) and turns one event
into its mutations: it resolves the event time, derives idempotency ids from the rule's ``id``
template or from the record's source position (so a replay writes the same ids), fans out over
``each`` lists, applies the CDC delete policy of each output and runs the rule's hook.

Every mutation gets ``seq = order << OUTPUT_BITS | n``: the event's place in its source's order
(:attr:`~hopcast.stream.record.Event.order`: a CDC change's LSN, a record's offset) and the
mutation's number among the event's outputs. ``seq`` breaks ties between writes with the same
generation time — every change of a database transaction shares its commit time — so they
resolve in the order the source produced them, and a replay writes the same versions.

Hooks are plain functions named ``package.module:function`` in the mapping file:

* a rule's ``hook(event) -> Iterable[Mutation] | None`` adds mutations to the rule's outputs;
  it sees the event with ``event_time`` set to the rule's time;
* a mapping's ``prepare(event) -> Event | None`` reshapes each event before the rules (None
  drops it on purpose).

A hook that raises :class:`~hopcast.errors.RecordRejected` dead-letters the record with its own
reason; any other exception, or a return value of the wrong type, is reason ``hook_error``.
Hooks must be pure like the operators (no I/O, no clock): Flink runs them too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from hopcast.errors import RecordRejected
from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, Mutation, NodeDelete, NodeUpsert
from hopcast.stream.deadletter import Reason
from hopcast.stream.fields import CONVERTERS, Condition, Template, TimeSpec, ValueSpec
from hopcast.stream.operators import StepOutput
from hopcast.stream.record import MISSING, Event

#: One event may fan out to "up to a few dozen" nodes and edges (Netflix RDG); a list bigger
#: than this under ``each`` is far more likely a mapping mistake than one member event.
MAX_EACH = 1000
#: Bits of a mutation's ``seq`` that number the outputs of one event (the rest is the event's
#: place in its source's order): 4,096 outputs per event, far beyond "a few dozen"...
OUTPUT_BITS = 12
#: ...which bounds the outputs of one event; more is an ``out_of_bounds`` dead letter.
MAX_OUTPUTS = 1 << OUTPUT_BITS
#: Largest source order that fits beside the output number in a 63-bit ``seq`` (2**51: two
#: pebibytes of WAL, file bytes or Kafka offsets); a larger one saturates here.
MAX_ORDER = (1 << (63 - OUTPUT_BITS)) - 1

Hook = Callable[[Event], Any]


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One compiled output of a rule: a node or edge upsert or delete."""

    index: int
    kind: str
    node: Template | None
    edge_type: str | None
    src: Template | None
    dst: Template | None
    props: tuple[tuple[str, ValueSpec], ...]
    when: Condition
    each: tuple[str, ...] | None
    each_as: str
    on_delete: str


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: when it applies, its time, ids, outputs and hook."""

    name: str
    when: Condition
    time: TimeSpec | None
    id: Template | None
    outputs: tuple[OutputSpec, ...]
    hook: Hook | None

    def apply(self, event: Event, default_time: TimeSpec | None) -> list[Mutation]:
        """The mutations of ``event`` (for which ``when`` holds).

        Raises:
            RecordRejected: with the dead-letter reason; the message names the rule.
        """
        try:
            return self._apply(event, default_time)
        except RecordRejected as exc:
            raise RecordRejected(exc.reason, f"rule {self.name!r}: {exc.message}") from None

    def _apply(self, event: Event, default_time: TimeSpec | None) -> list[Mutation]:
        if not self.outputs and self.hook is None:
            return []  # a rule that drops on purpose needs no time
        time_spec = self.time or default_time
        if time_spec is not None:
            ts = time_spec.read(event)
        elif event.event_time is not None:
            ts = event.event_time
        else:
            raise RecordRejected(Reason.MISSING_TIME, "no time field and no source time")
        base = (
            self.id.render(event)
            if self.id is not None
            else f"{event.source}:{event.position.partition}:{event.position.offset}"
        )
        order = event.order if event.order is not None else event.position.offset
        seq = min(max(order, 0), MAX_ORDER) << OUTPUT_BITS
        out: list[Mutation] = []
        for o in self.outputs:
            if o.each is None:
                _emit(o, event, ts, f"{base}:{o.index}", out, seq)
                continue
            items = event.get(o.each)
            if items is MISSING or items is None:
                continue
            try:
                items = CONVERTERS["list"](items)  # a list, or a JSON array stored as text
            except ValueError:
                raise RecordRejected(
                    Reason.BAD_VALUE, f"each: {'.'.join(o.each)!r} is not a list"
                ) from None
            if len(items) > MAX_EACH:
                raise RecordRejected(
                    Reason.BAD_VALUE, f"each: {'.'.join(o.each)!r} has {len(items)} > {MAX_EACH}"
                )
            for i, item in enumerate(items):
                _emit(o, event.with_side(o.each_as, item), ts, f"{base}:{o.index}.{i}", out, seq)
            if len(out) > MAX_OUTPUTS:
                break
        if self.hook is not None:
            first = seq + len(out)
            extra = _run_hook(self.hook, event.with_time(ts))
            out += [
                m if m.seq is not None else replace(m, seq=first + i) for i, m in enumerate(extra)
            ]
        if len(out) > MAX_OUTPUTS:
            raise RecordRejected(
                Reason.OUT_OF_BOUNDS,
                f"{len(out)} or more outputs for one event; the limit is {MAX_OUTPUTS}",
            )
        return out


def _emit(o: OutputSpec, event: Event, ts: int, mid: str, out: list[Mutation], seq: int) -> None:
    if not o.when.holds(event):
        return
    kind = o.kind
    if event.op == "d" and kind in ("node", "edge"):
        if o.on_delete == "ignore":
            return
        if o.on_delete == "delete":
            kind = "delete_" + kind
    if kind in ("node", "delete_node"):
        assert o.node is not None
        node = o.node.render(event)
        seq += len(out)
        if kind == "delete_node":
            out.append(NodeDelete(node, ts, mid, seq))
        else:
            out.append(NodeUpsert(node, ts, mid, _props(o, event), seq))
        return
    assert o.src is not None and o.dst is not None and o.edge_type is not None
    src, dst = o.src.render(event), o.dst.render(event)
    seq += len(out)
    if kind == "delete_edge":
        out.append(EdgeDelete(src, o.edge_type, dst, ts, mid, seq))
    else:
        out.append(EdgeUpsert(src, o.edge_type, dst, ts, mid, _props(o, event), seq))


def _props(o: OutputSpec, event: Event) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name, spec in o.props:
        value = spec.read(event)
        if value is not MISSING:
            props[name] = value
    return props


def _run_hook(hook: Hook, event: Event) -> list[Mutation]:
    try:
        produced = hook(event)
        got = [] if produced is None else list(produced)
    except RecordRejected:
        raise
    except Exception as exc:
        raise RecordRejected(
            Reason.HOOK_ERROR, f"hook raised {type(exc).__name__}: {exc}"
        ) from None
    for m in got:
        if not isinstance(m, NodeUpsert | EdgeUpsert | NodeDelete | EdgeDelete):
            raise RecordRejected(
                Reason.HOOK_ERROR, f"hook returned {type(m).__name__}, not a mutation"
            )
    return got


@dataclass(frozen=True, slots=True)
class PrepareStep:
    """Runs a mapping's ``prepare`` hook: Event -> Event, or None to drop it."""

    hook: Hook
    name: str = "prepare"

    def __call__(self, event: Event) -> StepOutput:
        try:
            got = self.hook(event)
        except RecordRejected:
            raise
        except Exception as exc:
            raise RecordRejected(
                Reason.HOOK_ERROR, f"prepare hook raised {type(exc).__name__}: {exc}"
            ) from None
        if got is None:
            return ()
        if not isinstance(got, Event):
            raise RecordRejected(
                Reason.HOOK_ERROR, f"prepare hook returned {type(got).__name__}, not an Event"
            )
        return (got,)


def import_hook(dotted: str) -> Hook:
    """Import ``package.module:function`` (or ``package.module.function``).

    Raises:
        ValueError: if it cannot be imported or is not callable.
    """
    if not isinstance(dotted, str) or not dotted.strip():
        raise ValueError("a hook must be 'package.module:function'")
    module_name, sep, attr = dotted.partition(":")
    if not sep:
        module_name, _, attr = dotted.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"hook {dotted!r} must be 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise ValueError(f"cannot import hook module {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{module_name!r} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]
