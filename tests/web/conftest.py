"""Fixtures of the browser tests: a real API + gateway per test (``pages.running_hopcast``),
one Debian Chromium per session driven by Playwright for Python with a fresh profile, a fresh
browser context per test, and a directory for screenshots.

Chromium is Debian's (``deploy/chromium.sh``); ``playwright install`` is never needed. A missing
browser or package fails the tests with what to run; they are never skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from web.pages import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, Hopcast, running_hopcast


@pytest.fixture
def hopcast(tmp_path: Path) -> Iterator[Hopcast]:
    with running_hopcast(tmp_path / "store") as running:
        yield running


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the browser tests need Playwright for Python: .venv/bin/pip install playwright "
            "(part of the dev extra)",
            pytrace=False,
        )
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}: run deploy/chromium.sh "
            "(apt-get install chromium) or set HOPCAST_CHROMIUM",
            pytrace=False,
        )
    with sync_playwright() as p:
        # launch() gives every run a fresh temporary profile (user-data-dir)
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(WAIT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where a test saves its screenshots: a pytest tmp dir, printed so a run shows where they
    are, and also copied to ``$HOPCAST_WEB_ARTIFACTS`` when set (e.g. by CI, to upload)."""
    path = tmp_path / "screenshots"
    path.mkdir()
    print(f"\nscreenshots of {request.node.name}: {path}")
    yield path
    target = os.environ.get("HOPCAST_WEB_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for png in path.glob("*.png"):
            shutil.copy(png, Path(target) / f"{request.node.name}-{png.name}")
