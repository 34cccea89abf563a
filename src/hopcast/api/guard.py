"""ASGI middleware that bounds request bodies and keeps tracebacks away from clients.

1. A request whose ``Content-Length`` exceeds the limit gets a 413 before the app runs (its body
   is never read).
2. Otherwise the body is counted while it is read, so a chunked upload without a length stops
   with a 413 as soon as it crosses the limit; memory use stays bounded by the limit either way.
3. A client that disconnects while its body is being read gets no answer (and no error log).
4. An exception no handler took (a bug) is logged with its traceback and answered with a generic
   500 in the usual error shape — unless the response had already started, in which case the
   exception propagates and the server drops the connection.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hopcast.api.errors import INTERNAL_MESSAGE, BodyTooLarge, logger
from hopcast.api.responses import error


class RequestGuard:
    """Wrap ``app``; see the module docstring for what it guarantees."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        # 1. Declared length: refuse before reading anything.
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(limit)(scope, receive, send)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            # 2. Undeclared (chunked) or understated length: count while reading.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(limit)(scope, receive, send)
        except ClientDisconnect:
            # The client went away mid-body: nobody to answer, nothing went wrong here.
            logger.info("client disconnected during %s %s", scope.get("method"), scope.get("path"))
        except Exception:
            # 4. A bug: log it, answer generically.
            logger.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error(500, "internal_error", INTERNAL_MESSAGE)(scope, receive, send)


def _too_large(limit: int) -> Response:
    return error(413, "body_too_large", str(BodyTooLarge(limit).detail))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
