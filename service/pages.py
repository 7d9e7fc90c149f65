"""The two web pages (play and dashboard) and their built assets."""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# Everything comes from this host: no CDN, no third-party request, ever.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>Clickky</title>
<p>The web assets are not built. Run <code>make run</code> (or
<code>npm --prefix service/web ci && npm --prefix service/web run build</code>).</p>"""


def _page(name: str) -> Response:
    # A page is a few KB: read here, in one step, it is served in one turn of the event
    # loop; a FileResponse takes several thread-pool hops, each a turn, and under overload
    # each turn is slow (the page must still load within a second).
    try:
        body = (STATIC / name).read_bytes()
    except OSError:
        return HTMLResponse(_NOT_BUILT, status_code=503, headers=SECURITY_HEADERS)
    return HTMLResponse(body, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


async def play(request: Request) -> Response:
    return _page("index.html")


async def dashboard(request: Request) -> Response:
    return _page("dashboard.html")


class Assets(StaticFiles):
    """Built files; those under assets/ have content hashes in their names, so they never
    change and browsers may keep them for a year."""

    async def check_config(self) -> None:
        try:
            await super().check_config()
        except RuntimeError:  # the directory does not exist: the pages are not built yet
            raise HTTPException(404) from None

    def file_response(self, full_path: PathLike[str] | str, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(full_path, *args, **kwargs)
        if f"{os.sep}assets{os.sep}" in str(full_path):
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def routes() -> list[BaseRoute]:
    return [
        Route("/", play, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
        Mount("/static", Assets(directory=STATIC, check_dir=False), name="static"),
    ]
