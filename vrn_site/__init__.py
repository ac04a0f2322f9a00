"""Site machinery of Verified Reading Notes: the claims ledger, its checks, the MkDocs plugin,
the pytest plugin that records verifying runs, and the notebook re-executor. No paper code here."""

from pathlib import Path


def project_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder at or above ``start`` (the working directory) that
    holds mkdocs.yml. Every command line tool starts from here, so they agree wherever they run."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "mkdocs.yml").is_file():
            return folder
    raise SystemExit(f"{start} is not inside a Verified Reading Notes checkout (no mkdocs.yml)")
