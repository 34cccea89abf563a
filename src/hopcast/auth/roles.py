"""Roles and what each implies: the one table that says which role may do what.

================  =====================================================================
Role              May call
================  =====================================================================
``reader``        queries, the schedule, the console's read routes
``writer``        reader's routes, ``POST /v1/mutations``, ``POST /v1/ingest/{source}``
``operator``      reader's routes, live-event commands, materialise, the console
``admin``         everything (keys are managed with ``hopcast auth``, on the host)
================  =====================================================================

A key holds one or more roles; a route's policy names the one role it needs
(:mod:`hopcast.auth.policy`). ``writer`` and ``operator`` are separate on purpose: a pipeline's
ingest key cannot end a live event, and an operator's console key cannot write the graph.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Role(enum.StrEnum):
    """A role a key may hold."""

    READER = "reader"
    WRITER = "writer"
    OPERATOR = "operator"
    ADMIN = "admin"


#: role → the roles it includes (itself too). Admin includes everything; writer and operator
#: each include reader and nothing of each other.
IMPLIES: dict[Role, frozenset[Role]] = {
    Role.READER: frozenset({Role.READER}),
    Role.WRITER: frozenset({Role.WRITER, Role.READER}),
    Role.OPERATOR: frozenset({Role.OPERATOR, Role.READER}),
    Role.ADMIN: frozenset(Role),
}


def granted(roles: Iterable[Role]) -> frozenset[Role]:
    """Every role the given ones include."""
    out: frozenset[Role] = frozenset()
    for role in roles:
        out |= IMPLIES[role]
    return out


def parse_roles(names: Iterable[str]) -> tuple[Role, ...]:
    """Role names → roles, sorted and without repeats.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or no role at all.
    """
    roles: set[Role] = set()
    for name in names:
        try:
            roles.add(Role(name))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ValueError(f"unknown role {name!r} (roles: {known})") from None
    if not roles:
        raise ValueError("a key needs at least one role")
    return tuple(sorted(roles))
