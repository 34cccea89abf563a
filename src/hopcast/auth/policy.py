"""Route policies and the one decision that applies them (pure: no web framework, no clock).

Every route declares a :class:`Policy` where it is declared (:func:`hopcast.api.policy.policy`
is the FastAPI adapter). A policy is one of:

* **public** (``role`` None) — the route holds no data: health, the OpenAPI document, the docs
  and static pages. ``reason`` says why it is public.
* **a role** — an API key holding that role (or one that implies it, :mod:`hopcast.auth.roles`).
* **a role or a device** (``device`` True) — what devices call (the schedule, prefetch
  manifests and payloads, device reports): an API key with the role, or a device token signed
  with the gateway's secret (:mod:`hopcast.live.tokens`). A device token never passes for any
  other route.

``limit`` names the rate-limit bucket the route draws from (``mutations``, ``ingest``,
``operator``), or None.

:func:`decide` answers, for a request's credential:

=====================================================  ======  ================
Credential                                             Status  ``error``
=====================================================  ======  ================
none, on a route that is not public                     401    ``unauthorized``
not a key and not a valid device token                  401    ``unauthorized``
a key that is unknown, wrong or revoked                 401    ``unauthorized``
a valid key without the role                            403    ``forbidden``
a valid device token on a route devices may not call    403    ``forbidden``
=====================================================  ======  ================

A 401 carries ``WWW-Authenticate: Bearer`` (the adapter adds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hopcast.auth.keys import PREFIX, Principal
from hopcast.auth.roles import Role, granted

#: The rate-limit buckets a policy may name (the limiter's configuration has one for each).
BUCKETS = ("mutations", "ingest", "operator", "reports")


@dataclass(frozen=True, slots=True)
class Policy:
    """Who may call a route (see the module docstring)."""

    role: Role | None
    device: bool = False
    limit: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit not in BUCKETS:
            raise ValueError(f"unknown rate-limit bucket {self.limit!r} (buckets: {BUCKETS})")
        if self.role is None and (self.device or not self.reason):
            raise ValueError("a public policy needs a reason and no device flag")

    @property
    def public(self) -> bool:
        return self.role is None

    def to_doc(self) -> dict[str, Any]:
        """The policy as the OpenAPI document records it (``x-hopcast-policy``)."""
        doc: dict[str, Any] = {"public": self.public}
        if self.role is not None:
            doc["role"] = self.role.value
            doc["device_token"] = self.device
        if self.limit is not None:
            doc["rate_limit"] = self.limit
        if self.reason:
            doc["reason"] = self.reason
        return doc


@dataclass(frozen=True, slots=True)
class Allowed:
    """Go on. ``principal``: the key's holder (None for a public route or a device);
    ``device``: the device id of a device token."""

    principal: Principal | None = None
    device: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """Answer ``status`` with ``error`` and ``message``."""

    status: int
    error: str
    message: str


def decide(
    policy: Policy,
    credential: str | None,
    authenticate: Callable[[str], Principal | None],
    device_of: Callable[[str], str | None],
) -> Allowed | Refused:
    """Whether a request with ``credential`` (the bearer token, or None) may call a route.

    Args:
        policy: the route's policy.
        credential: what followed ``Bearer`` in the ``Authorization`` header.
        authenticate: key → principal, or None if unknown, wrong or revoked (may raise if the
            key file is unreadable; the caller answers that).
        device_of: device token → its device id, or None if it does not verify.
    """
    if policy.role is None:
        return Allowed()
    needed = policy.role.value
    if not credential:
        how = "an API key" + (" or a device token" if policy.device else "")
        return Refused(401, "unauthorized", f"this route needs {how} (Authorization: Bearer …)")
    if credential.startswith(PREFIX + "_"):
        principal = authenticate(credential)
        if principal is None:
            return Refused(401, "unauthorized", "the API key is unknown, malformed or revoked")
        if policy.role not in granted(principal.roles):
            return Refused(
                403,
                "forbidden",
                f"key {principal.key_id} ({principal.name}) lacks the {needed!r} role",
            )
        return Allowed(principal)
    device = device_of(credential)
    if device is None:
        return Refused(401, "unauthorized", "the credential is not a valid API key or token")
    if not policy.device:
        return Refused(
            403, "forbidden", f"a device token cannot call this route; it needs the {needed!r} role"
        )
    return Allowed(device=device)
