"""The `clickky` command. Each subcommand is one `add_*` function listed in SUBCOMMANDS.

To add one: write `add_x(commands)` that calls `commands.add_parser("x", ...)`, declares
its arguments and sets `handler=` to a function taking the parsed arguments and returning
the exit status; then append `add_x` to SUBCOMMANDS. Import heavy modules inside the
handler, so `clickky --help` and the other subcommands stay fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _common(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--port", type=_port, default=port, help=f"port to serve on ({port})")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument(
        "--no-worker",
        dest="worker",
        action="store_false",
        help="do not start the worker (snapshots run elsewhere)",
    )


def _run(args: argparse.Namespace) -> int:
    from worker import stack

    return stack.run(host=args.host, port=args.port, worker=args.worker)


def add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "run",
        help="run it locally: Redis (embedded unless REDIS_URL), one instance, the worker",
        description=(
            "Start one service instance and the worker. Without REDIS_URL, an embedded "
            "redis-server keeps its data in ./.clickky/redis; without DATABASE_URL, snapshots "
            "go to ./clickky.db. Ctrl-C stops everything."
        ),
    )
    _common(parser, 8000)
    parser.set_defaults(handler=_run)


def _stack(args: argparse.Namespace) -> int:
    from worker import stack

    return stack.stack(
        instances=args.instances,
        host=args.host,
        port=args.port,
        worker=args.worker,
        nginx=args.nginx,
    )


def add_stack(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "stack",
        help="N instances, the worker and nginx in front of them, without Docker",
        description=(
            "Start N instances on free ports, the worker, and nginx (deploy/nginx config) "
            "in front of them on --port. Without nginx it says so and the instances listen "
            "on --port, --port+1, ... Ctrl-C stops everything."
        ),
    )
    parser.add_argument("--instances", type=_positive, default=3, help="instances to run (3)")
    parser.add_argument("--nginx", help="the nginx binary (default: PATH, then /usr/sbin/nginx)")
    _common(parser, 8080)
    parser.set_defaults(handler=_stack)


def _loadtest(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from worker import loadtest

    extra = list(args.locust_args)
    test = loadtest.LoadTest(
        instances=args.instances,
        users=args.users,
        spawn_rate=args.spawn_rate,
        duration=args.time,
        out=Path(args.out),
        nginx=args.nginx,
        locust_args=extra[1:] if extra[:1] == ["--"] else extra,
    )
    return loadtest.run(test, dict(os.environ))


def add_loadtest(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "loadtest",
        help="N instances with load-test settings, a headless locust run, then the loss check",
        description=(
            "Start a private stack (a fresh embedded Redis unless REDIS_URL is set, N "
            "instances, the worker, nginx in front when installed) with the join limit "
            "raised, run locust (loadtest/locustfile.py) against it, then loadtest/check.py. "
            "Exit 0 only if both pass. Arguments after -- go to locust. Needs the loadtest "
            "extra and a source checkout."
        ),
    )
    parser.add_argument("--instances", type=_positive, default=2, help="instances to run (2)")
    parser.add_argument("--users", type=_positive, default=200, help="locust users (200)")
    parser.add_argument(
        "--spawn-rate", type=float, default=20, help="users started per second (20)"
    )
    parser.add_argument("--time", default="2m", help="locust run time: 30s, 2m, 1h (2m)")
    parser.add_argument(
        "--out", default=".clickky/loadtest", help="results folder (./.clickky/loadtest)"
    )
    parser.add_argument("--nginx", help="the nginx binary (default: PATH, else none)")
    parser.add_argument("locust_args", nargs=argparse.REMAINDER, help="-- then locust options")
    parser.set_defaults(handler=_loadtest)


def _export(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from service.logs import configure_logging
    from service.settings import Settings
    from service.store import Store
    from worker.export import ExportError, export_day, parse_day

    settings = Settings.load("clickky")
    configure_logging(settings.log_level, "text", process="export")
    try:
        files = export_day(
            Store(settings.database_url), parse_day(args.day), args.format, Path(args.out)
        )
    except ExportError as exc:
        print(f"clickky export: {exc}", file=sys.stderr)
        return 2
    for table, path in files.items():
        print(f"{table}: {path}")
    return 0


def add_export(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "export",
        help="write one day's minutes, breakdowns, users and audit log from the SQL store",
        description=(
            "Write OUT/{minutes,breakdowns,users,audit}/year=YYYY/month=MM/day=DD/<table>.<format> "
            "from DATABASE_URL, so pandas.read_parquet(OUT/'minutes') reads every day."
        ),
    )
    parser.add_argument("--day", required=True, help="the UTC day, YYYY-MM-DD")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--out", default="exports", help="output folder (./exports)")
    parser.set_defaults(handler=_export)


def _worker(args: argparse.Namespace) -> int:
    from worker.main import main as worker_main

    worker_main(["--check"] if args.check else [])
    return 0


def add_worker(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "worker", help="the snapshot worker (same as python -m worker)", description=None
    )
    parser.add_argument("--check", action="store_true", help="healthcheck: exit 0 or 1")
    parser.set_defaults(handler=_worker)


def _admin_token(args: argparse.Namespace) -> int:
    from service.admin import hash_token, new_token

    token = new_token()
    if args.name is None:
        print(token)
        return 0
    name = args.name.strip()
    if not name or "," in name:
        raise SystemExit("clickky admin-token: --name must be non-empty and without commas")
    print(f"token (give it to {name}; it is shown only once): {token}")
    print(f"ADMIN_TOKENS entry (add it, comma-separated): {name}:{hash_token(token)}")
    return 0


def add_admin_token(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "admin-token",
        help="print a new random admin token (and its ADMIN_TOKENS entry with --name)",
        description=(
            "Print a new random admin token (43 characters, 256 bits) for ADMIN_TOKEN. With "
            "--name, also print the name:sha256 entry for ADMIN_TOKENS, which holds only hashes."
        ),
    )
    parser.add_argument("--name", help="the admin's name, as the audit log will show it")
    parser.set_defaults(handler=_admin_token)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    add_run,
    add_stack,
    add_loadtest,
    add_export,
    add_worker,
    add_admin_token,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clickky", description="Clickky, a real-time global click counter."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `clickky` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.handler(args)
    return status
