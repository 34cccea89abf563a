"""Queries sent to a running ``hopcast serve`` (``--url``) instead of the local store.

The server answers a query with the same document the local query's ``to_dict()`` gives, so the
CLI renders both alike. A 4xx answer has the body ``{"error": kind, "message": msg}`` and becomes
:class:`~hopcast.errors.InvalidInput` (404: :class:`~hopcast.errors.NotFound`), so it exits 2
like the same mistake made locally.

Uses httpx when it is installed, else the standard library.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from hopcast.auth.keys import client_headers
from hopcast.errors import HopcastError, InvalidInput, NotFound

#: Seconds to wait for an answer: a deep traversal takes well under a second, so 30 s only
#: fires on a hung or unreachable server.
HTTP_TIMEOUT_S = 30.0
#: Characters of a non-JSON error body quoted in the message (an HTML error page is long).
ERROR_BODY_CHARS = 200

Doc = dict[str, Any]


def segment(node_id: str) -> str:
    """A node id quoted for a URL path (``account:42`` stays readable)."""
    return urllib.parse.quote(node_id, safe=":")


def call(base: str, route: str, params: Doc, body: Doc | None = None) -> Doc:
    """GET ``base + route`` with ``params`` (None and "" left out), or POST ``body`` as JSON.

    Returns:
        The JSON object the server answered.

    Raises:
        InvalidInput: the server rejected the query (4xx other than 404).
        NotFound: 404.
        HopcastError: the server failed (5xx), could not be reached, or did not answer JSON.
    """
    query = {k: str(v) for k, v in params.items() if v is not None and v != ""}
    url = base.rstrip("/") + route
    status, raw = _send(url, query, body)
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if status >= 400:
        message = doc.get("message") if isinstance(doc, dict) else None
        if not message:
            message = raw[:ERROR_BODY_CHARS].decode(errors="replace").strip() or f"HTTP {status}"
        if status == 404:
            raise NotFound(message)
        if status < 500:
            raise InvalidInput(message)
        raise HopcastError(f"server error (HTTP {status}): {message}")
    if not isinstance(doc, dict):
        raise HopcastError(f"{url} did not answer with a JSON object (HTTP {status})")
    return doc


def _send(url: str, query: dict[str, str], body: Doc | None) -> tuple[int, bytes]:
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx comes with the dev and bench extras
        return send_urllib(url, query, body)
    method = "GET" if body is None else "POST"
    try:
        resp = httpx.request(
            method, url, params=query, json=body, headers=client_headers(), timeout=HTTP_TIMEOUT_S
        )
    except httpx.HTTPError as exc:
        raise HopcastError(f"cannot reach {url}: {exc}") from exc
    return resp.status_code, resp.content


def send_urllib(url: str, query: dict[str, str], body: Doc | None) -> tuple[int, bytes]:
    """The standard-library transport: ``(status, body)``, error statuses included."""
    full = f"{url}?{urllib.parse.urlencode(query)}" if query else url
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json", "accept": "application/json"}
    request = urllib.request.Request(full, data=data, headers=headers | client_headers())
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, bytes(exc.read())
    except OSError as exc:
        raise HopcastError(f"cannot reach {url}: {exc}") from exc
