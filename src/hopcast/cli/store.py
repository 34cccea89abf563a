"""``hopcast apply``, ``hopcast sweep`` and ``hopcast info``: writing to and looking at a store."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO

import click
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from hopcast.cli import render
from hopcast.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    Doc,
    Settings,
    emit,
    error,
    json_option,
    make_console,
    open_existing,
    print_json,
    wants_json,
)
from hopcast.errors import InvalidInput, StorageError, StorageRefused
from hopcast.graph.mutations import Mutation, from_dict
from hopcast.graph.store import ApplyResult
from hopcast.graphdb import Graph

#: Mutations per atomic write: enough to spread one fsync'd LMDB commit (~1 ms) over thousands
#: of writes, few enough that a batch holds a few MB and an interrupted run redoes little.
APPLY_BATCH = 5_000
#: Bad lines listed in the human summary; more would bury it (``--json`` lists every one).
MAX_BAD_SHOWN = 50


@dataclass
class ApplyRun:
    """What one ``apply`` did; :meth:`to_dict` is its ``--json`` output.

    ``lines`` counts lines read (blank ones included); ``mutations`` the good ones, of which
    ``applied`` changed the graph and ``skipped`` lost to a newer or equal stored version.
    ``stopped_at`` is the bad line ``--strict`` stopped at.
    """

    lines: int = 0
    mutations: int = 0
    applied: int = 0
    skipped: int = 0
    committed_through: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)
    stopped_at: int | None = None

    def to_dict(self) -> Doc:
        return {
            "lines": self.lines,
            "mutations": self.mutations,
            "applied": self.applied,
            "skipped": self.skipped,
            "bad": [{"line": n, "reason": r} for n, r in self.bad],
            "stopped_at": self.stopped_at,
        }


_json_decode = msgspec.json.Decoder().decode


def parse_line(raw: bytes, graph: Graph) -> Mutation:
    """One line's mutation, checked against the graph's schema.

    Raises:
        ValueError: the line is not UTF-8 JSON.
        InvalidInput: the JSON is not a mutation (``InvalidMutation``), or the mutation does not
            fit the schema (``SchemaViolation``, whose ``reason`` is the message to show).
    """
    try:
        data = _json_decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not a mutation: JSON nested deeper than the decoder allows") from None
    mutation = from_dict(data)
    graph.store.validate([mutation])
    return mutation


def _columns(total: int | None) -> list[ProgressColumn]:
    if total is not None:
        return [
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
        ]
    counter = TextColumn("{task.description} · {task.completed:,.0f} lines")
    return [SpinnerColumn(), counter, TimeElapsedColumn()]


def _file_size(source: BinaryIO) -> int | None:
    """Bytes in a regular file (for a byte progress bar), None for a pipe or terminal."""
    try:
        return os.fstat(source.fileno()).st_size if source.seekable() else None
    except (OSError, ValueError):
        return None


@click.command()
@click.argument("source", type=click.File("rb"), metavar="FILE|-")
@click.option("--batch-size", type=click.IntRange(1), default=APPLY_BATCH, show_default=True)
@click.option("--strict", is_flag=True, help="Stop at the first bad line (exit 2).")
@json_option
@click.pass_obj
def apply(
    settings: Settings, source: BinaryIO, batch_size: int, strict: bool, as_json: bool
) -> None:
    """Apply mutations from a JSON-lines FILE (- for stdin), one atomic write per batch.

    \b
    One mutation per line, e.g.
      {"kind": "edge_upsert", "src": "account:1", "type": "has_profile",
       "dst": "profile:1", "ts": 1714557600000000, "id": "evt-1", "props": {}}
    Kinds: node_upsert, edge_upsert, node_delete, edge_delete; ts in µs since the epoch.

    A bad line (not JSON, not a mutation, outside the schema) is skipped, listed at the end with
    its line number and reason, and makes the exit code 1. With --strict the run stops at the
    first bad line (the good lines before it are applied) and exits 2. Creates the store if
    it does not exist.
    """
    run = ApplyRun()
    err = make_console(stderr=True)
    total = _file_size(source)
    progress = Progress(*_columns(total), console=err, transient=True, disable=not err.is_terminal)
    with Graph.open(settings.store, settings.schema) as graph, progress:
        task = progress.add_task("applying", total=total)
        batch: list[Mutation] = []
        lines: list[int] = []

        def flush() -> None:
            try:
                try:
                    result = graph.apply(batch)
                except StorageRefused:  # the store cannot take one of them: find it, line by line
                    result = ApplyResult(0, 0)
                    for lineno, m in zip(lines, batch, strict=True):
                        try:
                            one = graph.apply([m])
                        except StorageRefused as exc:
                            run.bad.append((lineno, f"the store refused it: {exc}"))
                            run.mutations -= 1
                            continue
                        result = ApplyResult(
                            result.applied + one.applied, result.skipped + one.skipped
                        )
            except StorageError as exc:
                done = run.committed_through
                raise StorageError(f"{exc} (lines 1-{done} were applied)") from exc
            run.applied += result.applied
            run.skipped += result.skipped
            run.committed_through = run.lines
            batch.clear()
            lines.clear()
            progress.update(task, description=f"{run.mutations:,} mutations")

        for lineno, raw in enumerate(source, 1):
            run.lines = lineno
            progress.advance(task, len(raw) if total is not None else 1)
            if not raw.strip():
                continue
            try:
                batch.append(parse_line(raw, graph))
                lines.append(lineno)
            except (ValueError, InvalidInput) as exc:
                run.bad.append((lineno, getattr(exc, "reason", None) or str(exc)))
                if strict:
                    run.stopped_at = lineno
                    break
                continue
            run.mutations += 1
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    _report(wants_json(settings, as_json), run, err)


def _report(as_json: bool, run: ApplyRun, err: Console) -> None:
    """Print the summary (stdout) and the bad lines (stderr); exit 1 or 2 if there were any."""
    if as_json:
        print_json(run.to_dict())
    else:
        make_console().print(
            f"{run.lines:,} line(s): {run.mutations:,} mutation(s) applied "
            f"({run.applied:,} changed the graph, {run.skipped:,} lost to newer or equal "
            f"versions), {len(run.bad):,} bad line(s)",
            soft_wrap=True,
        )
    if run.stopped_at is not None:
        line, reason = run.bad[-1]
        error(f"line {line}: {reason} (--strict: stopped there; the lines before it were applied)")
        raise click.exceptions.Exit(EXIT_BAD_INPUT)
    if not as_json:
        for line, reason in run.bad[:MAX_BAD_SHOWN]:
            err.print(Text(f"line {line}: {reason}", style="yellow"), soft_wrap=True)
        if len(run.bad) > MAX_BAD_SHOWN:
            err.print(f"… and {len(run.bad) - MAX_BAD_SHOWN:,} more (--json lists them all)")
    if run.bad:
        raise click.exceptions.Exit(EXIT_ERROR)


@click.command()
@click.option("--limit", type=click.IntRange(1), help="Remove at most this many items.")
@json_option
@click.pass_obj
def sweep(settings: Settings, limit: int | None, as_json: bool) -> None:
    """Remove nodes and edges past their retention (reads already ignore them).

    JSON: {"removed": n, "namespaces": {ns: {"before": n, "after": n}}} listing the namespaces
    that changed (entry counts need a backend that keeps them, e.g. LMDB).
    """
    err = make_console(stderr=True)
    with open_existing(settings) as graph:
        before = _entries(graph)
        columns = (SpinnerColumn(), TextColumn("sweeping expired items"), TimeElapsedColumn())
        with Progress(
            *columns, console=err, transient=True, disable=not err.is_terminal
        ) as progress:
            progress.add_task("sweep", total=None)
            removed = graph.sweep(limit=limit)
        after = _entries(graph)
    changed = {
        ns: {"before": n, "after": after.get(ns, 0)}
        for ns, n in before.items()
        if n != after.get(ns, 0)
    }
    emit(settings, as_json, {"removed": removed, "namespaces": changed}, render.sweep)


def _entries(graph: Graph) -> dict[str, int]:
    """Entries per namespace when the backend counts them (``LmdbKV.stats``), else empty."""
    stats = getattr(graph.store.kv, "stats", None)
    return dict(stats()) if callable(stats) else {}


@click.command()
@json_option
@click.pass_obj
def info(settings: Settings, as_json: bool) -> None:
    """The store: path, backend, schema, namespaces with entry counts, checkpoints.

    JSON: {"store", "backend", "schema", "namespaces": [{"name", "retention_us", "entries"}],
    "checkpoints": {source: position}}; entries is null where the backend does not count.
    """
    with open_existing(settings) as graph:
        kv = graph.store.kv
        entries = _entries(graph)
        doc = {
            "store": str(getattr(kv, "path", settings.store)),
            "backend": kv.name,
            "schema": graph.schema.source,
            "namespaces": [
                {"name": ns, "retention_us": kv.ttl(ns), "entries": entries.get(ns)}
                for ns in kv.namespaces()
            ],
            "checkpoints": {k: _position(v) for k, v in graph.store.checkpoints().items()},
        }
    emit(settings, as_json, doc, render.info)


def _position(raw: bytes) -> str:
    """A checkpoint as text when it is printable UTF-8, else as ``0x`` hex."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return "0x" + raw.hex()
    return text if text.isprintable() else "0x" + raw.hex()
