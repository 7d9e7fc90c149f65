"""deploy/prometheus and deploy/grafana: promtool accepts and unit-tests the alerts, and the
dashboard and the rules use only metrics the service exports, in valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "clickky.json"
# Series Prometheus makes itself.
OTHERS = {"up"}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is needed (Debian: apt-get install prometheus; .ci/run does)"
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def exported() -> set[str]:
    """Every series name service/metrics.py can export, with the client's suffixes."""
    source = (ROOT / "service" / "metrics.py").read_text(encoding="utf-8")
    names = set()
    for kind, name in re.findall(r'(Counter|Gauge|Histogram)\(\s*"(clickky_\w+)"', source):
        suffixes = {"Counter": [""], "Gauge": [""], "Histogram": ["_bucket", "_sum", "_count"]}
        names |= {name + s for s in suffixes[kind]}
    cluster = source.split("_CLUSTER_HELP = {", 1)[1].split("}", 1)[0]
    names |= {f"clickky_{key}" for key in re.findall(r'"(\w+)":', cluster)}
    assert "clickky_clicks_total" in names and "clickky_snapshot_age_seconds" in names
    return names


def series_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expr)
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()", without_strings))
    return {w for w in words if w.startswith("clickky_") or w == "up"}


def dashboard_exprs() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules_and_the_config() -> None:
    assert "SUCCESS" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")


def test_promtool_unit_tests_pass() -> None:
    """alerts.test.yml: each alert fires on its failure (with its labels) and clears after."""
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_the_alerts_of_the_runbook_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "ClickkySnapshotStale",
        "ClickkyPubSubDown",
        "ClickkyOverloaded",
        "ClickkyRestoreInProgress",
        "ClickkyRedisUnavailable",
    } <= names
    tested = (PROMETHEUS / "alerts.test.yml").read_text(encoding="utf-8")
    untested = sorted(n for n in names if f"alertname: {n}" not in tested)
    assert not untested, f"no promtool test for {untested}"


def test_dashboard_and_rules_use_only_exported_metrics() -> None:
    known = exported() | OTHERS
    exprs = dashboard_exprs() + [rule["expr"] for rule in alert_rules()]
    unknown = {name for expr in exprs for name in series_in(expr)} - known
    assert not unknown, f"not exported by service/metrics.py: {sorted(unknown)}"


def test_dashboard_covers_the_operators_questions(tmp_path: Path) -> None:
    used = {name for expr in dashboard_exprs() for name in series_in(expr)}
    assert {
        "clickky_clicks_total",  # clicks/s
        "clickky_clicks_refused_total",  # refusals by reason
        "clickky_broadcast_lag_seconds_bucket",  # tick lag
        "clickky_ticks_sent_total",  # states/s
        "clickky_online",
        "clickky_redis_errors_total",
        "clickky_pubsub_up",
        "clickky_snapshot_age_seconds",
        "clickky_snapshot_duration_seconds",
        "clickky_snapshot_failures",
    } <= used
    # Every panel query is valid PromQL: promtool parses them as recording rules.
    rules = [{"record": f"clickky:panel_{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]
    (tmp_path / "panels.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]})
    )
    assert "SUCCESS" in promtool("check", "rules", "panels.yml", cwd=tmp_path)
