"""hopcast: a real-time member graph and live-event delivery platform.

The public API is what ``__all__`` lists (guarded by ``tests/test_exports.py``).
"""

from __future__ import annotations

from hopcast.errors import (
    HopcastError,
    InvalidInput,
    InvalidQuery,
    SchemaError,
    SchemaViolation,
    StorageError,
)
from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, Mutation, NodeDelete, NodeUpsert
from hopcast.graph.schema import Schema
from hopcast.graph.store import ApplyResult, Edge, Node
from hopcast.graphdb import Graph
from hopcast.query.spec import Hop, Limits

__version__ = "0.1.0"

__all__ = [
    "ApplyResult",
    "Edge",
    "EdgeDelete",
    "EdgeUpsert",
    "Graph",
    "Hop",
    "HopcastError",
    "InvalidInput",
    "InvalidQuery",
    "Limits",
    "Mutation",
    "Node",
    "NodeDelete",
    "NodeUpsert",
    "Schema",
    "SchemaError",
    "SchemaViolation",
    "StorageError",
    "__version__",
]
