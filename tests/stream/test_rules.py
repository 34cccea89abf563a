"""Hook import: both spellings, and errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from hopcast.durations import parse_duration
from hopcast.stream.rules import import_hook


def test_hooks_are_named_with_a_colon_or_a_last_dot() -> None:
    assert import_hook("hopcast.durations:parse_duration") is parse_duration
    assert import_hook("hopcast.durations.parse_duration") is parse_duration


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "must be 'package.module:function'"),
        ("nodots", "must be 'package.module:function'"),
        ("hopcast.durations:DAY", "has no function 'DAY'"),
        ("hopcast.no_such_module:f", "cannot import hook module"),
        ("broken_hook_module:f", "cannot import hook module 'broken_hook_module'"),
    ],
)
def test_a_hook_that_cannot_be_used_is_refused_with_the_reason(
    name: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_hook_module.py").write_text("raise RuntimeError('half written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=problem):
        import_hook(name)
