"""GET /openapi.json: a valid OpenAPI 3.1 document that describes every route, truthfully."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from service import openapi


async def served(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_document_validates_and_covers_every_route(client: httpx.AsyncClient) -> None:
    document = await served(client)
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    # The server builds it from its own routes, so every route is in it; and nothing else is.
    listed = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert listed == set(openapi.OPERATIONS)
    assert ("POST", "/api/click") in listed and ("GET", "/api/users/{username}") in listed


def test_a_route_without_a_description_is_an_error() -> None:
    async def nothing() -> None: ...

    with pytest.raises(KeyError, match="GET /api/new has no OpenAPI description"):
        openapi.document([Route("/api/new", nothing, methods=["GET"])])


def check(document: dict[str, Any], method: str, path: str, status: int, body: Any) -> None:
    """The body matches the schema the document gives for this answer."""
    responses = document["paths"][path][method.lower()]["responses"]
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": document["components"]})


async def test_real_answers_match_their_schemas(client: httpx.AsyncClient) -> None:
    document = await served(client)
    joined = await client.post("/api/join", json={"username": "Schema"})
    check(document, "POST", "/api/join", 201, joined.json())
    auth = {"Authorization": f"Bearer {joined.json()['token']}"}
    clicked = await client.post("/api/click", json={"n": 3}, headers=auth)
    check(document, "POST", "/api/click", 200, clicked.json())
    reads = {
        "/api/state": "/api/state",
        "/api/leaderboard?limit=5": "/api/leaderboard",
        "/api/users?q=sch": "/api/users",
        "/api/users/schema": "/api/users/{username}",
        "/api/stats?window=day": "/api/stats",
        "/api/stats/breakdown?dimension=browser&window=week": "/api/stats/breakdown",
        "/api/countries": "/api/countries",
    }
    for url, path in reads.items():
        response = await client.get(url)
        check(document, "GET", path, 200, response.json())
    errors = {
        ("POST", "/api/join", 409): await client.post("/api/join", json={"username": "schema"}),
        ("POST", "/api/click", 422): await client.post("/api/click", json={"n": 0}, headers=auth),
        ("GET", "/api/users/{username}", 404): await client.get("/api/users/nobody"),
        ("GET", "/api/stats", 422): await client.get("/api/stats?window=year"),
    }
    for (method, path, status), response in errors.items():
        assert response.status_code == status, response.text
        check(document, method, path, status, response.json())
        described = document["paths"][path][method.lower()]["responses"][str(status)]
        assert response.json()["error"] in described["description"]
