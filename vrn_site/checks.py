"""Fast checks of stored notebooks, for the pre-commit hook and `make lint`:
``python -m vrn_site.checks [NOTEBOOK ...]`` (default: every notebook under notebooks/).

- every code cell is stored executed (the site shows stored outputs and nbval compares them), except
  in a scaffolded notebook that still holds its placeholder claim (`make note`);
- no output leaks the machine it ran on: absolute paths of home, work or temporary directories,
  or this machine's host name.
Cells are named as everywhere else: nbval's "Cell N" (code cells from 0) and Jupyter's "In [n]".
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
from pathlib import Path

from vrn_site import project_root
from vrn_site.ledger import cell_label, claim_ids_in_tags, notebook_paths

LOCAL_PATH = re.compile(r"(?:/home/|/root/|/Users/|/work/|/tmp/|[A-Z]:\\\\Users\\\\)[\w.-]+")
HOST = socket.gethostname()


def problems(path: Path) -> list[str]:
    """What is wrong with one stored notebook, each naming the file and the cell."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return [f"{path}: not a valid notebook ({err.__class__.__name__}: {err})"]
    tags = [t for c in cells for t in (c.get("metadata") or {}).get("tags", [])]
    scaffold = any(i.endswith(".placeholder") for i in claim_ids_in_tags(tags))
    found = []
    code = [c for c in cells if c.get("cell_type") == "code"]
    for number, cell in enumerate(code):
        label = cell_label(number, cell.get("execution_count"))
        if cell.get("execution_count") is None and not scaffold:
            found.append(
                f"{path}: {label} is not stored executed; run "
                f"`python -m vrn_site.execute {path}` and commit the result"
            )
        for output in cell.get("outputs", []):
            text = json.dumps(output.get("text", "")) + json.dumps(output.get("traceback", ""))
            text += json.dumps(output.get("data", {}).get("text/plain", ""))
            if match := LOCAL_PATH.search(text):
                found.append(
                    f"{path}: {label} shows the local path {match[0]!r}; print paths "
                    "relative to the repository (or nothing)"
                )
            elif len(HOST) >= 6 and HOST in text:  # a short name would match ordinary words
                found.append(f"{path}: {label} shows this machine's host name {HOST!r}")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or notebook_paths(project_root() / "notebooks")
    found = [p for path in paths for p in problems(path)]
    if found:
        sys.exit("\n".join(found))
    print(f"{len(paths)} notebooks stored executed, no local paths in their outputs")


if __name__ == "__main__":
    main()
