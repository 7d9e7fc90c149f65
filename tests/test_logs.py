"""Structured logs: one JSON object per line, with the `extra=` fields as data."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from service.logs import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_extra_fields(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json", instance="i-1")
    logging.getLogger("worker").info(
        "snapshot written", extra={"rows": 3, "color_message": "\x1b[36mx"}
    )
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["message"] == "snapshot written"
    assert line["rows"] == 3 and line["instance"] == "i-1"
    assert line["level"] == "INFO" and line["logger"] == "worker"
    assert "color_message" not in line


def test_text_lines_append_the_extra_fields(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("WARNING", "text")
    logging.getLogger("worker").info("hidden")
    logging.getLogger("worker").warning("snapshot failed", extra={"failures": 2})
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "snapshot failed failures=2" in err
