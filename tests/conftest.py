"""Shared test helpers: the repository root and throwaway copies of a small fixture site."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
collect_ignore = ["fixtures"]

FIXTURE = ROOT / "tests" / "fixtures" / "mini"

MINI_NAV = """nav:
  - Home: index.md
  - Notes: []
  - Ledger: ledger.md
"""


def write_site_config(site: Path) -> None:
    """The project's own mkdocs.yml, with the fixture's navigation and this checkout's node_modules."""
    config = (ROOT / "mkdocs.yml").read_text()
    config = re.sub(r"^nav:\n(?:[ ]+.*\n)+", MINI_NAV, config, flags=re.M)
    config = re.sub(
        r"^  - ledger\b.*$",
        f"  - ledger:\n      node_modules: {ROOT / 'node_modules'}",
        config,
        flags=re.M,
    )
    (site / "mkdocs.yml").write_text(config)


@pytest.fixture
def mini_site(tmp_path: Path) -> Path:
    """A copy of tests/fixtures/mini, a one-note site built with the project's configuration."""
    site = tmp_path / "site-src"
    shutil.copytree(FIXTURE, site)
    shutil.copytree(ROOT / "docs" / "assets", site / "docs" / "assets")
    (site / "snippets").mkdir()
    write_site_config(site)
    return site


def mkdocs_build(
    site: Path, out: Path | None = None, site_url: str | None = None
) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of the site whose mkdocs.yml is in ``site``, output captured.

    ``site_url`` is where it will be served (Material's instant navigation needs the right one)."""
    out = out or site / "_site"
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ
        | {"NO_MKDOCS_2_WARNING": "1"}
        | ({"SITE_URL": site_url} if site_url else {}),
    )


def nbval(site: Path, mode: str = "--nbval") -> subprocess.CompletedProcess:
    """nbval (strict, or ``--nbval-lax``) over the notebooks of the site in ``site``."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--color=no",
            mode,
            "notebooks",
            "-q",
        ],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=300,
    )
