"""README.md stays true: its Python example runs, and it shows the two newcomer commands."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_shows_make_demo_and_make_test_first() -> None:
    text = README.read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quick_start and "make test" in quick_start


def test_the_readme_python_example_runs(tmp_path: Path) -> None:
    text = README.read_text()
    block = text.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    block = block.replace('"data/graph"', repr(str(tmp_path / "graph")))
    scope: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), scope)
    graph = scope["g"]
    assert graph.exists("account:42", "logged_in_from", "device:9")  # type: ignore[attr-defined]
    graph.close()  # type: ignore[attr-defined]


def test_the_make_targets_named_in_the_readme_exist() -> None:
    makefile = (README.parent / "Makefile").read_text()
    for target in (
        "demo",
        "test",
        "check",
        "bench",
        "bench-graph",
        "bench-graph-quick",
        "bench-ingest",
        "bench-ingest-quick",
        "bench-broadcast",
        "bench-broadcast-quick",
        "bench-scale",
        "bench-scale-quick",
    ):
        assert f"\n{target}:" in makefile


def test_the_readme_wire_protocol_session_decodes_frame_by_frame() -> None:
    from hopcast.live import messages as m

    text = README.read_text()
    section = text.split("### Wire protocol", 1)[1].split("\n## ", 1)[0]
    session = section.split("```json", 1)[1].split("```", 1)[0].strip().splitlines()
    from_device = (m.Hello, m.Subscribe, m.Unsubscribe, m.Pong, m.Ping)
    from_gateway = (m.Welcome, m.Trigger, m.State, m.Ping, m.Pong, m.Error, m.Bye)
    kinds = []
    for line in session:
        arrow, frame = line.split(" ", 1)
        msg = m.decode(frame.replace("<claims>", "e30").replace("<mac>", "x").encode())
        assert isinstance(msg, from_device if arrow == "→" else from_gateway), line
        kinds.append(type(msg))
    assert {m.Hello, m.Welcome, m.Subscribe, m.Trigger, m.State, m.Bye} <= set(kinds)
