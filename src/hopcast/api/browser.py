"""ASGI middleware that keeps a web page in the operator's browser from using the API.

Keys travel in the ``Authorization`` header, which a browser never adds by itself, so another
site cannot borrow an operator's session (there are no cookies). What is left for a hostile
page is what needs no credential or reaches the API some other way; for every HTTP request:

1. **Host allow-list** — a ``Host`` not in ``allowed_hosts`` gets a 421 ``unknown_host``. This
   stops DNS rebinding: a hostile name that resolves to 127.0.0.1 makes the browser treat the
   API as that name's origin; the ``Host`` header still carries the hostile name.
2. **State-changing methods** (POST, PUT, PATCH, DELETE):

   a. an ``Origin`` header that is present and is neither this server's own origin nor one in
      ``cors_origins`` gets a 403 ``cross_origin`` (clients that are not browsers send none);
   b. a body must be JSON (``application/json``, ``application/*+json``, JSON lines): anything
      else gets a 415 ``unsupported_media_type``. Forms, ``text/plain`` and type-less bodies
      are what a page may send cross-site without a CORS preflight; JSON is not. A body with
      no ``Content-Type`` and no ``Origin`` is taken as JSON: a browser sends ``Origin`` with
      every cross-site write, so such a request comes from a program, not from a page.

3. **Headers on every response**: ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
   no-referrer``, and on HTML :data:`CONTENT_SECURITY_POLICY` (scripts from this origin only,
   none inline; no framing, no plugins, no ``<base>``). Over HTTPS (``--tls-cert``) also
   ``Strict-Transport-Security`` (:data:`HSTS_MAX_AGE_S`), so a browser that has once reached
   the API over TLS never sends a key to it in clear text again; never over plain HTTP, where
   browsers ignore it and a loopback or development server must stay reachable.

CORS stays closed unless origins are configured (``--cors-origin``): then
:func:`hopcast.api.create_app` adds Starlette's ``CORSMiddleware`` for exactly those.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hopcast.api.responses import error

#: Host names every server accepts: loopback. A deployment adds its own (``--allowed-host``).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: The ``allowed_hosts`` entry that turns the Host check off (behind a proxy that checks it).
ANY_HOST = "*"
#: Methods that change state: only these get the Origin and content-type checks.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Media types a body may have: JSON and JSON lines (none is a CORS "simple" type).
JSON_TYPES = frozenset({"application/json", "application/x-ndjson", "application/jsonl"})
#: The pages' policy. Scripts only from this origin (no inline script, no eval); styles may be
#: inline (Swagger UI sets them; CSS cannot run code); images also as data: and blob: URLs
#: (artwork); fetches and WebSockets to this origin and to the live gateway, which listens on
#: another port (``ws:``/``wss:``); nothing may frame the pages.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self' ws: wss:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
_CSP = (b"content-security-policy", CONTENT_SECURITY_POLICY.encode())
#: How long a browser keeps to HTTPS after one answer over it: a year, the common preload value.
#: Without ``includeSubDomains``: the API's name says nothing about its siblings.
HSTS_MAX_AGE_S = 365 * 24 * 3600
_HSTS = (b"strict-transport-security", f"max-age={HSTS_MAX_AGE_S}".encode())
_PORT_SUFFIX = re.compile(r"(?::[0-9]{0,5})?")


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, lower-case, without the port (IPv6 without brackets).

    Only a port of digits is taken off: anything else after the name (``127.0.0.1:80@evil``,
    ``localhost:abc``) is no ``host[:port]``, and the whole header is returned, which no
    allow-list entry matches."""
    host = host_header.strip().lower()
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        return name if bracket and _is_port_suffix(port) else host
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name if _is_port_suffix(":" + port) else host
    return host


def _is_port_suffix(text: str) -> bool:
    """``""``, or ``":"`` and at most 5 ASCII digits: what may follow a host name (RFC 3986
    ``[":" port]``, the port possibly empty)."""
    return _PORT_SUFFIX.fullmatch(text) is not None


class BrowserGuard:
    """Wrap ``app``; see the module docstring.

    Args:
        allowed_hosts: host names served (compared without the port); None or one entry
            :data:`ANY_HOST`: any.
        cors_origins: origins (``https://console.example``) allowed to send state-changing
            requests besides the server's own.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Collection[str] | None = None,
        cors_origins: Collection[str] = (),
    ) -> None:
        self.app = app
        hosts = None if allowed_hosts is None else {host_name(h) for h in allowed_hosts}
        self.allowed_hosts = None if hosts is None or ANY_HOST in hosts else frozenset(hosts)
        self.cors_origins = frozenset(o.rstrip("/").lower() for o in cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {name.lower() for name, _ in headers}
                extra = [h for h in _ALWAYS if h[0] not in names]
                content_type = Headers(raw=headers).get("content-type", "")
                if content_type.startswith("text/html") and _CSP[0] not in names:
                    extra.append(_CSP)
                if scope.get("scheme") == "https" and _HSTS[0] not in names:
                    extra.append(_HSTS)
                message = {**message, "headers": headers + extra}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            status, kind, message = refusal
            await error(status, kind, message)(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """``(status, error, message)`` for a request refused by steps 1-2, else None."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        # 1. Host allow-list.
        if self.allowed_hosts is not None and host_name(host) not in self.allowed_hosts:
            return (
                421,
                "unknown_host",
                f"this server does not answer for host {host[:100]!r} (add it with --allowed-host)",
            )
        if scope["method"] not in UNSAFE_METHODS:
            return None
        # 2a. Origin: absent (not a browser) or this server's own, or configured.
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{host}".lower()
            given = origin.rstrip("/").lower()
            if given != own and given not in self.cors_origins:
                return (
                    403,
                    "cross_origin",
                    f"a state-changing request from origin {origin[:100]!r} is refused "
                    "(add it with --cors-origin)",
                )
        # 2b. A body must be JSON.
        if _has_body(headers):
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            untyped_from_a_program = not media and origin is None
            if untyped_from_a_program:
                return None
            if media not in JSON_TYPES and not (
                media.startswith("application/") and media.endswith("+json")
            ):
                return (
                    415,
                    "unsupported_media_type",
                    f"the body must be JSON (Content-Type: application/json), not "
                    f"{media[:60] or 'untyped'!r}",
                )
        return None


def _has_body(headers: Headers) -> bool:
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length", "0").strip()
    return length != "0" and length != ""
