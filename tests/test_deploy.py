"""Offline checks of the deployment files: what can be checked without Docker or a cluster."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import ipaddress
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml

from service.settings import Settings
from service.shards import Shards
from tests.support import ROOT, free_port, wait_until
from worker import stack as local_stack

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET")


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; Compose's Go parser refuses the file."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def compose(text: str | None = None) -> dict[str, Any]:
    source = (ROOT / "docker-compose.yml").read_text() if text is None else text
    data: dict[str, Any] = yaml.load(source, Loader=UniqueKeyLoader)
    return data


def test_compose_has_no_duplicate_keys() -> None:
    compose()
    # The check can fail: two merge keys in one mapping (write <<: [*a, *b] instead).
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key '<<'"):
        compose("x-a: &a {A: 1}\nx-b: &b {B: 2}\nenv:\n  <<: *a\n  <<: *b\n")


def known_settings() -> set[str]:
    """Every variable the service, the worker and the gunicorn config read."""
    names = set(re.findall(r'config\(\s*"([A-Z_]+)"', (ROOT / "service/settings.py").read_text()))
    names |= set(
        re.findall(r'environ\.get\("([A-Z_]+)"', (DEPLOY / "gunicorn.conf.py").read_text())
    )
    return names


# -- docker compose --------------------------------------------------------------------
def test_compose_has_the_stack_of_the_issue() -> None:
    everything = compose()["services"]
    # Monitoring and the Redis Cluster sit behind profiles, so a plain `docker compose up`
    # runs only the stack.
    optional = {name for name, s in everything.items() if s.get("profiles")}
    assert optional == {"prometheus", "grafana"} | CLUSTER_SERVICES
    assert all(everything[name]["profiles"] == ["monitoring"] for name in ("prometheus", "grafana"))
    assert all(everything[name]["profiles"] == ["cluster"] for name in CLUSTER_SERVICES)
    services = {name: s for name, s in everything.items() if name not in optional}
    assert set(services) == {"redis", "mysql", "app", "worker", "nginx"}
    assert everything["grafana"]["ports"] == ["127.0.0.1:${GRAFANA_PORT:-3000}:3000"]

    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "healthcheck" in redis

    mysql = services["mysql"]
    assert mysql["image"].startswith("mysql:8")
    assert any(v.endswith(":/var/lib/mysql") for v in mysql["volumes"])
    assert "healthcheck" in mysql

    # Only nginx publishes a port; the app has no fixed name or port, so --scale works.
    assert [name for name, s in services.items() if "ports" in s] == ["nginx"]
    assert "container_name" not in services["app"]
    for name in ("app", "worker"):
        depends = services[name]["depends_on"]
        assert depends == {
            "redis": {"condition": "service_healthy"},
            "mysql": {"condition": "service_healthy"},
        }, name
        assert "healthcheck" in services[name], name
    assert services["worker"]["healthcheck"]["test"][-4:] == ["python", "-m", "worker", "--check"]
    assert services["nginx"]["depends_on"] == {"app": {"condition": "service_healthy"}}

    declared = set(compose()["volumes"])
    for service in everything.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), source
            else:
                assert source in declared, source


def test_compose_secrets_come_from_env_and_env_example_lists_them() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    example = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    assert used <= set(example), f"missing from .env.example: {used - set(example)}"
    for key, value in example.items():
        if any(word in key for word in SECRET_WORDS):
            assert value == "", f".env.example must not carry a value for {key}"
    # Every secret in the compose file is interpolated from .env, never written in it.
    services = compose()["services"]
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in SECRET_WORDS):
                assert str(value).startswith("${"), f"{name}.{key} is written in the file"
    # The required ones fail loudly when .env lacks them.
    assert "${MYSQL_PASSWORD:?" in text and "${MYSQL_ROOT_PASSWORD:?" in text
    # Every setting given to the app and the worker is one the code reads.
    for name in ("app", "worker", "app-cluster", "worker-cluster"):
        unknown = set(services[name]["environment"]) - known_settings()
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"


# -- the compose `cluster` profile -------------------------------------------------------
NODES = [f"redis-node-{i}" for i in range(6)]
CLUSTER_SERVICES = {
    *NODES,
    *("redis-cluster-init", "cluster-database", "app-cluster", "worker-cluster", "nginx-cluster"),
}
REDIS_CLUSTER = DEPLOY / "redis-cluster"
# What each stack's own configuration holds (the rest is the same on both).
OWN = {"REDIS_URL", "REDIS_SHARDS", "DATABASE_URL"}


def interpolated(environment: dict[str, Any]) -> dict[str, str]:
    """The environment as Compose would give it with an empty .env: ${X:-d} -> d."""

    def value(match: re.Match[str]) -> str:
        return match.group(2) if match.group(1) == ":-" else "set-in-env"

    return {
        key: re.sub(r"\$\{[A-Z_]+(:-|:\?)([^}]*)\}", value, str(text))
        for key, text in environment.items()
    }


def test_compose_cluster_profile_is_the_stack_on_six_nodes() -> None:
    services = compose()["services"]
    subnet = compose()["networks"]["redis-cluster"]["ipam"]["config"][0]["subnet"]
    addresses, volumes = set(), set()
    for name in NODES:
        node = services[name]
        # Clients are sent the name that resolves on the network, not a container address.
        assert node["command"] == [
            *("redis-server", "/usr/local/etc/redis/node.conf"),
            *("--cluster-announce-hostname", name),
        ]
        assert (
            "./deploy/redis-cluster/node.conf:/usr/local/etc/redis/node.conf:ro"
            in (node["volumes"])
        )
        volumes |= {v for v in node["volumes"] if v.endswith(":/data")}
        address = ipaddress.ip_address(node["networks"]["redis-cluster"]["ipv4_address"])
        assert address in ipaddress.ip_network(subnet)
        addresses.add(address)
        assert "healthcheck" in node and "ports" not in node
    assert len(addresses) == len(volumes) == 6

    init = services["redis-cluster-init"]
    assert init["restart"] == "no"
    assert init["environment"]["CLUSTER_NODES"].split() == [f"{n}:6379" for n in NODES]
    assert init["environment"]["CLUSTER_REPLICAS"] == "1"
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in NODES}
    source, target, _ = init["volumes"][0].split(":")
    assert source == "./deploy/redis-cluster/create-cluster.sh" and init["command"] == [
        "sh",
        target,
    ]

    for name in ("app-cluster", "worker-cluster"):
        single = services[name.removesuffix("-cluster")]
        env = services[name]["environment"]
        assert "redis-cluster" in services[name]["networks"]
        assert services[name]["depends_on"] == {
            "redis-cluster-init": {"condition": "service_completed_successfully"},
            "cluster-database": {"condition": "service_completed_successfully"},
            "mysql": {"condition": "service_healthy"},
        }
        hosts = env["REDIS_URL"].removeprefix("redis+cluster://").split(",")
        assert {host.partition(":")[0] for host in hosts} <= set(NODES)
        # Its own database: the two stacks never share a snapshot store.
        assert env["DATABASE_URL"].endswith("/${MYSQL_CLUSTER_DATABASE:-clickky_cluster}")
        assert env["DATABASE_URL"] != single["environment"]["DATABASE_URL"]
        assert {k: v for k, v in env.items() if k not in OWN} == {
            k: v for k, v in single["environment"].items() if k not in OWN
        }
        # The service reads it as a cluster of 16 logical shards.
        settings = Settings.from_environ(interpolated(env))
        assert settings.redis_url == env["REDIS_URL"]
        assert settings.shards == Shards("clickky:", 16)

    nginx = services["nginx-cluster"]
    upstream = services["nginx"]["environment"]["CLICKKY_UPSTREAM"]
    assert nginx["environment"]["CLICKKY_UPSTREAM"] == upstream.replace("app:", "app-cluster:")
    assert nginx["depends_on"] == {"app-cluster": {"condition": "service_healthy"}}
    assert [n for n in sorted(CLUSTER_SERVICES) if "ports" in services[n]] == ["nginx-cluster"]
    assert nginx["ports"] != services["nginx"]["ports"]
    # A plain `docker compose up` needs nothing of the profile.
    for name, service in services.items():
        if not service.get("profiles"):
            assert not set(service.get("depends_on", {})) & CLUSTER_SERVICES, name
            assert "redis-cluster" not in service.get("networks", []), name


def test_compose_cluster_database_job_runs_on_a_real_server() -> None:
    """The job's SQL, as the shell in its container gets it, against the local MariaDB."""
    job = compose()["services"]["cluster-database"]
    assert job["depends_on"] == {"mysql": {"condition": "service_healthy"}}
    argv = [arg.replace("$$", "$") for arg in job["command"]]
    argv[-1] = argv[-1].replace("-h mysql ", "-h 127.0.0.1 ")
    assert argv[-1].count("-h 127.0.0.1 ") == 1
    tag = secrets.token_hex(4)
    database, user = f"clickky_cluster_test_{tag}", f"clickky_{tag}"
    env = {**os.environ, "CLUSTER_DATABASE": database, "CLUSTER_USER": user, "MYSQL_PWD": ""}

    def sql(statement: str, *login: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["mysql", "-h", "127.0.0.1", *(login or ("-u", "root")), "-N", "-e", statement],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )

    # The image creates MYSQL_USER before any job runs.
    assert sql(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{tag}'").returncode == 0
    try:
        for _ in range(2):  # it runs on every `up`
            run = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
            assert run.returncode == 0, run.stderr
        own = sql(
            f"CREATE TABLE {database}.t (x INT); SELECT COUNT(*) FROM {database}.t",
            *("-u", user, f"--password=pw-{tag}"),
        )
        assert own.returncode == 0 and own.stdout.split() == ["0"], own.stderr
    finally:
        sql(f"DROP DATABASE IF EXISTS {database}; DROP USER IF EXISTS '{user}'@'%'")


@contextlib.contextmanager
def cluster_nodes(
    tmp_path: Path, count: int, *options: str
) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    """`count` real redis-servers on deploy/redis-cluster/node.conf, moved to free local ports."""
    nodes = []
    try:
        for _ in range(count):
            port = free_port()
            (tmp_path / str(port)).mkdir()
            # The bus port's default, port + 10000, may be taken or past 65535.
            argv = [
                *("redis-server", str(REDIS_CLUSTER / "node.conf"), "--port", str(port)),
                *("--cluster-port", str(free_port())),
                *("--bind", "127.0.0.1 -::1", "--dir", str(tmp_path / str(port))),
                *("--cluster-announce-hostname", "localhost", *options),
            ]
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
            nodes.append((port, proc))
        for port, _ in nodes:
            client = redis.Redis(port=port)
            wait_until(lambda c=client: c.ping(), timeout=10)  # type: ignore[misc]
            client.close()
        yield nodes
    finally:
        for _, proc in nodes:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in nodes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def create_cluster(
    ports: list[int], replicas: int, wait_s: int = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(REDIS_CLUSTER / "create-cluster.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "CLUSTER_NODES": " ".join(f"localhost:{port}" for port in ports),
            "CLUSTER_REPLICAS": str(replicas),
            "CLUSTER_WAIT_S": str(wait_s),
        },
    )


def cluster_info(client: redis.Redis) -> dict[str, str]:
    info: dict[str, str] = client.cluster("info")
    return info


def cluster_nodes_table(client: redis.Redis) -> list[list[str]]:
    """CLUSTER NODES: [id, address, flags, master id, slots...] per node (no ping times)."""
    text = client.execute_command("CLUSTER", "NODES")
    text = text.decode() if isinstance(text, bytes) else text
    return sorted([*fields[:4], *fields[8:]] for fields in map(str.split, text.splitlines()))


def test_the_cluster_bootstrap_creates_the_cluster_once(tmp_path: Path) -> None:
    with cluster_nodes(tmp_path, 6) as nodes:
        ports = [port for port, _ in nodes]
        created = create_cluster(ports, 1)
        assert created.returncode == 0, created.stdout + created.stderr
        client = redis.Redis(port=ports[0], decode_responses=True)
        info = cluster_info(client)
        assert info["cluster_state"] == "ok" and int(info["cluster_slots_assigned"]) == 16384

        def settled() -> list[list[str]] | None:  # replicas are announced by gossip
            table = cluster_nodes_table(client)
            masters = {node[0] for node in table if "master" in node[2]}
            replicated = sorted(node[3] for node in table if "slave" in node[2])
            return table if len(masters) == 3 and replicated == sorted(masters) else None

        table = wait_until(settled)
        # Clients are sent the announced hostname (node.conf: preferred endpoint hostname).
        slots = client.execute_command("CLUSTER", "SLOTS")
        assert {entry[2][0] for entry in slots} == {"localhost"}

        # Every logical shard and the hub answer through a cluster client.
        cluster = redis.RedisCluster(host="127.0.0.1", port=ports[0])
        try:
            for keys in [*Shards("deploy-test:", 16).all(), Shards("deploy-test:", 16).hub]:
                assert cluster.incr(keys.global_count) == 1
        finally:
            cluster.close()

        # Rerun (every `docker compose up`): nothing is created again.
        again = create_cluster(ports, 1)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
        assert cluster_nodes_table(client) == table
        assert cluster_info(client)["cluster_current_epoch"] == info["cluster_current_epoch"]
        client.close()

        # The check can fail: a node that never answers ends the job with 1.
        nodes[5][1].kill()
        nodes[5][1].wait()
        missing = create_cluster(ports, 1, wait_s=1)
        assert missing.returncode == 1 and "does not answer" in missing.stderr


@pytest.mark.parametrize("coverage", ["node.conf", "yes"])
def test_a_lost_master_stops_only_its_own_slots(tmp_path: Path, coverage: str) -> None:
    """node.conf's cluster-require-full-coverage no, on 3 masters without replicas; with
    Redis's default (yes) one lost master stops every slot, so the check can fail."""
    options = () if coverage == "node.conf" else ("--cluster-require-full-coverage", coverage)
    with cluster_nodes(tmp_path, 3, "--cluster-node-timeout", "500", *options) as nodes:
        ports = [port for port, _ in nodes]
        assert create_cluster(ports, 0).returncode == 0
        client = redis.Redis(port=ports[0], decode_responses=True)
        keys = [f"{{s{i}}}:x" for i in range(64)]
        own = next(k for k in keys if client.cluster("keyslot", k) <= 5460)
        lost = next(k for k in keys if client.cluster("keyslot", k) > 10922)
        nodes[2][1].send_signal(signal.SIGKILL)
        nodes[2][1].wait()
        wait_until(
            lambda: any("fail" in node[2].split(",") for node in cluster_nodes_table(client))
        )
        if coverage == "yes":
            wait_until(lambda: cluster_info(client)["cluster_state"] == "fail")
            with pytest.raises(redis.exceptions.ClusterDownError):
                client.set(own, 1)
            return
        assert cluster_info(client)["cluster_state"] == "ok"
        assert client.set(own, 1)  # this master's players keep clicking
        # The lost master's slots still point at it: a client's call there fails (unavailable).
        with pytest.raises(redis.exceptions.MovedError, match=f":{ports[2]}$"):
            client.set(lost, 1)
        client.close()


def move_shard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(REDIS_CLUSTER / "move-shard.sh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_move_shard_moves_one_shard_with_its_players(tmp_path: Path) -> None:
    """move-shard.sh on 3 real masters: every key of the shard's slot, names with spaces
    included, ends on the chosen master, and every node sends clients there."""
    with cluster_nodes(tmp_path, 3) as nodes:
        ports = [port for port, _ in nodes]
        assert create_cluster(ports, 0).returncode == 0
        shards = Shards("move-test:", 16)
        client = redis.RedisCluster(host="127.0.0.1", port=ports[0], decode_responses=True)
        try:
            five, other = shards.shard(5), shards.shard(6)
            client.set(five.idempotency("é x", "id-1"), five.idempotency("é x", "id-1"))
            client.zadd(five.board, {"Ann Bee": 3})
            client.rpush(five.click_rate("ann bee"), "1:1")
            client.zadd(other.board, {"Cy": 1})
            slot = client.keyslot(five.board)
            owner = client.nodes_manager.get_node_from_slot(slot).port
            target = next(port for port in ports if port != owner)

            moved = move_shard(f"127.0.0.1:{ports[0]}", "5", f"127.0.0.1:{target}")
            assert moved.returncode == 0, moved.stdout + moved.stderr
            assert "moved 3 key(s)" in moved.stdout
            for port in ports:  # every node agrees on the new owner
                node = redis.Redis(port=port, decode_responses=True)
                ranges = node.execute_command("CLUSTER", "SLOTS")
                assert [r[2][1] for r in ranges if r[0] <= slot <= r[1]] == [target]
                node.close()
            owner_node = redis.Redis(port=owner, decode_responses=True)
            assert owner_node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            owner_node.close()
            # A cluster client follows MOVED to the data, all of it.
            assert client.zrange(five.board, 0, -1, withscores=True) == [("Ann Bee", 3.0)]
            assert client.lrange(five.click_rate("ann bee"), 0, -1) == ["1:1"]
            assert client.get(five.idempotency("é x", "id-1")) == five.idempotency("é x", "id-1")
            assert client.zrange(other.board, 0, -1) == ["Cy"]  # another shard, untouched
        finally:
            client.close()
        check = subprocess.run(
            ["redis-cli", "--cluster", "check", f"127.0.0.1:{ports[0]}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0 and "[OK] All 16384 slots covered" in check.stdout

        # Again: nothing to do. The hub moves the same way. A wrong shard is refused.
        again = move_shard(f"127.0.0.1:{ports[1]}", "5", f"127.0.0.1:{target}")
        assert again.returncode == 0 and "already on" in again.stdout, again.stderr
        hub = move_shard(f"127.0.0.1:{ports[0]}", "hub", f"127.0.0.1:{target}")
        assert hub.returncode == 0, hub.stderr
        assert move_shard(f"127.0.0.1:{ports[0]}", "s5", f"127.0.0.1:{target}").returncode == 1


# -- the image -------------------------------------------------------------------------
def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into stages."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def image_files() -> dict[str, Path]:
    """Image path -> repository path, for the files the last stage copies from the context."""
    files = {}
    for line in dockerfile_stages()[-1]:
        parts = shlex.split(line)
        if parts[0].upper() == "COPY" and not any(p.startswith("--from") for p in parts):
            files[parts[-1]] = ROOT / parts[1]
    return files


def test_dockerfile_is_multi_stage_small_and_not_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 3
    web = " ".join(stages[0])
    assert "npm --prefix service/web ci" in web and "npm --prefix service/web run build" in web
    final = stages[-1]
    assert final[0].split()[1].split(":")[0].endswith("python")
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    # The runtime gets the built venv and the config, never node or the sources.
    froms = [line for line in final if line.upper().startswith("COPY --FROM")]
    assert froms and all("--from=build" in line for line in froms)
    for stage in stages:
        for line in stage:
            parts = shlex.split(line)
            if parts[0].upper() == "COPY" and not any(p.startswith("--from") for p in parts):
                for source in parts[1:-1]:
                    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".env", "service/static", "service/web/node_modules"} <= set(ignored)


def console_script(name: str) -> importlib.metadata.EntryPoint:
    found = importlib.metadata.entry_points(group="console_scripts", name=name)
    assert found, f"no installed package provides the {name!r} command"
    return next(iter(found))


def check_command(argv: list[str]) -> None:
    """A command given to the clickky image exists in it: a script, a module, a file."""
    program, *args = argv
    if program == "python":
        assert args[0] == "-m", argv
        assert importlib.util.find_spec(f"{args[1]}.__main__"), f"no module {args[1]}.__main__"
        return
    console_script(program).load()
    files = image_files()
    for i, arg in enumerate(args):
        if arg.startswith("/app/"):
            assert arg in files and files[arg].is_file(), f"{arg} is not copied into the image"
        if re.fullmatch(r"[a-z_.]+:[a-z_]+", arg) and args[i - 1] != "--config":
            module, _, attribute = arg.partition(":")
            assert getattr(importlib.import_module(module), attribute) is not None


def test_every_service_command_exists_in_the_image() -> None:
    services = compose()["services"]
    ours = [name for name, s in services.items() if s.get("image") == "clickky:local"]
    assert set(ours) == {"app", "worker", "app-cluster", "worker-cluster"}
    # The cluster profile runs the same image the same way, only on another Redis.
    for name in ("app", "worker"):
        for key in ("command", "healthcheck", "stop_grace_period"):
            assert services[f"{name}-cluster"][key] == services[name][key], (name, key)
    assert all(services[name]["build"]["context"] == "." for name in ours)
    cmd = next(line for line in dockerfile_stages()[-1] if line.startswith("CMD"))
    image_cmd = yaml.safe_load(cmd.removeprefix("CMD"))
    assert services["app"]["command"] == image_cmd
    for argv in (image_cmd, services["worker"]["command"]):
        check_command(argv)
    # The healthcheck's flag exists.
    help_text = subprocess.run(
        [sys.executable, "-m", "worker", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "--check" in help_text
    # And the `clickky` script the README and the launcher use.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["clickky"] == "worker.cli:main"
    assert console_script("clickky").load() is importlib.import_module("worker.cli").main


GUNICORN = [sys.executable, "-m", "gunicorn", "--config", str(DEPLOY / "gunicorn.conf.py")]


def gunicorn(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    return subprocess.run(
        [*GUNICORN, *args, "service.app:app"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **env},
    )


def test_gunicorn_accepts_its_config() -> None:
    checked = gunicorn("--check-config", BIND=f"127.0.0.1:{free_port()}")
    assert checked.returncode == 0, checked.stderr
    printed = gunicorn("--print-config", WEB_CONCURRENCY="3", GRACEFUL_TIMEOUT="7").stdout
    settings = dict(re.findall(r"^(\w+)\s+= (.*)$", printed, flags=re.MULTILINE))
    assert settings["workers"] == "3"
    assert settings["graceful_timeout"] == "7"
    assert settings["worker_class"] == "uvicorn_worker.UvicornWorker"
    assert settings["preload_app"] == "False"


# -- nginx -------------------------------------------------------------------------------
def nginx_test(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_nginx_accepts_the_rendered_site(tmp_path: Path) -> None:
    run_dir = tmp_path / "nginx"
    config = local_stack.write_nginx_config(
        run_dir, listen=f"127.0.0.1:{free_port()}", ports=[1, 2]
    )
    result = nginx_test(
        local_stack.nginx_argv(local_stack.nginx_binary(), run_dir, config, test=True)
    )
    assert result.returncode == 0, result.stderr
    site = (run_dir / "clickky.conf").read_text()
    assert not re.search(r"\$\{CLICKKY_[A-Z_]+\}", site)
    assert "server 127.0.0.1:1 max_fails=2 fail_timeout=5s;" in site

    # The check can fail: a site nginx cannot parse is refused.
    (run_dir / "clickky.conf").write_text(site.replace("least_conn;", "least_conn"))
    assert (
        nginx_test(
            local_stack.nginx_argv(local_stack.nginx_binary(), run_dir, config, test=True)
        ).returncode
        != 0
    )

    with pytest.raises(local_stack.LaunchError):
        local_stack.render_site("listen ${CLICKKY_PORT};", listen="80", upstreams=[])


def test_nginx_accepts_the_container_main_config(tmp_path: Path) -> None:
    """deploy/nginx/nginx.conf with its /etc and /var paths moved under tmp_path."""
    confd = tmp_path / "conf.d"
    confd.mkdir()
    site = local_stack.render_site(
        local_stack.SITE_TEMPLATE.read_text(),
        listen=f"127.0.0.1:{free_port()}",
        # The compose file's line, with an address that resolves here instead of `app`.
        upstreams=["server 127.0.0.1:8000 max_fails=3 fail_timeout=10s;"],
    )
    (confd / "default.conf").write_text(site)
    main = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "include /etc/nginx/conf.d/*.conf;" in main
    temp = "".join(
        f"\n    {kind}_temp_path {tmp_path}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = (
        main.replace("user nginx;", "")
        .replace("/var/run/", f"{tmp_path}/")
        .replace("/var/log/nginx/", f"{tmp_path}/")
        .replace("/etc/nginx/conf.d/", f"{confd}/")
        .replace("http {", "http {" + temp, 1)
    )
    (tmp_path / "nginx.conf").write_text(main)
    result = nginx_test(
        [
            local_stack.nginx_binary(),
            "-t",
            "-p",
            f"{tmp_path}/",
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            "stderr",
        ]
    )
    assert result.returncode == 0, result.stderr


# -- Kubernetes --------------------------------------------------------------------------
def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


K8S_VERSION = "1.32.0"


def test_k8s_manifests_match_the_schema() -> None:
    docs = manifests()
    assert len(docs) >= 9
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # The check can fail: a wrong type and an unknown field are both refused.
    broken = find(docs, "Deployment", "clickky-worker")
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    typo = find(manifests(), "Service", "clickky")
    typo["spec"]["selektor"] = typo["spec"].pop("selector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_k8s_manifests_fit_together() -> None:
    docs = manifests()
    app = find(docs, "Deployment", "clickky-app")
    worker = find(docs, "Deployment", "clickky-worker")
    app_labels = app["spec"]["template"]["metadata"]["labels"]
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert app["spec"]["selector"]["matchLabels"].items() <= app_labels.items()

    container = app["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    check_command(container["command"])

    service = find(docs, "Service", "clickky")
    assert service["spec"]["selector"].items() <= app_labels.items()
    assert "sessionAffinity" not in service["spec"]
    hpa = find(docs, "HorizontalPodAutoscaler", "clickky-app")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "clickky-app",
    }
    pdb = find(docs, "PodDisruptionBudget", "clickky-app")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= app_labels.items()
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()

    assert worker["spec"]["replicas"] == 2
    worker_container = worker["spec"]["template"]["spec"]["containers"][0]
    check_command(worker_container["command"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert worker_container[probe]["exec"]["command"] == ["python", "-m", "worker", "--check"]

    config = find(docs, "ConfigMap", "clickky-config")
    secret = find(docs, "Secret", "clickky-secrets")
    for pod in (app, worker):
        refs = pod["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": "clickky-config"}} in refs
        assert {"secretRef": {"name": "clickky-secrets"}} in refs
    keys = set(config["data"]) | set(secret["stringData"])
    assert keys <= known_settings(), keys - known_settings()
    assert not set(config["data"]) & {"REDIS_URL", "DATABASE_URL", "ADMIN_TOKEN", "SECRET_KEY"}
    assert secret["stringData"]["ADMIN_TOKEN"] == "" and secret["stringData"]["SECRET_KEY"] == ""


def kustomized(directory: Path, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`kubectl kustomize directory`: exactly the documents of `sources`, valid, namespaced."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    names = {(d["kind"], d["metadata"]["name"]) for d in built}
    assert names == {(d["kind"], d["metadata"]["name"]) for d in sources}
    for doc in built:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "clickky"
    return built


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_kustomize_builds_every_manifest() -> None:
    built = kustomized(K8S, manifests())
    images = {
        c["image"]
        for d in built
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"clickky:0.1.0"}


# -- Kubernetes on a Redis Cluster (deploy/k8s-cluster, an overlay of deploy/k8s) ----------
K8S_CLUSTER = DEPLOY / "k8s-cluster"


def cluster_overlay() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S_CLUSTER.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def test_k8s_redis_cluster_fits_together() -> None:
    docs = cluster_overlay()
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # The nodes' settings and the create script are the repository's, not copies that drift.
    files = find(docs, "ConfigMap", "redis-cluster")["data"]
    assert files == {
        name: (REDIS_CLUSTER / name).read_text()
        for name in ("node.conf", "create-cluster.sh", "move-shard.sh")
    }

    service = find(docs, "Service", "redis-cluster")
    nodes = find(docs, "StatefulSet", "redis-cluster")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert nodes["spec"]["serviceName"] == service["metadata"]["name"]
    pod = nodes["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    redis_box = pod["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in redis_box["volumeMounts"]}
    assert redis_box["command"] == ["redis-server", f"{mounts['config']}/node.conf"]
    assert mounts["data"] == "/data"
    assert nodes["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    # Each pod announces the name the headless Service gives it.
    assert redis_box["args"] == [
        "--cluster-announce-hostname",
        f"$(POD_NAME).{service['metadata']['name']}",
    ]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        redis_box["env"]
    )
    assert {p["containerPort"] for p in redis_box["ports"]} == {6379, 16379}
    names = [f"{nodes['metadata']['name']}-{i}.redis-cluster" for i in range(6)]
    assert nodes["spec"]["replicas"] == len(names)

    job = find(docs, "Job", "redis-cluster-create")
    create = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in create["env"]}
    assert env["CLUSTER_NODES"].split() == [f"{name}:6379" for name in names]
    assert env["CLUSTER_REPLICAS"] == "1"
    script_dir = create["volumeMounts"][0]["mountPath"]
    assert create["command"] == ["sh", f"{script_dir}/create-cluster.sh"]
    volumes = job["spec"]["template"]["spec"]["volumes"] + pod["spec"]["volumes"]
    assert {v["configMap"]["name"] for v in volumes} == {"redis-cluster"}

    pdb = find(docs, "PodDisruptionBudget", "redis-cluster")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    app_pods = find(manifests(), "Deployment", "clickky-app")["spec"]["template"]["metadata"]
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= app_pods["labels"].items()
    assert not service["spec"]["selector"].items() <= app_pods["labels"].items()

    # The settings patch: what the app and the worker then read.
    config = find(docs, "ConfigMap", "clickky-config")["data"]
    secret = find(docs, "Secret", "clickky-secrets")["stringData"]
    assert set(config) | set(secret) <= known_settings()
    hosts = secret["REDIS_URL"].removeprefix("redis+cluster://").split(",")
    assert set(hosts) <= {f"{name}:6379" for name in names}


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_kustomize_builds_the_cluster_overlay() -> None:
    built = kustomized(K8S_CLUSTER, manifests() + cluster_overlay())
    # The base's settings, with the cluster's on top: 16 shards on a redis+cluster:// URL.
    config = find(built, "ConfigMap", "clickky-config")["data"]
    base = find(manifests(), "ConfigMap", "clickky-config")["data"]
    assert config == {**base, "REDIS_SHARDS": "16"}
    secret = find(built, "Secret", "clickky-secrets")["stringData"]
    settings = Settings.from_environ({**config, **secret})
    assert settings.redis_url.startswith("redis+cluster://redis-cluster-0.redis-cluster:6379,")
    assert settings.shards == Shards("clickky:", 16)


# -- systemd -----------------------------------------------------------------------------
def installed_units(tmp_path: Path) -> list[Path]:
    """The units with /opt/clickky pointed at this checkout and its venv."""
    venv = Path(sys.executable).parent.parent
    units = []
    for source, name in (
        ("clickky@.service", "clickky@8001.service"),
        ("clickky-worker.service", "clickky-worker.service"),
    ):
        text = (DEPLOY / "systemd" / source).read_text()
        text = text.replace("/opt/clickky/venv", str(venv)).replace("/opt/clickky", str(ROOT))
        (tmp_path / name).write_text(text)
        units.append(tmp_path / name)
    return units


def test_systemd_units_run_what_exists() -> None:
    for name in ("clickky@.service", "clickky-worker.service"):
        text = (DEPLOY / "systemd" / name).read_text()
        start = re.search(r"^ExecStart=(.*)$", text, flags=re.MULTILINE)
        assert start, name
        argv = shlex.split(start.group(1))
        assert argv[0].startswith("/opt/clickky/venv/bin/")
        program = Path(argv[0]).name
        check_command(["python", *argv[1:]] if program == "python" else [program])
        if program == "gunicorn":
            config = argv[argv.index("--config") + 1]
            assert (ROOT / config.removeprefix("/opt/clickky/")).is_file()
        assert "EnvironmentFile=/etc/clickky/clickky.env" in text
        assert re.search(r"^User=clickky$", text, flags=re.MULTILINE)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is missing")
def test_systemd_units_verify(tmp_path: Path) -> None:
    units = installed_units(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr, result.stderr
    # The check can fail: a misspelt key is reported.
    broken = units[1].read_text().replace("ExecStart=", "ExecStrat=")
    units[1].write_text(broken)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units[1])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 or "Unknown key" in result.stderr
