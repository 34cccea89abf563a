"""Who may call what: API keys (:mod:`~hopcast.auth.keys`), roles (:mod:`~hopcast.auth.roles`)
and route policies (:mod:`~hopcast.auth.policy`).

The one place that decides; the HTTP API only declares a policy on each route
(:func:`hopcast.api.policy.policy`). Nothing here imports a web framework.
"""

from __future__ import annotations

from hopcast.auth.keys import KeyFile, KeyRecord, Principal
from hopcast.auth.policy import Allowed, Policy, Refused, decide
from hopcast.auth.roles import Role

__all__ = ["Allowed", "KeyFile", "KeyRecord", "Policy", "Principal", "Refused", "Role", "decide"]
