"""``/docs``: Swagger UI served from an installed package, so the page works without internet.

FastAPI's own ``/docs`` loads Swagger UI from a CDN, which leaves the page blank on a machine
without internet access (an air-gapped deployment, a laptop on a train). The ``fastapi-offline``
package (in the ``server`` extra) ships the Swagger UI 5 bundle (``swagger-ui-bundle.js``,
``swagger-ui.css``, a favicon); :func:`install` serves those files at :data:`ASSETS` and builds
the page around them. Swagger UI's online validator badge is turned off (it would call out).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

#: Where the Swagger UI files are served.
ASSETS = "/docs/assets"
#: Swagger UI settings: FastAPI's, without the online validator (an outside request).
PARAMETERS = {
    "dom_id": "#swagger-ui",
    "layout": "BaseLayout",
    "deepLinking": True,
    "showExtensions": True,
    "showCommonExtensions": True,
    "validatorUrl": None,
}


def assets_dir() -> Path:
    """The installed Swagger UI files (``fastapi_offline/static``).

    Raises:
        ImportError: naming the extra to install, if ``fastapi-offline`` is missing.
    """
    try:
        root = files("fastapi_offline") / "static"
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "the offline /docs page needs fastapi-offline: pip install 'hopcast[server]'"
        ) from exc
    return Path(str(root))


def install(app: FastAPI, docs_url: str = "/docs") -> None:
    """Serve the Swagger UI page at ``docs_url`` and its files at :data:`ASSETS`.

    Build ``app`` with ``docs_url=None`` so FastAPI's CDN page does not take the route first.
    """
    openapi_url = app.openapi_url or "/openapi.json"
    title = f"{app.title} — API"
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            swagger_ui_parameters=PARAMETERS,
        )
