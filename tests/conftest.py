"""Shared test helpers: the repository root, throwaway copies of a small fixture site and ways to
break them, and a scan of built files for traces of this machine."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from vrn_site.ledger import LedgerError, load_site

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


NOTE = "docs/notes/demo.md"
NOTEBOOK = "notebooks/demo/demo.ipynb"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"fixture changed: {old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def edit_notebook(site: Path, change) -> None:
    nb = nbformat.read(site / NOTEBOOK, as_version=4)
    change(nb)
    nbformat.write(nb, site / NOTEBOOK)


def ledger_problems(site: Path) -> str:
    with pytest.raises(LedgerError) as err:
        load_site(site)
    return str(err.value)


def assert_build_fails(site: Path, *fragments: str) -> None:
    result = mkdocs_build(site)
    assert result.returncode != 0, "the strict build passed on broken input"
    for fragment in fragments:
        assert fragment in result.stderr, (
            f"{fragment!r} not in the build's error:\n{result.stderr[-3000:]}"
        )


def machine_traces(site: Path, source: Path) -> list[str]:
    """Absolute paths of this checkout, of the site's source and of this user's home, and the host
    name, in any file of the built ``site``."""
    traces = {str(ROOT), str(source.resolve()), str(Path.home()) + "/"}
    host = socket.gethostname()
    if len(host) >= 6:  # a short host name would match ordinary words
        traces.add(host)
    user = getpass.getuser()
    traces |= {f"/home/{user}/", f"/Users/{user}/"}
    found = []
    for path in site.rglob("*"):
        if path.is_file() and path.suffix in {".html", ".json", ".ipynb", ".js", ".xml", ".txt"}:
            text = path.read_text(encoding="utf-8", errors="replace")
            found += [f"{path.relative_to(site)}: {t}" for t in traces if t in text]
    return found
