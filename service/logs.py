"""Structured logging: one JSON object per line (or plain text for local runs)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

_FIELDS = ["asctime", "levelname", "name", "message"]
# Attributes every LogRecord has; anything else was passed as `extra=` and is data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class TextFormatter(logging.Formatter):
    """Plain lines for humans, with the structured `extra=` fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def _drop_color_message(record: logging.LogRecord) -> bool:
    """uvicorn attaches a terminal-coloured copy of some messages; it is noise in a log."""
    record.__dict__.pop("color_message", None)
    return True


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
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(_drop_color_message)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    access = logging.getLogger("uvicorn.access")
    # uvicorn --no-access-log leaves this logger without handlers: keep it off then.
    access_on = bool(access.handlers) or access.propagate
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    access.propagate = access_on
    access.disabled = not access_on
    # These log every packet or every job run at INFO; that is noise at any scale.
    for name in ("socketio", "engineio", "socketio.server", "engineio.server", "apscheduler"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
