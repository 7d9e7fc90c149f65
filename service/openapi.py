"""The OpenAPI 3.1 document of the HTTP API, served at GET /openapi.json.

The paths come from the app's own routes; each (method, path) takes its description from
OPERATIONS below, and a route without one is an error (tests/test_openapi.py checks that
every route is described and that the document validates). docs/api.md is the prose
reference; this is the machine-readable one for client generators and API tools.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.breakdown import DIMENSIONS
from service.validation import MAX_CLICK_BATCH, MAX_PAGE, MAX_SEARCH, MAX_USERNAME, WINDOWS

JSON = "application/json"
INT = {"type": "integer"}
STR = {"type": "string"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: Iterable[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": properties}


def _ok(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {JSON: {"schema": schema}}}}


def _errors(by_status: dict[str, str]) -> dict[str, Any]:
    """Error responses from {"404": "not_found", ...}; every one has the Error body."""
    return {
        status: {
            "description": f"error codes: {codes}",
            "content": {JSON: {"schema": _ref("Error")}},
        }
        for status, codes in by_status.items()
    }


def _query(
    name: str, schema: dict[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


USERNAME_PARAM = {
    "name": "username",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "the name, matched ignoring case and Unicode width",
}
PLAYER: list[dict[str, list[str]]] = [{"playerToken": []}]
ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
# Any route may also answer these: a body over MAX_BODY_BYTES, Redis down, shutting down.
COMMON = _errors({"503": "unavailable, shutting_down", "500": "internal (never expected)"})
ADMIN_ERRORS = _errors(
    {
        "401": "unauthorized (no bearer token)",
        "403": "admin_disabled (ADMIN_TOKEN unset), forbidden",
        "429": "rate_limited (too many failed admin logins from this address; Retry-After)",
    }
)

NULLABLE_INT = {"type": ["integer", "null"]}
HISTORY_LIMIT = _query("limit", {**INT, "minimum": 1, "maximum": MAX_PAGE, "default": 50}, "size")


def _history(summary: str, before: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A newest-first page of an admin history with its `next` cursor."""
    return {
        "summary": summary,
        "security": ADMIN,
        "parameters": [HISTORY_LIMIT, _query("before", STR, before)],
        "responses": {
            **_ok(
                "the page, newest first",
                _object(
                    ["entries", "next"],
                    entries={"type": "array", "items": entry},
                    next={"type": ["string", "null"]},
                ),
            ),
            **ADMIN_ERRORS,
            **_errors({"422": "invalid_paging"}),
        },
    }


SCHEMAS: dict[str, Any] = {
    "Error": {
        **_object(
            ["error", "detail"],
            error={**STR, "description": "machine code"},
            detail={**STR, "description": "a sentence for a person"},
            retry_after_ms={**INT, "description": "with 429 and 503: wait this long"},
        ),
    },
    "State": _object(
        ["global", "clicks", "online", "cps", "users", "top", "tick"],
        **{
            "global": {**INT, "description": "sum of every user's count"},
            "clicks": {**INT, "description": "all clicks ever counted (admin edits leave it)"},
            "online": {**INT, "description": "open Socket.IO connections, all instances"},
            "cps": {"type": "number", "description": "clicks per second, last few seconds"},
            "users": {**INT, "description": "registered players"},
            "top": {"type": "array", "maxItems": 10, "items": _ref("Count")},
            "tick": {**INT, "description": "the tick id (Redis clock / tick length)"},
        },
    ),
    "Count": _object(["username", "count"], username=STR, count=INT),
    "Ranked": _object(["rank", "username", "count"], rank=INT, username=STR, count=INT),
    "Ack": _object(
        ["user", "global"],
        user={**INT, "description": "the player's count"},
        **{"global": INT},
        rank={**INT, "description": "absent on several shards (Redis Cluster)"},
    ),
}

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/join"): {
        "summary": "Reserve a username and get a player token",
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": _object(
                        ["username"],
                        username={
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_USERNAME,
                            "description": "letters (any script), digits, space, _ - .",
                        },
                    )
                }
            },
        },
        "responses": {
            **_ok("joined", _object(["username", "token"], username=STR, token=STR), "201"),
            **_errors(
                {
                    "409": "name_taken",
                    "413": "payload_too_large",
                    "422": "invalid_username, invalid_json, invalid_body",
                    "429": "rate_limited (JOIN_RATE_PER_MIN per address; Retry-After)",
                    "503": "restoring, unavailable",
                }
            ),
        },
    },
    ("POST", "/api/click"): {
        "summary": "Count a batch of clicks for the token's player",
        "security": PLAYER,
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "the batch's id (IETF httpapi Idempotency-Key draft): the same"
                " player and id within 15 minutes is counted once and answered with the first"
                " answer; 1-64 of A-Z a-z 0-9 _ -, bare or quoted",
                "schema": {**STR, "pattern": '^"?[A-Za-z0-9_-]{1,64}"?$'},
            }
        ],
        "requestBody": {
            "required": False,
            "content": {
                JSON: {
                    "schema": _object(
                        [], n={**INT, "minimum": 1, "maximum": MAX_CLICK_BATCH, "default": 1}
                    )
                }
            },
        },
        "responses": {
            **_ok("counted", _ref("Ack")),
            **COMMON,
            **_errors(
                {
                    "401": "unauthorized, invalid_token",
                    "413": "payload_too_large",
                    "422": "invalid_n, invalid_json, invalid_body, invalid_id,"
                    " idempotency_mismatch, count_limit",
                    "429": "rate_limited (RATE_LIMIT_CPS; Retry-After)",
                    "503": "overloaded (not counted), unavailable, shutting_down",
                }
            ),
        },
    },
    ("GET", "/api/state"): {
        "summary": "The global count, online, clicks/s, users and the top 10",
        "responses": {**_ok("the state", _ref("State")), **COMMON},
    },
    ("GET", "/api/leaderboard"): {
        "summary": "A page of the leaderboard (competition ranks: equal counts share one)",
        "parameters": [
            _query("offset", {**INT, "minimum": 0, "default": 0}, "entries to skip"),
            _query("limit", {**INT, "minimum": 1, "maximum": MAX_PAGE, "default": 50}, "size"),
        ],
        "responses": {
            **_ok(
                "the page",
                _object(
                    ["total", "entries"],
                    total=INT,
                    entries={"type": "array", "items": _ref("Ranked")},
                ),
            ),
            **_errors({"422": "invalid_paging"}),
            **COMMON,
        },
    },
    ("GET", "/api/users"): {
        "summary": "Players whose name starts with a prefix (the dashboard's search)",
        "parameters": [
            _query("q", STR, "the prefix, compared ignoring case"),
            _query("limit", {**INT, "minimum": 1, "maximum": MAX_SEARCH, "default": 20}, "size"),
        ],
        "responses": {
            **_ok(
                "matches",
                _object(["entries"], entries={"type": "array", "items": _ref("Ranked")}),
            ),
            **_errors({"422": "invalid_query, invalid_paging"}),
            **COMMON,
        },
    },
    ("GET", "/api/users/{username}"): {
        "summary": "One player's count and rank",
        "parameters": [USERNAME_PARAM],
        "responses": {
            **_ok("the player", _ref("Ranked")),
            **_errors({"404": "not_found"}),
            **COMMON,
        },
    },
    ("GET", "/api/stats"): {
        "summary": "Clicks per bucket over a window, oldest first, empty buckets as 0",
        "parameters": [
            _query("window", {"enum": list(WINDOWS), "default": "hour"}, "hour, day or week")
        ],
        "responses": {
            **_ok(
                "the series",
                _object(
                    ["window", "bucket_seconds", "points"],
                    window=STR,
                    bucket_seconds=INT,
                    points={
                        "type": "array",
                        "items": {"type": "array", "items": INT, "minItems": 2, "maxItems": 2},
                        "description": "[unix_ts, clicks]",
                    },
                ),
            ),
            **_errors({"422": "invalid_window"}),
            **COMMON,
        },
    },
    ("GET", "/api/stats/breakdown"): {
        "summary": "Clicks per device, browser, platform or country",
        "parameters": [
            _query("dimension", {"enum": list(DIMENSIONS)}, "what to break down by"),
            _query("window", {"enum": ["day", "week"], "default": "day"}, "this UTC day or 7 days"),
        ],
        "responses": {
            **_ok(
                "the breakdown",
                _object(
                    ["dimension", "window", "entries"],
                    dimension=STR,
                    window=STR,
                    entries={
                        "type": "array",
                        "items": _object(["value", "clicks"], value=STR, clicks=INT),
                    },
                ),
            ),
            **_errors({"422": "invalid_dimension, invalid_window"}),
            **COMMON,
        },
    },
    ("GET", "/api/countries"): {
        "summary": "The country leaderboard (all time)",
        "parameters": [
            _query("limit", {**INT, "minimum": 1, "maximum": MAX_PAGE, "default": 10}, "size")
        ],
        "responses": {
            **_ok(
                "countries",
                _object(
                    ["entries"],
                    entries={
                        "type": "array",
                        "items": _object(["country", "clicks"], country=STR, clicks=INT),
                    },
                ),
            ),
            **_errors({"422": "invalid_paging"}),
            **COMMON,
        },
    },
    ("GET", "/api/admin/status"): {
        "summary": "The state plus snapshot, restore and worker status",
        "security": ADMIN,
        "responses": {
            **_ok(
                "status",
                {
                    "allOf": [
                        _ref("State"),
                        _object(
                            ["snapshot", "restore", "workers"],
                            snapshot={"type": "object"},
                            restore={"enum": ["done", "in_progress"]},
                            workers=INT,
                        ),
                    ]
                },
            ),
            **ADMIN_ERRORS,
            **COMMON,
        },
    },
    ("PUT", "/api/admin/users/{username}"): {
        "summary": "Set a player's count (the global count follows)",
        "security": ADMIN,
        "parameters": [USERNAME_PARAM],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": _object(["count"], count={**INT, "minimum": 0})}},
        },
        "responses": {
            **_ok(
                "set",
                _object(
                    ["username", "count", "global"], username=STR, count=INT, **{"global": INT}
                ),
            ),
            **ADMIN_ERRORS,
            **_errors(
                {
                    "404": "not_found",
                    "422": "invalid_count, invalid_json",
                    "503": "restoring, unavailable, audit_unavailable",
                }
            ),
        },
    },
    ("DELETE", "/api/admin/users/{username}"): {
        "summary": "Delete a player: the name is free again, the token dead",
        "security": ADMIN,
        "parameters": [USERNAME_PARAM],
        "responses": {
            **_ok("deleted", _object(["username", "global"], username=STR, **{"global": INT})),
            **ADMIN_ERRORS,
            **_errors({"404": "not_found", "503": "restoring, unavailable, audit_unavailable"}),
        },
    },
    ("GET", "/api/admin/audit"): _history(
        "The admin audit log: edits, deletes and blocked login bursts",
        "an audit record id: the previous page's next",
        _object(
            ["id", "admin", "action", "address", "username", "before", "after", "at_ms", "at"],
            id=INT,
            admin=STR,
            action={"enum": ["edit", "delete", "login_blocked"]},
            address=STR,
            username={"type": ["string", "null"]},
            before=NULLABLE_INT,
            after=NULLABLE_INT,
            at_ms=INT,
            at={**STR, "format": "date-time"},
        ),
    ),
    ("GET", "/api/admin/activity"): _history(
        "The admins' activity feed: joins, milestones, admin actions, restores, leases",
        "a feed entry id like 1700000000000-0: the previous page's next",
        _object(["id", "kind", "at_ms"], id=STR, kind=STR, at_ms=INT),
    ),
    ("GET", "/healthz"): {
        "summary": "200 while the process runs",
        "responses": _ok("alive", _object(["status"], status={"const": "alive"})),
    },
    ("GET", "/readyz"): {
        "summary": "200 when Redis answers and pub/sub hears itself; else 503 with the reason",
        "responses": {
            **_ok("ready", {"type": "object"}),
            **_errors(
                {
                    "503": "not_ready (the body also carries redis, pubsub, restore,"
                    " snapshot, shards_unreachable, hub)"
                }
            ),
        },
    },
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics (text exposition format)",
        "responses": {
            "200": {"description": "metrics", "content": {"text/plain": {"schema": STR}}}
        },
    },
    ("GET", "/"): {
        "summary": "The play page",
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": STR}}}},
    },
    ("GET", "/dashboard"): {
        "summary": "The admin dashboard page",
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": STR}}}},
    },
    ("GET", "/openapi.json"): {
        "summary": "This document",
        "responses": _ok("OpenAPI 3.1", {"type": "object"}),
    },
}

# `{username:path}` in Starlette is `{username}` in OpenAPI.
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def operations_of(routes: Iterable[BaseRoute]) -> list[tuple[str, str]]:
    """(method, OpenAPI path) of every HTTP route; mounts (static files) are not operations."""
    found = []
    for route in routes:
        if isinstance(route, Route):
            path = _CONVERTOR.sub(r"{\1}", route.path)
            found += [(m, path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return found


def document(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of these routes; KeyError names a route that is not described."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path in operations_of(routes):
        if (method, path) not in OPERATIONS:
            raise KeyError(f"{method} {path} has no OpenAPI description in service/openapi.py")
        paths.setdefault(path, {})[method.lower()] = OPERATIONS[method, path]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Clickky",
            "version": "1",
            "description": "A real-time global click counter. Socket.IO events: docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "playerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the token POST /api/join returned",
                },
                "adminToken": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"},
            },
        },
    }


async def openapi(request: Request) -> Response:
    return JSONResponse(document(request.app.routes))


def routes() -> list[BaseRoute]:
    return [Route("/openapi.json", openapi, methods=["GET"])]
