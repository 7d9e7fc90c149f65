"""The HTTP API of the contract, plus health, readiness and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import metrics, validation
from service.audit import Outcome, Record
from service.breakdown import classify, country_of
from service.connection import REDIS_ERRORS
from service.errors import ApiError, invalid_token, unavailable
from service.events import player_room
from service.junk import number
from service.names import lookup
from service.tokens import Player

# Redis unreachable, or a read that timed out (asyncio.wait_for): a 503, never a 500.
UNREACHABLE: tuple[type[Exception], ...] = (*REDIS_ERRORS, OSError, TimeoutError)

if TYPE_CHECKING:
    from service.runtime import Runtime

log = logging.getLogger(__name__)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def read_json(request: Request, *, optional: bool = False) -> Any:
    """The request body as JSON, capped in size; None when optional and empty."""
    limit = _runtime(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, "payload_too_large", f"The body must be at most {limit} bytes.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "payload_too_large", f"The body must be at most {limit} bytes.")
    if not body.strip():
        if optional:
            return None
        raise ApiError(422, "invalid_json", "A JSON body is required.")
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(422, "invalid_json", "The body is not valid UTF-8 JSON.") from None


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _player(request: Request) -> Player:
    token = _bearer(request)
    if token is None:
        raise ApiError(401, "unauthorized", "Send your token as 'Authorization: Bearer <token>'.")
    player = _runtime(request).signer.read(token)
    if player is None:
        raise invalid_token()
    return player


def _address(request: Request) -> str:
    """The client's address (uvicorn applies trusted X-Forwarded-For first)."""
    return request.client.host if request.client else "unknown"


async def _require_admin(request: Request) -> str:
    """The name of the admin making this request; 403/401/429 otherwise (service/admin.py)."""
    return await _runtime(request).admins.authenticate(_bearer(request), _address(request))


# -- players -------------------------------------------------------------------
async def join(request: Request) -> Response:
    rt = _runtime(request)
    rt.admission.check("join")
    payload = validation.require_object(await read_json(request), "The join body")
    display, canon = validation.username(payload.get("username"))
    nonce = await rt.counter.join(display, canon, _address(request), rt.settings.join_rate_per_min)
    metrics.JOINS.inc()
    log.info("player joined", extra={"username": display})
    rt.feed.post("join", username=display)
    return JSONResponse(
        {"username": display, "token": rt.signer.issue(display, nonce)}, status_code=201
    )


async def click(request: Request) -> Response:
    rt = _runtime(request)
    player = _player(request)
    n = validation.click_n(await read_json(request, optional=True), rt.settings.rate_limit_cps)
    headers = request.headers
    click_id = validation.click_id(headers.get("idempotency-key"))
    profile = classify(headers.get("user-agent", ""), country_of(dict(headers)))
    return JSONResponse(await rt.click(player, n, profile, "http", click_id))


# -- reads ---------------------------------------------------------------------
async def state(request: Request) -> Response:
    rt = _runtime(request)
    current = await rt.counter.state()
    return JSONResponse(rt.ticker.describe(current))


async def leaderboard(request: Request) -> Response:
    offset, limit = validation.paging(request.query_params)
    total, entries = await _runtime(request).counter.leaderboard(offset, limit)
    return JSONResponse({"total": total, "entries": [e.as_json() for e in entries]})


async def user(request: Request) -> Response:
    _, canon = _named_user(request)
    found = await _runtime(request).counter.users([canon])
    if not found:
        raise ApiError(404, "not_found", "No user by that name.")
    entry = found[0]
    return JSONResponse({"username": entry.username, "count": entry.count, "rank": entry.rank})


async def search(request: Request) -> Response:
    prefix, limit = validation.search_prefix(request.query_params)
    entries = await _runtime(request).counter.search(prefix, limit)
    return JSONResponse({"entries": [e.as_json() for e in entries]})


async def stats(request: Request) -> Response:
    window = validation.window(request.query_params)
    return JSONResponse(await _runtime(request).counter.stats(window))


async def breakdown(request: Request) -> Response:
    dimension = validation.dimension(request.query_params)
    window = validation.window(request.query_params, allowed=("day", "week"))
    days = 1 if window == "day" else 7
    entries = await _runtime(request).counter.breakdown(dimension, days)
    return JSONResponse(
        {
            "dimension": dimension,
            "window": window,
            "entries": [{"value": e.username, "clicks": e.count} for e in entries],
        }
    )


async def countries(request: Request) -> Response:
    _, limit = validation.paging(request.query_params, default_limit=10)
    rows = await _runtime(request).counter.countries(limit)
    return JSONResponse({"entries": [{"country": c, "clicks": n} for c, n in rows]})


# -- admin ---------------------------------------------------------------------
async def admin_set(request: Request) -> Response:
    admin = await _require_admin(request)
    rt = _runtime(request)
    display, canon = _named_user(request)
    count = validation.admin_count(await read_json(request))
    record = Record(admin, "edit", _address(request), display, after=count)
    async with rt.audit.action(record) as outcome:
        result = await rt.counter.set_count(canon, count)
        outcome.username, outcome.before = result.username, result.before
    log.info("admin set count", extra={"username": result.username, "count": count})
    await _audited(rt, outcome)
    await _tell_player(rt, canon, result.nonce, {"count": count})
    return JSONResponse(
        {"username": result.username, "count": count, "global": result.global_count}
    )


async def admin_delete(request: Request) -> Response:
    admin = await _require_admin(request)
    rt = _runtime(request)
    display, canon = _named_user(request)
    async with rt.audit.action(Record(admin, "delete", _address(request), display)) as outcome:
        result = await rt.counter.delete(canon)
        outcome.username, outcome.before = result.username, result.before
    log.info("admin deleted user", extra={"username": result.username})
    await _audited(rt, outcome)
    await _tell_player(rt, canon, result.nonce, {"deleted": True})
    return JSONResponse({"username": result.username, "global": result.global_count})


async def admin_audit(request: Request) -> Response:
    await _require_admin(request)
    limit, before = validation.history_paging(request.query_params, stream=False)
    records = await _runtime(request).audit.page(limit, int(before) if before else None)
    return JSONResponse(
        {
            "entries": [r.as_json() for r in records],
            "next": str(records[-1].id) if len(records) == limit else None,
        }
    )


async def admin_activity(request: Request) -> Response:
    await _require_admin(request)
    limit, before = validation.history_paging(request.query_params, stream=True)
    entries = await _runtime(request).feed.page(limit, before)
    return JSONResponse(
        {"entries": entries, "next": entries[-1]["id"] if len(entries) == limit else None}
    )


async def admin_status(request: Request) -> Response:
    await _require_admin(request)
    rt = _runtime(request)
    current = await rt.counter.state()
    body = rt.ticker.describe(current)
    body["snapshot"] = _snapshot_view(await rt.counter.snapshot_status(), current.server_ms)
    body["restore"] = "done" if current.restored else "in_progress"
    body["workers"] = await rt.counter.workers_alive()
    return JSONResponse(body)


async def _audited(rt: Runtime, outcome: Outcome) -> None:
    """Put a completed admin action on the admins' live feed."""
    if outcome.record is not None:
        await rt.tell_admins(outcome.record)


def _named_user(request: Request) -> tuple[str, str]:
    """(name, canonical) of the name in the path; a name that cannot exist is a 404.

    Looked up leniently (service/names.py): a grandfathered name that today's rules
    would refuse at join is still found, edited and deleted.
    """
    raw = request.path_params["username"]
    canon = lookup(raw)
    if canon is None:
        raise ApiError(404, "not_found", "No user by that name.")
    return raw, canon


async def _tell_player(rt: Runtime, canon: str, nonce: str | None, data: dict[str, Any]) -> None:
    """Tell the player's own connections, wherever they are; the edit stands if this fails."""
    if nonce is None:
        return
    try:
        await rt.bus.publish("you", data, room=player_room(canon, nonce))
    except REDIS_ERRORS as exc:
        log.warning("could not tell the player about an admin change: %s", exc)


def _snapshot_view(status: dict[str, str], now_ms: int) -> dict[str, Any]:
    # The worker writes these fields; anything else found there is dropped as junk.
    last_ok = number(status.get("last_ok_ms"), int, "snapshot_status")
    return {
        "age_s": round((now_ms - last_ok) / 1000, 1) if last_ok else None,
        "duration_s": number(status.get("duration_s"), float, "snapshot_status"),
        "rows": number(status.get("rows"), int, "snapshot_status"),
        "failures": number(status.get("failures"), int, "snapshot_status") or 0,
        "last_error": status.get("last_error") or None,
    }


# -- operations ------------------------------------------------------------------
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def readyz(request: Request) -> Response:
    """Ready when Redis answers and the event listener hears itself; says why not."""
    rt = _runtime(request)
    problems: list[str] = []
    body: dict[str, Any] = {"instance": rt.instance_id}
    if rt.draining:
        problems.append("the instance is shutting down")
    body["lag_ms"] = round(rt.admission.probe.lag_s() * 1000, 1)
    if rt.admission.overloaded():
        problems.append(f"overloaded: the event loop lags {body['lag_ms']} ms")
    try:
        current = await asyncio.wait_for(rt.counter.state(), timeout=2)
        body["redis"] = "ok"
        body["restore"] = "done" if current.restored else "in_progress"
        # Not a reason to leave the load balancer: every instance sees the same shards
        # (and the same hub, whose keys, the snapshot status among them, are then unread).
        body["shards_unreachable"] = current.unreachable
        body["hub"] = "unreachable" if current.hub_unreachable else "ok"
        if not current.hub_unreachable:
            status = await rt.counter.snapshot_status()
            body["snapshot"] = _snapshot_view(status, current.server_ms)
    except UNREACHABLE as exc:
        body["redis"] = f"unreachable: {exc}"
        problems.append(f"Redis is unreachable ({exc})")
    body["pubsub"] = "ok" if rt.bus.healthy else "down"
    if not rt.bus.healthy:
        problems.append("the pub/sub listener is not receiving")
    for loop in rt.loops:
        if not loop.running:
            problems.append(f"the {loop.name} loop is not running")
    if problems:
        body.update(error="not_ready", detail="; ".join(problems))
        return JSONResponse(body, status_code=503)
    body["status"] = "ready"
    return JSONResponse(body)


async def metrics_endpoint(request: Request) -> Response:
    rt = _runtime(request)
    cluster: dict[str, float | None] = {}
    try:
        current = await asyncio.wait_for(rt.counter.state(), timeout=2)
        cluster = {
            "global_clicks": current.global_count,
            "users": current.users,
            "online": current.online,
            "restored": 1 if current.restored else 0,
            "shards_unreachable": current.unreachable,
            "hub_unreachable": 1 if current.hub_unreachable else 0,
        }
        if not current.hub_unreachable:
            view = _snapshot_view(await rt.counter.snapshot_status(), current.server_ms)
            cluster.update(
                snapshot_age_seconds=view["age_s"],
                snapshot_duration_seconds=view["duration_s"],
                snapshot_rows=view["rows"],
                snapshot_failures=view["failures"],
                workers_alive=await rt.counter.workers_alive(),
            )
    except UNREACHABLE:
        metrics.REDIS_ERRORS.labels("metrics").inc()
    body, content_type = metrics.render(
        cluster, multiprocess=rt.settings.prometheus_multiproc_dir is not None
    )
    return Response(body, media_type=content_type)


# -- wiring --------------------------------------------------------------------
def routes() -> list[Route]:
    return [
        Route("/api/join", join, methods=["POST"]),
        Route("/api/click", click, methods=["POST"]),
        Route("/api/state", state, methods=["GET"]),
        Route("/api/leaderboard", leaderboard, methods=["GET"]),
        Route("/api/users", search, methods=["GET"]),
        Route("/api/users/{username:path}", user, methods=["GET"]),
        Route("/api/stats", stats, methods=["GET"]),
        Route("/api/stats/breakdown", breakdown, methods=["GET"]),
        Route("/api/countries", countries, methods=["GET"]),
        Route("/api/admin/status", admin_status, methods=["GET"]),
        Route("/api/admin/audit", admin_audit, methods=["GET"]),
        Route("/api/admin/activity", admin_activity, methods=["GET"]),
        Route("/api/admin/users/{username:path}", admin_set, methods=["PUT"]),
        Route("/api/admin/users/{username:path}", admin_delete, methods=["DELETE"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


def _error_response(error: ApiError) -> JSONResponse:
    metrics.HTTP_ERRORS.labels(error.code).inc()
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    detail = {404: "No such route.", 405: "This route does not take that method."}.get(
        exc.status_code, str(exc.detail)
    )
    response = _error_response(ApiError(exc.status_code, code, detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _on_redis_error(request: Request, exc: Exception) -> Response:
    metrics.REDIS_ERRORS.labels("http").inc()
    log.warning("Redis error on %s: %s", request.url.path, exc)
    return _error_response(unavailable())


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(ApiError(500, "internal", "Something went wrong on our side."))


def exception_handlers() -> dict[Any, Any]:
    return {
        ApiError: _on_api_error,
        HTTPException: _on_http_error,
        **{error: _on_redis_error for error in REDIS_ERRORS},
        Exception: _on_unexpected,
    }
