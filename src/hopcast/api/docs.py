"""``/docs``: Swagger UI served from an installed package, so the page works without internet.

FastAPI's own ``/docs`` loads Swagger UI from a CDN, which leaves the page blank on a machine
without internet access (an air-gapped deployment, a laptop on a train). The ``fastapi-offline``
package (in the ``server`` extra) ships the Swagger UI 5 bundle (``swagger-ui-bundle.js``,
``swagger-ui.css``, a favicon); :func:`install` serves those files at :data:`ASSETS` and builds
the page around them. Swagger UI's online validator badge is turned off (it would call out).
"""

from __future__ import annotations

import html
import json
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from hopcast.api.policy import public

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
    #: Swagger UI keeps the key entered in *Authorize* across reloads of the page.
    "persistAuthorization": True,
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
    """Serve the Swagger UI page at ``docs_url``, its start-up script at ``docs_url + "/init.js"``
    and its files at :data:`ASSETS`.

    The page holds no inline script (the pages' Content-Security-Policy allows scripts from the
    origin only): the settings FastAPI's page writes inline are served as a script file. Build
    ``app`` with ``docs_url=None`` so FastAPI's CDN page does not take the route first.
    """
    openapi_url = app.openapi_url or "/openapi.json"
    title = html.escape(f"{app.title} — API")
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")
    init_url = f"{docs_url}/init.js"
    settings = {"url": openapi_url, **PARAMETERS}
    init = (
        f"window.ui = SwaggerUIBundle(Object.assign({json.dumps(settings)}, "
        "{presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]}));\n"
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
<link rel="icon" href="{ASSETS}/favicon.png"></head>
<body><div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="{init_url}"></script>
</body></html>
"""
    no_data = public("the API's documentation page: holds no data")

    @app.get(docs_url, include_in_schema=False, dependencies=[no_data])
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get(init_url, include_in_schema=False, dependencies=[no_data])
    async def swagger_init() -> Response:
        return Response(init, media_type="text/javascript")
