"""Numbers a note quotes, taken from its notebooks' stored outputs instead of typed into the page.

In a notebook, a cell tagged ``publish`` prints ``name = value`` lines, most simply with
``publish(name=value, ...)``. A note then writes ``{{ notebook.name }}`` (the notebook's file name
without .ipynb) wherever it quotes that number; the ledger plugin fills it in at build time, and the
build stops, naming the page, if the value does not exist. Since nbval compares every stored output,
a quoted number that stopped being true fails the tests, and a re-stored one updates the page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vrn_site.ledger import notebook_paths

PUBLISH_TAG = "publish"
LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*) = (.+)$")
REFERENCE = re.compile(r"\{\{\s*([A-Za-z0-9_-]+)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def publish(**values: object) -> None:
    """Print each value as ``name = value``, for the note to quote (the cell must be tagged
    ``publish``). Format numbers before passing them: the page shows exactly this text."""
    for name, value in values.items():
        print(f"{name} = {value}")


def published_values(notebooks_dir: Path) -> dict[str, dict[str, str]]:
    """{notebook stem: {name: value}} from the stored outputs of cells tagged ``publish``."""
    found: dict[str, dict[str, str]] = {}
    for path in notebook_paths(notebooks_dir):
        try:
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # the ledger reports notebooks that are not valid JSON
        values = found.setdefault(path.stem, {})
        for cell in cells:
            if PUBLISH_TAG not in cell.get("metadata", {}).get("tags", []):
                continue
            for output in cell.get("outputs", []):
                if output.get("output_type") == "stream" and output.get("name") == "stdout":
                    for line in "".join(output.get("text", "")).splitlines():
                        if match := LINE.match(line.strip()):
                            values[match.group(1)] = match.group(2).strip()
    return found


def fill(text: str, values: dict[str, dict[str, str]], where: str) -> str:
    """Replace every ``{{ notebook.name }}`` in ``text``; KeyError naming ``where`` if one is unknown."""

    def value(match: re.Match) -> str:
        notebook, name = match.groups()
        try:
            return values[notebook][name]
        except KeyError:
            raise KeyError(
                f"{where}: quotes {{{{ {notebook}.{name} }}}}, but no cell tagged "
                f"'{PUBLISH_TAG}' in notebook '{notebook}' prints '{name} = ...'"
            ) from None

    return REFERENCE.sub(value, text)
