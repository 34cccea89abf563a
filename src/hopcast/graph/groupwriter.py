"""Where the group committer of the HTTP API (:mod:`hopcast.api.groupcommit`) applies a group.

:class:`Joined` applies the requests of a group in one store write: one
:meth:`GraphStore.apply` per request (each gets its own counts) inside one transaction, so one
commit (one fsync). If that write fails nothing of it was written, and each request is applied
on its own, so a store refusal reaches only the request that caused it.

:class:`WriterProcess` does the same in a child process that opens the same LMDB store itself
(``python -m hopcast.graph.groupwriter``). Why: py-lmdb releases the interpreter lock around
every LMDB call, so a writer *thread* takes the lock back after each of the several calls a mutation
makes -- and while the API's event loop is busy with reads it waits for the loop to let go each
time. Measured under the read mix, a group's write took ~50 ms in a thread for ~2 ms of work. A
process has an interpreter of its own; LMDB serialises its writes with every other writer of
the store (other workers, an ingest engine in the API process). The API process's own readers
see each commit as soon as it is made (a read view sees every write committed before it
began), and the child reports the nodes each group touched so the API process's node cache
forgets them.

Protocol over the child's stdin/stdout: frames of an 8-byte big-endian length and a pickle.
First ``(spec, schema)``, answered ``"ready"``; then per group a list of mutation lists,
answered ``(results, touched)`` where each result is an :class:`ApplyResult` or
``("refused" | "failed", message)``. End of input ends the child.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any

from hopcast.errors import StorageError, StorageRefused
from hopcast.graph.mutations import Mutation
from hopcast.graph.schema import Schema
from hopcast.graph.store import ApplyResult, GraphStore
from hopcast.kv.base import KVStore, ReadTxn, WriteTxn

logger = logging.getLogger("hopcast.graph")

_LEN = struct.Struct(">Q")
#: How long closing waits for the child to finish its group and exit before killing it.
CLOSE_TIMEOUT_S = 30.0

Result = ApplyResult | Exception


class OpenWrite(KVStore):
    """A KV as a second :class:`GraphStore` sees it: ``writer()`` joins the write that is open
    (no commit of its own), so several ``apply`` calls share one commit. Everything else goes
    to the KV itself."""

    def __init__(self, kv: KVStore) -> None:
        self._kv = kv
        self.name = kv.name
        self.txn: WriteTxn | None = None

    def configure(self, ns: str, ttl_us: int | None) -> None:
        self._kv.configure(ns, ttl_us)

    def configure_many(self, ttls: dict[str, int | None]) -> None:
        self._kv.configure_many(ttls)

    def ttl(self, ns: str) -> int | None:
        return self._kv.ttl(ns)

    def reader(self) -> AbstractContextManager[ReadTxn]:
        return self._kv.reader()

    def writer(self) -> AbstractContextManager[WriteTxn]:
        return self._joined()

    @contextmanager
    def _joined(self) -> Iterator[WriteTxn]:
        if self.txn is None:
            raise RuntimeError("no group write is open")
        yield self.txn

    def sweep(self, now: int, limit: int | None = None) -> int:
        raise RuntimeError("a joined view of the store does not sweep")

    def namespaces(self) -> list[str]:
        return self._kv.namespaces()

    def close(self) -> None:  # the KV belongs to the store
        pass


class Joined:
    """Applies groups to ``store`` in this process.

    ``touched`` after :meth:`apply`: the nodes changed by a shared write, whose listeners the
    caller calls (a request applied on its own has called the store's listeners already).
    """

    def __init__(self, store: GraphStore) -> None:
        self.store = store
        self.touched: set[str] = set()
        self._open = OpenWrite(store.kv)
        self._grouped = GraphStore(self._open, store.schema, store.clock)
        self._grouped.on_write(self.touched.update)

    def apply(self, batches: list[list[Mutation]]) -> list[Result]:
        """Each batch's result (or its error), all committed in one write when possible."""
        self.touched.clear()
        if len(batches) == 1:
            return self.one_by_one(batches)
        results: list[Result] = []
        try:
            with self.store.kv.writer() as txn:
                self._open.txn = txn
                try:
                    for batch in batches:
                        results.append(self._grouped.apply(batch, validated=True))
                finally:
                    self._open.txn = None
        except Exception as exc:
            logger.info("a group of %d writes failed (%s); applying each alone", len(batches), exc)
            self.touched.clear()
            return self.one_by_one(batches)
        return results

    def one_by_one(self, batches: list[list[Mutation]]) -> list[Result]:
        results: list[Result] = []
        for batch in batches:
            try:
                results.append(self.store.apply(batch, validated=True))
            except Exception as exc:
                results.append(exc)
        return results


def reopen_spec(kv: KVStore) -> dict[str, Any] | None:
    """How a child process opens the same store, or None where it cannot (only a writable
    LMDB directory: a memory store is this process's own, and Redis writes are round trips
    that wait with the interpreter lock released)."""
    from hopcast.kv.lmdb import LmdbKV

    if type(kv) is not LmdbKV:
        return None
    try:  # the environment's own settings, so the child opens it exactly as this process did
        if kv._readonly:
            return None
        env = kv._env
        return {"path": kv.path, "map_size": env.info()["map_size"], "sync": env.flags()["sync"]}
    except Exception:  # an LmdbKV this function does not know how to read: stay in-process
        logger.exception("cannot tell how to reopen the LMDB store; writing in-process")
        return None


def _write_frame(out: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_LEN.pack(len(data)) + data)
    out.flush()


def _read_frame(inp: IO[bytes]) -> Any:
    head = inp.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError("the other side closed the pipe")
    (size,) = _LEN.unpack(head)
    data = inp.read(size)
    if len(data) < size:
        raise EOFError("the other side closed the pipe mid-frame")
    return pickle.loads(data)


class WriterProcess:
    """A child process applying groups to an LMDB store (see the module docstring).

    Started on first use and again after it failed; not thread-safe (one committer thread).
    """

    def __init__(self, spec: dict[str, Any], schema: Schema) -> None:
        self.spec = spec
        self.schema = schema
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen[bytes]:
        import hopcast

        env = dict(os.environ)
        root = str(Path(hopcast.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "hopcast.graph.groupwriter"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        # If this object is dropped without close(), end of input still ends the child.
        weakref.finalize(self, proc.stdin.close)
        try:
            _write_frame(proc.stdin, (self.spec, self.schema))
            ready = _read_frame(proc.stdout)
        except (OSError, EOFError) as exc:
            self._kill(proc)
            raise StorageError(f"the writer process did not start: {exc}") from exc
        if ready != "ready":
            self._kill(proc)
            raise StorageError(f"the writer process did not start: {ready!r}")
        return proc

    def start(self) -> None:
        """Start the child unless it runs.

        Raises:
            StorageError: it did not start.
        """
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()

    def apply(self, batches: list[list[Mutation]]) -> tuple[list[Result], set[str]]:
        """Each batch's result (or its error) and the nodes the group changed. If the child
        fails, every batch gets a :class:`StorageError` (whether it was written is unknown;
        a retry is safe) and the next call starts a new child."""
        with self._lock:
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                proc = self._proc
                assert proc.stdin is not None and proc.stdout is not None
                _write_frame(proc.stdin, batches)
                encoded, touched = _read_frame(proc.stdout)
            except (OSError, EOFError, StorageError) as exc:
                if self._proc is not None:
                    self._kill(self._proc)
                    self._proc = None
                logger.error("the writer process failed: %s", exc)
                failed: list[Result] = [
                    StorageError(f"the writer process failed: {exc}") for _ in batches
                ]
                return failed, set()
        results: list[Result] = []
        for r in encoded:
            if isinstance(r, ApplyResult):
                results.append(r)
            else:
                kind, message = r
                results.append(
                    StorageRefused(message) if kind == "refused" else StorageError(message)
                )
        return results, touched

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        try:
            proc.stdin.close()  # end of input: the child finishes and exits
            proc.wait(CLOSE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            self._kill(proc)
        if proc.stdout is not None:
            proc.stdout.close()

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        proc.wait()


def main() -> int:
    """The child: open the store, then apply groups until the parent closes the pipe."""
    from hopcast.kv.lmdb import LmdbKV

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the frames' pipe
    spec, schema = _read_frame(inp)
    try:
        kv = LmdbKV(spec["path"], map_size=spec["map_size"], sync=spec["sync"])
        store = GraphStore(kv, schema)
    except Exception as exc:
        _write_frame(out, f"cannot open the store: {exc}")
        return 1
    joined = Joined(store)
    alone: set[str] = set()
    store.on_write(alone.update)
    _write_frame(out, "ready")
    while True:
        try:
            batches = _read_frame(inp)
        except EOFError:
            break
        alone.clear()
        results = joined.apply(batches)
        encoded: list[Any] = []
        for r in results:
            if isinstance(r, ApplyResult):
                encoded.append(r)
            else:
                encoded.append(("refused" if isinstance(r, StorageRefused) else "failed", str(r)))
        _write_frame(out, (encoded, joined.touched | alone))
    kv.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
