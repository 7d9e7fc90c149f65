"""Offline checks of the deployment files: what can be checked without Docker or a cluster."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support import ROOT, free_port
from worker import stack as local_stack

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


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
    # Monitoring sits behind a profile, so a plain `docker compose up` runs only the stack.
    optional = {name for name, s in everything.items() if s.get("profiles")}
    assert optional == {"prometheus", "grafana"}
    assert all(everything[name]["profiles"] == ["monitoring"] for name in optional)
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
    for name in ("app", "worker"):
        unknown = set(services[name]["environment"]) - known_settings()
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"


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
    assert set(ours) == {"app", "worker"}
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


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_kustomize_builds_every_manifest() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    names = {(d["kind"], d["metadata"]["name"]) for d in built}
    assert names == {(d["kind"], d["metadata"]["name"]) for d in manifests()}
    for doc in built:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "clickky"
    images = {
        c["image"]
        for d in built
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"clickky:0.1.0"}


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
