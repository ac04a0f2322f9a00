"""The third-party scripts and fonts the site serves itself, from the npm packages in package.json.

Nothing is committed: ``make setup`` runs ``npm ci``, and the ledger plugin adds these files of
node_modules/ to the site under assets/vendor/ (so pages load MathJax and Mermaid from the site).
"""

from __future__ import annotations

from pathlib import Path

# Files of each package, relative to node_modules/<package dir>.
VENDORED = {
    "mathjax/es5": (
        "tex-mml-chtml.js",
        "output/chtml/fonts/woff-v2/*",
        "input/tex/extensions/**/*",
        "ui/*",
        "a11y/*",
    ),
    "mermaid/dist": ("mermaid.min.js",),
}
SITE_FOLDER = "assets/vendor"


def vendored_files(node_modules: Path) -> list[Path]:
    """Every vendored file, relative to ``node_modules``; FileNotFoundError if a package is absent."""
    found = []
    for package_dir, patterns in VENDORED.items():
        base = node_modules / package_dir
        if not base.is_dir():
            raise FileNotFoundError(
                f"{base} is missing: the site serves MathJax and Mermaid itself; "
                "run `make setup` (or `npm ci`) first"
            )
        for pattern in patterns:
            found += [
                p.relative_to(node_modules) for p in sorted(base.glob(pattern)) if p.is_file()
            ]
    return found
