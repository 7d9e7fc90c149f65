"""The repository stands alone: no file points outside it, and every relative link resolves."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support import ROOT

# Built, so this file does not match itself.
OUTSIDE = ("../" + "shared", "shared/" + "CONTRACT")
# [text](target) in Markdown, skipping absolute URLs and in-page anchors.
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def test_no_file_refers_outside_the_repository() -> None:
    found = []
    for path in tracked():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images
        for number, line in enumerate(text.splitlines(), start=1):
            if any(word in line for word in OUTSIDE):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_relative_links_in_the_docs_resolve_inside_the_repository() -> None:
    broken = []
    for path in tracked():
        if path.suffix != ".md":
            continue
        for target in LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:|^#", target):
                continue
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            if not resolved.exists() or not resolved.is_relative_to(ROOT):
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, "\n".join(broken)


def test_the_api_reference_covers_every_error_code_the_service_sends() -> None:
    """Each code in an ApiError(...) or invalid(...) of service/ appears in docs/api.md."""
    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    sources = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "service").glob("*.py"))
    codes = set(re.findall(r'(?:ApiError\(\s*\d{3},|invalid\()\s*"([a-z_]+)"', sources))
    assert len(codes) > 10, codes
    missing = sorted(code for code in codes if f"`{code}`" not in reference)
    assert not missing, f"docs/api.md does not describe {missing}"
