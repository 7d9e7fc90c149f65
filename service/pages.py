"""The two web pages (play and dashboard) and their built assets."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
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
    path = STATIC / name
    if not path.is_file():
        return HTMLResponse(_NOT_BUILT, status_code=503, headers=SECURITY_HEADERS)
    return FileResponse(path, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


async def play(request: Request) -> Response:
    return _page("index.html")


async def dashboard(request: Request) -> Response:
    return _page("dashboard.html")


def routes() -> list[BaseRoute]:
    return [
        Route("/", play, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
    ]
