"""The offline Swagger UI page in Chromium under the pages' Content-Security-Policy: it renders
from files served by the app (no inline script) and offers *Authorize* for the bearer key."""

from __future__ import annotations

from typing import Any

import pytest

from web.pages import Hopcast

#: A real browser and server: kept out of `make check` like the other page tests.
pytestmark = pytest.mark.slow


def test_the_docs_page_renders_under_its_csp_and_offers_authorize(
    context: Any, hopcast: Hopcast
) -> None:
    page = context.new_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text))
    page.goto(f"{hopcast.base}/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "hopcast" in page.text_content(".swagger-ui .info .title")
    assert page.locator("button.authorize").count() == 1
    refused = [m for m in messages if "Content Security Policy" in m]
    assert refused == [], refused
