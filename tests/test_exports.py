"""The public API is exactly what ``hopcast.__all__`` lists, and every name in it resolves."""

from __future__ import annotations

import hopcast

EXPECTED = [
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


def test_all_lists_exactly_the_expected_names() -> None:
    assert hopcast.__all__ == EXPECTED


def test_all_is_sorted_so_additions_show_up_in_review() -> None:
    assert hopcast.__all__ == sorted(hopcast.__all__)


def test_every_exported_name_resolves() -> None:
    for name in hopcast.__all__:
        assert getattr(hopcast, name, None) is not None, name


def test_star_import_brings_exactly_the_exported_names() -> None:
    namespace: dict[str, object] = {}
    exec("from hopcast import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == EXPECTED


def test_the_version_matches_the_package_metadata() -> None:
    from importlib.metadata import version

    assert hopcast.__version__ == version("hopcast")
