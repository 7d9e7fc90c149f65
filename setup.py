"""Build hook: the wheel and the sdist carry the web pages (service/static/), built by npm.

Everything else is in pyproject.toml. `pip wheel .` or `python -m build` from a clean clone
runs `npm ci` and `npm run build` in service/web when the pages are missing or older than
their sources, so a Python user without Node can install the result and play. The sdist
carries the built pages too, so building a wheel from it needs no Node. Without npm, the
pages already built are used; with none, the build stops and says what to install.
An editable install (`pip install -e .`, which `make` runs) skips the hook: `make web`
builds the pages there.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "service" / "web"
STATIC = ROOT / "service" / "static"
STAMP = STATIC / ".built"


def _newest_source() -> float:
    sources = [*(WEB / "src").rglob("*"), *(WEB / n for n in ("package.json", "build.mjs"))]
    return max((p.stat().st_mtime for p in sources if p.is_file()), default=0.0)


def _built_at() -> float | None:
    for marker in (STAMP, STATIC / "index.html"):
        if marker.is_file():
            return marker.stat().st_mtime
    return None


class build_web(Command):
    """Build service/static/ with npm when it is missing or older than service/web/."""

    description = "build the web pages (npm ci && npm run build in service/web)"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        built = _built_at()
        fresh = built is not None and built >= _newest_source()
        if fresh or not WEB.is_dir():
            return
        npm = shutil.which("npm")
        if npm is None:
            if built is not None:
                self.announce("npm not found: packaging the pages built before", level=3)
                return
            raise SystemExit(
                "clickky: the web pages are not built and npm is not on PATH: install "
                "Node.js 18+ (or build from the sdist, which carries the pages)"
            )
        quiet = ["--no-audit", "--no-fund", "--loglevel=error"]
        subprocess.run([npm, "--prefix", str(WEB), "ci", *quiet], check=True)
        subprocess.run([npm, "--prefix", str(WEB), "run", "build"], check=True)
        STAMP.touch()


class build_py_with_web(build_py):
    def run(self) -> None:
        if not getattr(self, "editable_mode", False):
            self.run_command("build_web")
            # The package data list may have been taken before the pages existed.
            self.__dict__.pop("data_files", None)
        super().run()


class sdist_with_web(sdist):
    def run(self) -> None:
        self.run_command("build_web")
        super().run()


setup(cmdclass={"build_web": build_web, "build_py": build_py_with_web, "sdist": sdist_with_web})
