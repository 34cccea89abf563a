"""Route policies for FastAPI: declare one on every route, where the route is declared.

::

    @router.post("/v1/mutations", dependencies=[policy(Role.WRITER, limit="mutations")])
    @router.get("/healthz", dependencies=[public("holds no data")])

The dependency applies :func:`hopcast.auth.policy.decide` to the request's
``Authorization: Bearer …`` header and sets ``request.state.principal`` (the key's
:class:`~hopcast.auth.keys.Principal`; None on a public route, for a device token, or when the
app runs without keys), ``request.state.device`` (a device token's device id) and then draws
from the route's rate-limit bucket. Refusals use the API's error shape: 401 ``unauthorized``
with ``WWW-Authenticate: Bearer``, 403 ``forbidden``, 429 ``rate_limited`` with
``Retry-After``, 503 ``keys_unavailable`` when the key file cannot be read (nobody is let in).

What the app checks against is ``app.state.auth`` (:class:`Auth`): ``keys`` None means the
app was built without authentication — :func:`hopcast.api.create_app`'s default, for tests and
embedding in a process that guards its own door; every ``hopcast`` command that serves
requires keys or an explicit ``--insecure`` on loopback.

Rate limits: when ``app.state.rate_limits`` is not None and the policy names a bucket, the
dependency calls ``rate_limits.check(subject, bucket)`` — subject the key's id, else the client's
address — which returns None (go on) or the seconds to wait (answer 429).

:func:`install` records each route's policy in the OpenAPI document (``x-hopcast-policy`` on
the operation); the bearer scheme itself comes from FastAPI's security dependency, so Swagger
UI's *Authorize* button sends the key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi import Security as Credentials
from fastapi.params import Depends
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hopcast.api.errors import ApiError, logger
from hopcast.api.ratelimit import charge
from hopcast.auth.keys import KeyFile
from hopcast.auth.policy import Allowed, Policy, decide
from hopcast.auth.roles import Role
from hopcast.durations import now_us
from hopcast.errors import ConfigError, TokenError
from hopcast.live import tokens
from hopcast.live.revocation import RevocationList, RevocationSource

#: The OpenAPI extension that records a route's policy on its operation.
POLICY_EXTENSION = "x-hopcast-policy"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="hck_<id>_<secret>",
    description="An API key (`hopcast auth create`), or a device token on the routes devices "
    "call. Send `Authorization: Bearer <key>`.",
)


@dataclass(frozen=True)
class Auth:
    """What the policies check against (``app.state.auth``).

    Attributes:
        keys: the key file; None: no authentication (every route open).
        device_secret: verifies device tokens on the routes devices call; None: none pass.
        clock: µs since the epoch, for device tokens' validity window.
        revoked: the device-token revocation list in force (the gateway's, which polls the
            shared list); a token it revokes passes no route, as it opens no connection.
            None: no list (no gateway in this process).
    """

    keys: KeyFile | None = None
    device_secret: bytes | None = None
    clock: Callable[[], int] = field(default=now_us)
    revoked: Callable[[], RevocationList] | None = None


class _Check:
    """A route's policy as a FastAPI dependency (see :func:`policy`)."""

    def __init__(self, declared: Policy) -> None:
        self.policy = declared

    async def _apply(self, request: Request, credential: str | None) -> None:
        auth: Auth = getattr(request.app.state, "auth", None) or _OPEN
        request.state.principal = None
        request.state.device = None
        if auth.keys is not None:
            keys = auth.keys
            try:
                verdict = decide(self.policy, credential, keys.authenticate, _devices(auth))
            except ConfigError as exc:
                logger.error("refusing every key: %s", exc)
                raise ApiError(
                    503, "keys_unavailable", "the key file cannot be read; see the server log"
                ) from None
            if not isinstance(verdict, Allowed):
                headers = {"WWW-Authenticate": "Bearer"} if verdict.status == 401 else None
                raise ApiError(verdict.status, verdict.error, verdict.message, headers=headers)
            request.state.principal = verdict.principal
            request.state.device = verdict.device
        if self.policy.limit is not None:
            charge(request, self.policy.limit)


class _Public(_Check):
    async def __call__(self, request: Request) -> None:
        await self._apply(request, None)


class _Guarded(_Check):
    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Credentials(bearer)],
    ) -> None:
        await self._apply(request, None if credentials is None else credentials.credentials)


_OPEN = Auth()


def _devices(auth: Auth) -> Callable[[str], str | None]:
    secret = auth.device_secret

    def device_of(token: str) -> str | None:
        if secret is None:
            return None
        try:
            claims = tokens.verify(secret, token, auth.clock())
        except TokenError:
            return None
        if auth.revoked is not None and auth.revoked().reason(claims) is not None:
            return None
        return claims.device

    return device_of


def policy(role: Role, *, device: bool = False, limit: str | None = None) -> Any:
    """The dependency that enforces "a key holding ``role``" (or, with ``device``, a device
    token too) and draws from rate-limit bucket ``limit``. Put it in the route's
    ``dependencies``."""
    return Depends(_Guarded(Policy(role, device, limit)))


def public(reason: str) -> Any:
    """The dependency of a route anyone may call; ``reason`` says why (it is recorded in the
    OpenAPI document)."""
    return Depends(_Public(Policy(None, reason=reason)))


def enforcer(route: APIRoute) -> Callable[[Request], Awaitable[None]] | None:
    """What the policy dependency of ``route`` does, as one call on a request (for
    :mod:`hopcast.api.fastpath`), or None when the route's dependencies are not exactly one
    policy."""
    dependencies = route.dependant.dependencies
    if len(dependencies) != 1 or not isinstance(dependencies[0].call, _Check):
        return None
    check = dependencies[0].call
    if isinstance(check, _Guarded):

        async def guarded(request: Request) -> None:
            credentials = await bearer(request)
            await check._apply(request, None if credentials is None else credentials.credentials)

        return guarded

    async def public_(request: Request) -> None:
        await check._apply(request, None)

    return public_


def served_routes(app: FastAPI) -> list[Any]:
    """Every route ``app`` serves, those of included routers too (FastAPI's route contexts:
    ``path_format``, ``methods``, ``original_route``, and the route's attributes as included)."""
    return list(iter_route_contexts(app.routes))


def policy_of(route: Any) -> Policy | None:
    """The policy a served route (an entry of :func:`served_routes`) declared, or None: a route
    that is not an API route, or one that declared none (a test fails on it)."""
    if not isinstance(getattr(route, "original_route", route), APIRoute):
        return None
    dependant = getattr(route, "dependant", None)
    for dependency in getattr(dependant, "dependencies", ()):
        if isinstance(dependency.call, _Check):
            return dependency.call.policy
    return None


def _refusal(description: str, header: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if header is not None:
        doc["headers"] = {header: {"schema": {"type": "string"}}}
    return doc


def install(app: FastAPI) -> None:
    """Record every route's policy in the OpenAPI document: ``x-hopcast-policy`` on the
    operation, and the refusals it can answer (401, 403, and 429 with a rate limit)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        doc = generate()
        paths = doc.get("paths", {})
        for route in served_routes(app):
            declared = policy_of(route)
            if declared is None:
                continue
            for method in route.methods or ():
                operation = paths.get(route.path_format, {}).get(method.lower())
                if operation is None:
                    continue
                operation[POLICY_EXTENSION] = declared.to_doc()
                responses = operation.setdefault("responses", {})
                if not declared.public:
                    responses.setdefault(
                        "401", _refusal("No credential, or not a valid one", "WWW-Authenticate")
                    )
                    responses.setdefault("403", _refusal("The key lacks the route's role"))
                if declared.limit is not None:
                    responses.setdefault("429", _refusal("Over the rate limit", "Retry-After"))
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


@dataclass(frozen=True)
class Security:
    """How a served app guards its door (:func:`hopcast.api.create_app`'s ``security``).

    Attributes:
        keys: the API key file; None: no authentication (every route open).
        allowed_hosts: ``Host`` names served; None: any (see :mod:`hopcast.api.browser`).
        cors_origins: other origins allowed to call the API from a browser.
        device_secret: verifies device tokens; default: the gateway's, if the app runs one.
        revocations: where revoked device tokens are listed, for an app that verifies device
            tokens without a gateway of its own (it polls the list like a gateway:
            :class:`~hopcast.live.revocation.RevocationWatch`). Ignored with a gateway, whose
            list is used. None with a ``device_secret`` and no gateway: revocation is not
            checked on HTTP (``hopcast serve`` always passes its store's list).
    """

    keys: KeyFile | None = None
    allowed_hosts: tuple[str, ...] | None = None
    cors_origins: tuple[str, ...] = ()
    device_secret: bytes | None = None
    revocations: RevocationSource | None = None
