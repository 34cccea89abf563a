"""The system under test, embedded: ``hopcast serve --gateway-port`` in a subprocess.

The load harness (:mod:`hopcast.sdk.simulator`) starts it on a temporary store, two loopback
ports reserved for its whole life (:class:`hopcast.ports.PortReservation`) and a fresh
``$HOPCAST_LIVE_SECRET``, and restarts it with SIGTERM (the gateway's spread ``bye restart``)
on the same store and ports: the schedule is persisted, so a restart loses nothing, and the
devices reconnecting meanwhile cannot take the ports it comes back on. Plus the few blocking
HTTP helpers the harness's coordinator uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hopcast.auth.keys import client_headers
from hopcast.config import LIVE_SECRET_ENV
from hopcast.errors import HopcastError
from hopcast.ports import PortReservation

#: How long the server may take to start (imports, store) or to stop (goodbyes to devices).
SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 30.0
_POLL_S = 0.05


class EmbeddedSystem:
    """``hopcast serve --gateway-port`` in a subprocess, on a temporary store, restartable.

    Args:
        root: a directory for the store and the server's log.
        secret: the device-token secret (``$HOPCAST_LIVE_SECRET`` of the server).
    """

    def __init__(self, root: Path, secret: bytes) -> None:
        self.root = root
        self.secret = secret
        self.host = "127.0.0.1"
        self._ports = (PortReservation(self.host), PortReservation(self.host))
        self.port = self._ports[0].port
        self.gateway_port = self._ports[1].port
        self.log = root / "server.log"
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def gateway(self) -> str:
        return f"ws://{self.host}:{self.gateway_port}"

    def start(self) -> None:
        """Start the server and wait until it answers ``/healthz`` (the gateway listens by
        then: the app starts it before serving).

        Raises:
            HopcastError: the server exited or did not answer in time (its log's tail).
        """
        env = dict(os.environ, **{LIVE_SECRET_ENV: self.secret.hex()})
        argv = [
            sys.executable,
            "-c",
            "from hopcast.cli import main; main()",
            "--store",
            str(self.root / "store"),
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--gateway-port",
            str(self.gateway_port),
            "--insecure",  # a throw-away server on loopback for the load harness
        ]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise HopcastError(f"the server exited ({self._proc.returncode}): {self._tail()}")
            with contextlib.suppress(OSError):
                if http_call("GET", self.api + "/healthz", timeout=1)[0] == 200:
                    return
            time.sleep(_POLL_S)
        self.stop()
        raise HopcastError(
            f"the server did not start in {SERVER_START_TIMEOUT_S} s: {self._tail()}"
        )

    def stop(self) -> None:
        """SIGTERM (the gateway says ``bye restart`` to every device), then wait; kill if slow."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop, then start on the same store and ports."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server for good and release its ports."""
        self.stop()
        for reservation in self._ports:
            reservation.close()

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return "(no log)"


def http_call(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, bytes]:
    """One blocking request (``body`` sent as JSON): the status and the body, errors included.

    Raises:
        OSError: no answer (refused, reset, timeout).
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, headers=client_headers(), method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is a loopback address (where 127.0.0.x source addresses work)."""
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.")
