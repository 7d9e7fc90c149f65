"""A wheel built from a clean clone carries the web pages, and serves them once installed.

`pip wheel .` runs the npm build (setup.py's hook); the sdist carries the built pages, so a
wheel built from it on a machine without Node has them too. That wheel, installed on its
own (its dependencies come from this venv), serves the play page with `uvicorn`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port, wait_ready

pytestmark = pytest.mark.system

PYTHON = sys.executable


def sh(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def pages_in_wheel(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {n for n in archive.namelist() if n.startswith("service/static/")}


def test_a_wheel_from_a_clean_clone_serves_the_pages(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    clone = tmp_path / "clone"
    sh(["git", "clone", "--quiet", str(ROOT), str(clone)], tmp_path)
    assert not (clone / "service" / "static").exists()

    # 1. As the README says: `pip wheel .` in the clone, with Node on PATH.
    sh([PYTHON, "-m", "pip", "wheel", ".", "--no-deps", "--quiet", "-w", "wheels"], clone)
    (wheel,) = (clone / "wheels").glob("clickky-*.whl")
    pages = pages_in_wheel(wheel)
    assert {"service/static/index.html", "service/static/dashboard.html"} <= pages, pages
    assert any(p.startswith("service/static/assets/play-") for p in pages), pages

    # 2. The sdist carries the pages and their sources, not node_modules ...
    sh([PYTHON, "-m", "build", "--sdist", "--outdir", str(tmp_path / "sdist"), "."], clone)
    (sdist,) = (tmp_path / "sdist").glob("clickky-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        archive.extractall(tmp_path / "unpacked", filter="data")
    assert any(n.endswith("service/static/index.html") for n in names)
    assert any(n.endswith("service/web/src/play.js") for n in names)
    assert not any("node_modules" in n for n in names)

    # ... so a wheel built from it without Node (no npm on PATH) has them too.
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    no_node = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    sh([PYTHON, "-m", "build", "--wheel", "--outdir", str(tmp_path / "w2"), "."], unpacked, no_node)
    (wheel2,) = (tmp_path / "w2").glob("clickky-*.whl")
    assert pages_in_wheel(wheel2) == pages

    # 3. Installed on its own, outside the checkout, it serves the play page.
    site = tmp_path / "site"
    sh(
        [
            PYTHON,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(wheel2),
        ],
        tmp_path,
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "DATABASE_URL": f"sqlite:///{run_dir / 'clickky.db'}",
    }
    where = subprocess.run(
        [PYTHON, "-c", "import service; print(service.__file__)"],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(site)), f"imported {where}, not the wheel's copy"
    port = free_port()
    with (run_dir / "uvicorn.log").open("wb") as log:
        server = subprocess.Popen(
            [PYTHON, "-m", "uvicorn", "service.app:app", "--port", str(port)],
            cwd=run_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        page = httpx.get(f"{url}/", timeout=10)
        assert page.status_code == 200, page.text
        assert "not built" not in page.text and "/static/assets/play-" in page.text
        asset = page.text.split('src="', 1)[1].split('"', 1)[0]
        assert httpx.get(f"{url}{asset}", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(20)
