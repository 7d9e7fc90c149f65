"""After a locust run: compare the counter with what the locust players had acknowledged.

    .venv/bin/python loadtest/check.py --url http://127.0.0.1:8000 --acks /tmp/clickky-acks

Reads every acks-*.json that the locustfile wrote (one per locust process, so
a distributed run's workers' files can simply be copied into one directory),
then the counter: GET /api/state, the whole leaderboard, and GET /api/users/{name}
for every locust player. It fails (exit 1) on:

    lost       a player's count is below the clicks acknowledged to it
    phantom    a player's count exceeds acknowledged + in doubt (clicks sent whose
               answer never came: they may or may not have counted)
    invariant  global != sum of the counts over the whole leaderboard, or the
               leaderboard and /api/users disagree about a player
    missing    a locust player does not exist on the server

Rate-limited refusals are reported apart; they are not a failure. Prints one
JSON line. Run it when the load has stopped: the reads are not one snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

PAGE = 200


def load_acks(paths: list[Path]) -> tuple[dict[str, dict[str, int]], int]:
    """Merge the per-process files; (per-user figures, number of files)."""
    files = [
        p for path in paths for p in (sorted(path.glob("acks-*.json")) if path.is_dir() else [path])
    ]
    users: dict[str, dict[str, int]] = {}
    for file in files:
        body = json.loads(file.read_text(encoding="utf-8"))
        for name, figures in body["users"].items():
            merged = users.setdefault(name, dict.fromkeys(figures, 0))
            for key, value in figures.items():
                merged[key] = merged.get(key, 0) + int(value)
    return users, len(files)


async def read_counter(
    url: str, names: list[str], concurrency: int
) -> tuple[int, list[dict[str, Any]], int, dict[str, Any]]:
    """(global, leaderboard entries, leaderboard total, per-user answers) from the service."""
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        state = (await client.get("/api/state")).raise_for_status().json()
        entries: list[dict[str, Any]] = []
        total = None
        offset = 0
        while total is None or offset < total:
            page = await client.get("/api/leaderboard", params={"offset": offset, "limit": PAGE})
            body = page.raise_for_status().json()
            total = int(body["total"])
            if not body["entries"]:
                break
            entries.extend(body["entries"])
            offset += len(body["entries"])
        gate = asyncio.Semaphore(concurrency)
        answers: dict[str, Any] = {}

        async def one(name: str) -> None:
            async with gate:
                response = await client.get(f"/api/users/{quote(name, safe='')}")
            answers[name] = response.json() if response.status_code == 200 else None

        await asyncio.gather(*(one(name) for name in names))
        again = (await client.get("/api/state")).raise_for_status().json()
    if again["global"] != state["global"]:
        raise RuntimeError("the global count moved while checking: stop the load first")
    return int(state["global"]), entries, total or 0, answers


def check(users: dict[str, dict[str, int]], url: str, concurrency: int = 32) -> dict[str, Any]:
    names = sorted(users)
    global_count, entries, total, answers = asyncio.run(read_counter(url, names, concurrency))
    board = {e["username"]: int(e["count"]) for e in entries}
    problems: list[str] = []
    lost = phantom = 0
    for name in names:
        figures = users[name]
        answer = answers.get(name)
        if answer is None:
            problems.append(f"missing: {name} is not on the server")
            lost += figures["acked"]
            continue
        count = int(answer["count"])
        listed = board.get(answer["username"])
        if listed != count:
            problems.append(f"invariant: {name} is {count} but {listed} on the leaderboard")
        if count < figures["acked"]:
            lost += figures["acked"] - count
            problems.append(f"lost: {name} acked {figures['acked']}, counted {count}")
        elif count > figures["acked"] + figures.get("in_doubt", 0):
            extra = count - figures["acked"] - figures.get("in_doubt", 0)
            phantom += extra
            problems.append(f"phantom: {name} counted {extra} more than acked + in doubt")
    board_sum = sum(board.values())
    if len(entries) != total:
        problems.append(f"invariant: leaderboard says {total} users but listed {len(entries)}")
    if board_sum != global_count:
        problems.append(f"invariant: global {global_count} != sum of user counts {board_sum}")
    acked = sum(f["acked"] for f in users.values())
    return {
        "check": "clickky-locust",
        "ok": not problems,
        "players": len(names),
        "acked": acked,
        "counted": sum(int(a["count"]) for a in answers.values() if a),
        "lost": lost,
        "phantom": phantom,
        "in_doubt": sum(f.get("in_doubt", 0) for f in users.values()),
        "rate_limited": sum(f.get("rate_limited", 0) for f in users.values()),
        "refused_other": sum(f.get("refused_other", 0) for f in users.values()),
        "global": global_count,
        "leaderboard_sum": board_sum,
        "leaderboard_users": total,
        "problems": problems[:20],
        "problem_count": len(problems),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="any instance (or the load balancer)")
    parser.add_argument(
        "--acks",
        type=Path,
        nargs="+",
        default=[Path("locust-acks")],
        help="directories of acks-*.json (or the files themselves)",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    users, files = load_acks(args.acks)
    if not users:
        print(json.dumps({"check": "clickky-locust", "ok": False, "error": "no acks files"}))
        return 2
    try:
        result = check(users, args.url.rstrip("/"), args.concurrency)
    except (httpx.HTTPError, RuntimeError) as exc:
        print(json.dumps({"check": "clickky-locust", "ok": False, "error": str(exc)}))
        return 2
    result["files"] = files
    print(json.dumps(result, ensure_ascii=False))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
