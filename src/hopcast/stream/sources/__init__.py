"""Sources: adapters that deliver :class:`~hopcast.stream.record.Record` with positions.

The interface, the rules and the registry of source kinds are in
:mod:`~hopcast.stream.sources.base`; :class:`~hopcast.stream.sources.listsource.ListSource` is
the reference implementation. Each adapter lives in its own module and is imported lazily.
"""

from __future__ import annotations

from hopcast.stream.sources.base import (
    LagAware,
    Source,
    build_source,
    check_source_contract,
    register_kind,
    source_kinds,
)
from hopcast.stream.sources.listsource import ListSource

__all__ = [
    "LagAware",
    "ListSource",
    "Source",
    "build_source",
    "check_source_contract",
    "register_kind",
    "source_kinds",
]
