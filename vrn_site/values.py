"""Numbers a note quotes, taken from its notebooks' stored outputs instead of typed into the page.

In a notebook, a cell tagged ``publish`` prints ``name = value`` lines, most simply with
``publish(name=value, ...)``. A note then writes ``{{ notebook.name }}`` (the notebook's file name
without .ipynb; file names are unique across the site) wherever it quotes that number; the ledger
plugin fills it in at build time, and the build stops, naming the page, if the value does not exist
or the placeholder is malformed. ``\\{{ notebook.name }}`` shows a placeholder literally. Since nbval
compares every stored output, a quoted number that stopped being true fails the tests, and a
re-stored one updates the page.
"""

from __future__ import annotations

import re

PUBLISH_TAG = "publish"
REFERENCE = re.compile(r"(?<!\\)\{\{\s*([A-Za-z0-9_-]+)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
ANY_PLACEHOLDER = re.compile(r"(?<!\\)\{\{.*?\}\}", re.S)
ESCAPED = re.compile(r"\\(\{\{.*?\}\})", re.S)


def publish(**values: object) -> None:
    """Print each value as ``name = value``, for the note to quote (the cell must be tagged
    ``publish``). Format numbers before passing them: the page shows exactly this text."""
    for name, value in values.items():
        print(f"{name} = {value}")


def fill(text: str, values: dict[str, dict[str, str]], where: str) -> str:
    """Replace every ``{{ notebook.name }}`` in ``text``; KeyError naming ``where`` if one is unknown
    or malformed. ``\\{{ ... }}`` is kept, without its backslash, as literal text."""

    def value(match: re.Match) -> str:
        notebook, name = match.groups()
        try:
            return values[notebook][name]
        except KeyError:
            raise KeyError(
                f"{where}: quotes {{{{ {notebook}.{name} }}}}, but no cell tagged "
                f"'{PUBLISH_TAG}' in notebook '{notebook}' prints '{name} = ...'"
            ) from None

    filled = REFERENCE.sub(value, text)
    if bad := ANY_PLACEHOLDER.search(filled):
        raise KeyError(
            f"{where}: {bad.group(0)!r} is not a placeholder of the form "
            "{{ notebook.name }} (notebook file stem, a dot, a Python identifier); "
            "write \\{{ ... }} to show it literally"
        )
    return ESCAPED.sub(r"\1", filled)
