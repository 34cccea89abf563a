"""``/docs`` works offline: the page and every file it loads come from the app itself."""

from __future__ import annotations

import re
import tempfile

from api.seed import TestClient
from hopcast.api.ingest import ingest_app
from hopcast.stream.sources.journal import Journal

_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def _references(html: str) -> list[str]:
    return _REFERENCE.findall(html)


def _check_offline(client: TestClient) -> list[str]:
    page = client.get("/docs")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "http://" not in html and "https://" not in html, "the page names an outside URL"
    refs = _references(html)
    assert any(r.endswith("swagger-ui-bundle.js") for r in refs), refs
    assert any(r.endswith("swagger-ui.css") for r in refs), refs
    for ref in refs:
        assert ref.startswith("/"), f"{ref} is not served by the app"
        got = client.get(ref)
        assert got.status_code == 200, f"{ref}: {got.status_code}"
        assert len(got.content) > 0, ref
    init = next(r for r in refs if r.endswith("/init.js"))
    spec = re.search(r'"url":\s*"([^"]+)"', client.get(init).text)
    assert spec is not None and client.get(spec.group(1)).status_code == 200
    return refs


def test_the_docs_page_and_every_file_it_loads_are_served_by_the_app(
    client: TestClient,
) -> None:
    refs = _check_offline(client)
    bundle = next(r for r in refs if r.endswith(".js"))
    assert b"SwaggerUIBundle" in client.get(bundle).content


def test_the_docs_page_turns_off_the_online_validator(client: TestClient) -> None:
    assert '"validatorUrl": null' in client.get("/docs/init.js").text


def test_the_docs_page_holds_no_inline_script(client: TestClient) -> None:
    page = client.get("/docs")
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son\w+\s*=", page.text), "an inline event handler"
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_the_ingest_app_serves_its_docs_offline_too() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(tmp)
        try:
            with TestClient(ingest_app({"logs": journal})) as client:
                _check_offline(client)
        finally:
            journal.close()
