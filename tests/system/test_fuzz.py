"""Property-based fuzzing (Hypothesis) of raw Socket.IO frames and HTTP bodies against a real
instance process: every input is answered (an ack, an error, or a close with a reason)
within 2 s, nothing reaches the log as a traceback, counts stay put, memory stays bounded.

The budget is small by default so CI stays quick; CLICKKY_FUZZ_EXAMPLES=2000 runs a
long campaign (see README, Development).
"""

from __future__ import annotations

import asyncio
import json
import os
import string
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.frames import judge
from tests.rawsocket import RawSocket
from tests.support import Instance, Stack

pytestmark = pytest.mark.system

EXAMPLES = int(os.environ.get("CLICKKY_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ANSWER_S = 2.0
PROBE = 987654321  # the ack id of the probe sent after each frame; fuzzed ids stay below
# What the instance may grow by over a campaign (one socket used to grow 30-45 MB). Each
# socket, closed or not, is kept by python-engineio's ping task until it wakes (up to
# the 25 s ping interval): about 6 KB each (measured with tracemalloc, before this
# module's changes too), gone after that.
RSS_SLACK_KB = 20_000
RSS_PER_SOCKET_KB = 8

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
events = st.one_of(
    st.sampled_from(["click", "connect", "disconnect", "state", "probe", "message"]),
    st.text(max_size=10),
)
payloads = st.one_of(
    st.tuples(events, st.lists(json_values, max_size=3)).map(lambda e: json.dumps([e[0], *e[1]])),
    json_values.map(json.dumps),
    st.integers(min_value=1, max_value=5000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(min_value=1, max_value=5000).map(lambda depth: '["click",' + '{"n":' * depth),
    st.text(alphabet=string.printable, max_size=40),
    st.just(""),
)
socketio_frames = st.builds(
    lambda kind, attachments, namespace, ack, payload: (
        "4"
        + kind
        + (f"{attachments}-" if attachments is not None else "")
        + (f"{namespace}," if namespace is not None else "")
        + (str(ack) if ack is not None else "")
        + payload
    ),
    st.sampled_from("0123456789"),
    st.none() | st.integers(min_value=0, max_value=10**12),
    st.none() | st.sampled_from(["/", "/admin", "/x?y=1", "/" * 3]),
    st.none() | st.integers(min_value=0, max_value=10**6),
    payloads,
)
# Engine.IO-level text, but not "1..." (a client's own close needs no reason).
engineio_frames = st.text(max_size=20).filter(lambda text: not text.startswith("1"))
frames = st.one_of(socketio_frames, st.binary(max_size=64), engineio_frames)


def rss_kb(instance: Instance) -> int:
    assert instance.proc.popen is not None
    status = Path(f"/proc/{instance.proc.popen.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def counts(instance: Instance) -> tuple[int, Any]:
    body = httpx.get(instance.url + "/api/state", timeout=5).json()
    return body["global"], [(row["username"], row["count"]) for row in body["top"]]


async def answered(url: str, frame: str | bytes) -> None:
    """Send one frame on a fresh spectator socket; it must be answered or closed in time."""
    sock = await RawSocket(url).open()
    try:
        started = time.monotonic()
        await sock.send(frame)
        await sock.send(f'42{PROBE}["probe"]')
        try:
            await sock.wait_for(lambda f: f.startswith(f"43{PROBE}["), timeout=ANSWER_S)
        except ConnectionError:  # closed: it must have said why
            reason = await sock.refusal(timeout=ANSWER_S)
            assert reason["data"]["error"] == "invalid_frame", reason
            return
        assert time.monotonic() - started < ANSWER_S
        # Still open: the frame was a well-formed packet. An event that asked for an ack
        # got one (events are handled in order, so before the probe's).
        verdict = judge(frame[1:], connected=True) if isinstance(frame, str) else None
        if verdict is not None:
            ack_id = verdict.packet.id if verdict.packet is not None else verdict.ack_id
            if ack_id is not None:
                await sock.ack(ack_id, timeout=0.1)
    finally:
        await sock.close()


def test_fuzzed_socket_frames_are_answered_or_closed(stack: Stack) -> None:
    instance = stack.instance()
    # A player with a count, so that "counts unchanged" has something to keep.
    token = httpx.post(instance.url + "/api/join", json={"username": "Fuzz"}, timeout=5).json()
    assert (
        httpx.post(
            instance.url + "/api/click",
            json={"n": 3},
            headers={"Authorization": f"Bearer {token['token']}"},
            timeout=5,
        ).status_code
        == 200
    )
    before = counts(instance)
    asyncio.run(answered(instance.url, '42["probe"]'))  # warm up before measuring memory
    rss_before = rss_kb(instance)

    tried: list[str | bytes] = []

    @FUZZ
    @given(frame=frames)
    def check(frame: str | bytes) -> None:
        tried.append(frame)
        asyncio.run(answered(instance.url, frame))

    check()
    assert len(tried) >= min(EXAMPLES, 10)  # the budget ran (Hypothesis may stop early)
    assert counts(instance) == before
    grown = rss_kb(instance) - rss_before
    bound = RSS_SLACK_KB + RSS_PER_SOCKET_KB * len(tried)
    assert grown < bound, f"the instance grew by {grown} KB over {len(tried)} sockets"
    log = instance.proc.log()
    assert "Traceback" not in log and "RecursionError" not in log, log[-3000:]


async def attachment_flood(url: str, token: str) -> int:
    """The issue's input: an attachment header, then 3,000 binary frames of 16 KB."""
    sock = await RawSocket(url).open(token)
    sent = 0
    try:
        await sock.send('4599999999-["click"]')
        for _ in range(3000):
            if not await sock.send(b"\x00" * 16384):
                break
            sent += 1
        reason = await sock.refusal(timeout=ANSWER_S)
        assert reason["data"]["error"] == "invalid_frame"
    finally:
        await sock.close()
    return sent


def test_an_attachment_flood_leaves_the_instance_as_it_was(stack: Stack) -> None:
    instance = stack.instance()
    token = httpx.post(instance.url + "/api/join", json={"username": "Flood"}, timeout=5)
    asyncio.run(answered(instance.url, '42["probe"]'))
    rss_before = rss_kb(instance)
    for _ in range(3):
        asyncio.run(attachment_flood(instance.url, token.json()["token"]))
    grown = rss_kb(instance) - rss_before
    # It used to grow by 30-45 MB for one such socket and keep it; now the first frame
    # closes the socket and nothing is held.
    assert grown < 5_000, f"the instance grew by {grown} KB"
    assert counts(instance)[0] == 0
    assert "Traceback" not in instance.proc.log()


http_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.integers(min_value=1, max_value=5000).map(lambda d: b"[" * d + b"]" * d),
    st.fixed_dictionaries({"username": json_values}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"n": json_values}).map(lambda v: json.dumps(v).encode()),
)


def test_fuzzed_http_bodies_get_a_clear_answer(stack: Stack) -> None:
    instance = stack.instance()
    before = counts(instance)
    client = httpx.Client(base_url=instance.url, timeout=ANSWER_S)

    @FUZZ
    @given(
        path=st.sampled_from(["/api/join", "/api/click"]),
        body=http_bodies,
        content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form"]),
    )
    def check(path: str, body: bytes, content_type: str) -> None:
        # The click's token is not valid: nothing fuzzed here can count.
        headers = {"Content-Type": content_type, "Authorization": "Bearer not-a-token"}
        response = client.post(path, content=body, headers=headers)
        assert response.status_code in (201, 401, 409, 413, 415, 422, 429), response.text
        if response.status_code >= 400:
            error = response.json()
            assert set(error) >= {"error", "detail"}, error

    try:
        check()
    finally:
        client.close()
    assert counts(instance)[0] == before[0]
    log = instance.proc.log()
    assert "Traceback" not in log and "RecursionError" not in log, log[-3000:]
