"""Summarize py-spy's raw (collapsed) stacks: where the samples are, by function and by area.

    .venv/bin/python loadtest/hotspots.py /tmp/prof/*.txt [--top 25]

`self` is the share of samples whose innermost frame is that function;
`incl` the share in which it appears anywhere on the stack. `areas` sorts every
sample into one bucket by the first frame that matches a known package.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

# Checked innermost frame first: a sample belongs to the innermost area it touches.
AREAS = [
    ("redis client", ("redis/", "hiredis")),
    ("json", ("json/",)),
    ("socketio", ("socketio/",)),
    ("engineio", ("engineio/",)),
    ("websocket protocol", ("websockets/", "wsproto/", "uvicorn/protocols/websockets")),
    ("uvicorn http", ("uvicorn/",)),
    ("starlette", ("starlette/",)),
    ("asyncio", ("asyncio/", "uvloop")),
    ("service", ("service/",)),
    ("logging", ("logging/",)),
    ("prometheus", ("prometheus_client/",)),
]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def parse(lines: list[str]) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack_text, _, count = line.rpartition(" ")
        frames = []
        for raw in stack_text.split(";"):
            match = _FRAME.match(raw)
            frames.append((match["func"], match["file"]) if match else (raw, ""))
        stacks.append((frames, int(count)))
    return stacks


def area_of(frames: list[tuple[str, str]]) -> str:
    for func, file in reversed(frames):
        for name, needles in AREAS:
            if any(n in file or n in func for n in needles):
                return name
    return "other"


def summarize(paths: list[Path], top: int) -> dict[str, object]:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for path in paths:
        for frames, count in parse(path.read_text().splitlines()):
            total += count
            names = [f"{func} ({Path(file).name or '?'})" for func, file in frames]
            if names:
                own[names[-1]] += count
            for name in set(names):
                incl[name] += count
            areas[area_of(frames)] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "areas_pct": dict(share(areas)),
        "self_pct": share(own),
        "incl_pct": share(incl),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    result = summarize(args.paths, args.top)
    print(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
