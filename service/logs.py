"""Structured logging: one JSON object per line (or plain text for local runs)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

_FIELDS = ["asctime", "levelname", "name", "message"]


def configure_logging(level: str = "INFO", fmt: str = "json", **static: str) -> None:
    """Send every logger (ours, uvicorn's, the libraries') through one handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                _FIELDS,
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields=dict(static),
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error", "apscheduler"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Socket.IO and Engine.IO log every packet at INFO; that is noise at any scale.
    for name in ("socketio", "engineio", "socketio.server", "engineio.server"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
