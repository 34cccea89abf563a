"""A server under test in a child process, waited on by what it says rather than by sleeping.

:class:`Child` starts a command, collects its stderr (and its stdout, unless the test wants
that for itself) line by line in a thread, and :meth:`Child.wait_for` blocks until a line
matches — the ready line a server prints once it listens, with the port it bound (``--port 0``)
— failing with what was awaited, for how long, and the process's last lines. Nothing polls a
port that someone else may have taken.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

#: Bound on a server's start-up in a child process on a loaded machine (imports, opening the
#: store, a JVM): reached only when it hangs; a healthy start takes a few seconds.
START_TIMEOUT_S = 120.0
#: Bound on a graceful stop (SIGTERM: the servers say goodbye to their clients and flush).
STOP_TIMEOUT_S = 60.0
#: Lines of output quoted in a failure message.
TAIL_LINES = 40


class Child:
    """``argv`` in a child process (its own process group), its output collected by a thread.

    Args:
        argv: the command.
        env: extra environment variables (on top of this process's).
        capture_stdout: keep stdout for the test (:meth:`stdout` once the process has exited:
            a small output, such as a JSON summary) instead of collecting it with stderr; then
            only stderr lines are waited on.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        capture_stdout: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture_stdout else subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,  # a JVM or workers are children: stop the whole group
        )
        stream = self.proc.stderr if capture_stdout else self.proc.stdout
        assert stream is not None
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: object) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def stdout(self) -> str:
        """What the exited process wrote on stdout (``capture_stdout`` only)."""
        assert self.proc.stdout is not None and self.proc.poll() is not None
        return self.proc.stdout.read().decode()

    @property
    def output(self) -> str:
        """Everything collected so far."""
        return "\n".join(self.lines)

    def tail(self) -> str:
        return "\n".join(self.lines[-TAIL_LINES:])

    def wait_for(
        self, pattern: str, what: str, timeout: float = START_TIMEOUT_S, count: int = 1
    ) -> list[re.Match[str]]:
        """Wait until ``count`` collected lines match ``pattern`` (a regex, searched).

        Args:
            pattern: what the line says.
            what: what the line means, for the failure message ("the API listens").
            timeout: the longest wait; reached only if the process hangs.
            count: how many matching lines (one per worker, say).

        Returns:
            The first ``count`` matches, in order.

        Raises:
            AssertionError: the process exited first, or ``timeout`` passed; with the output.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for line in self.lines if (m := regex.search(line))]
                if len(found) >= count:
                    return found[:count]
                if not self._reader.is_alive():  # output closed: the process has exited
                    code = self.proc.wait()
                    raise AssertionError(
                        f"waiting for {what} ({pattern!r}): the process exited with {code} "
                        f"first; {self.argv[:6]} said:\n{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"waiting for {what} ({pattern!r}): not within {timeout:g} s; "
                        f"{self.argv[:6]} said:\n{self.tail()}"
                    )
                self._changed.wait(left)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` to the process (not its group) and wait for its exit code; kill the
        whole group if it does not exit within ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.argv[:6]} did not exit within {timeout:g} s of signal {sig}; it said:\n"
                f"{self.tail()}"
            ) from None
        finally:
            self._reader.join(STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL the process group (the process and any children it left), reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
