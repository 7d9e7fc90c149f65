"""The web pages and their assets, including before they are built."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

from service import api, pages


async def test_assets_answer_404_json_when_the_pages_are_not_built(tmp_path: Path) -> None:
    app = Starlette(
        routes=[Mount("/static", pages.Assets(directory=tmp_path / "missing", check_dir=False))],
        exception_handlers=api.exception_handlers(),
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/static/app.js")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_hashed_assets_are_immutable_and_pages_are_not(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    asset = next((pages.STATIC / "assets").glob("play-*.js"))
    response = await client.get(f"/static/assets/{asset.name}")
    assert response.status_code == 200
    assert "immutable" in response.headers["cache-control"]
