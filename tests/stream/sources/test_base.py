"""The source interface: the reference source passes the contract; the kind registry."""

from __future__ import annotations

import pytest

from hopcast.errors import ConfigError
from hopcast.stream.record import Position
from hopcast.stream.sources import (
    ListSource,
    Source,
    build_source,
    check_source_contract,
    register_kind,
)


def test_list_source_passes_the_contract_with_one_partition() -> None:
    values = [f"v{i}".encode() for i in range(20)]
    got = check_source_contract(lambda: ListSource("s", values), values)
    assert [r.position for r in got] == [Position("0", i) for i in range(20)]


def test_list_source_passes_the_contract_with_several_partitions() -> None:
    parts = {p: [f"{p}-{i}".encode() for i in range(n)] for p, n in [("a", 5), ("b", 9), ("c", 1)]}
    expected = [v for vs in parts.values() for v in vs]
    check_source_contract(lambda: ListSource("s", parts), expected)


class _Unordered(ListSource):
    def poll(self, max_records: int, timeout_s: float):  # type: ignore[no-untyped-def]
        return list(reversed(super().poll(max_records, timeout_s)))


class _IgnoresResume(ListSource):
    def open(self, resume):  # type: ignore[no-untyped-def]
        super().open({})


@pytest.mark.parametrize("broken", [_Unordered, _IgnoresResume])
def test_the_contract_catches_a_broken_source(broken: type[ListSource]) -> None:
    values = [f"v{i}".encode() for i in range(6)]
    with pytest.raises(AssertionError):
        check_source_contract(lambda: broken("s", values), values)


def test_list_source_is_a_source_and_polls_appended_records() -> None:
    s = ListSource("s")
    assert isinstance(s, Source)
    s.open({})
    assert s.poll(10, 0.01) == []
    s.append(b"x")
    assert [r.value for r in s.poll(10, 0.01)] == [b"x"]
    assert s.lag() == {"0": 0}


def test_build_source_parses_specs_and_reports_unknown_kinds() -> None:
    register_kind("mem", lambda name, args: ListSource(name, [args.encode()]))
    s = build_source("clicks", "mem:hello")
    assert s.name == "clicks"
    with pytest.raises(ConfigError, match="unknown kind"):
        build_source("x", "nope:1")
    with pytest.raises(ConfigError, match="KIND:ARGS"):
        build_source("x", "justapath")
    register_kind("broken", "hopcast.no_such_module:from_spec")
    with pytest.raises(ConfigError, match="not available"):
        build_source("x", "broken:1")
