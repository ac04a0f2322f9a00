"""MkDocs plugin ``ledger``: notes, notebooks and claims become pages, tables and claims.json.

Only the hooks live here; the work is done by the modules they call:
- on_config: vrn_site.ledger.load_site reads docs/ and notebooks/ once (any problem stops the build,
  naming the claim and the file) and vrn_site.record the last verifying run; the navigation's
  empty "Notes" section is filled with each note, then its notebooks, in the notes' order.
- on_files: every notebook becomes a page (before mkdocs-jupyter converts them), each figure
  (a cell tagged ``figure:<name>``) ``figures/<notebook>/<name>.png``, plus claims.json and the
  vendored MathJax and Mermaid files (vrn_site.vendor) under assets/vendor/.
- on_page_markdown: quoted numbers are filled in (vrn_site.values) and claim markers rendered
  (vrn_site.render): ``<!-- claim: <id> -->``, ``<!-- claims-table -->``, ``<!-- ledger -->``,
  ``<!-- changelog -->`` (vrn_site.changelog), ``<!-- bench -->`` and ``<!-- mutants -->`` (the
  committed results of ``make bench`` and ``make mutants``, rendered by vrn_site.bench and
  vrn_site.mutants).
- on_page_content / on_post_page: notebook pages are kept out of the search index where they are
  code, and marked up with their checks (vrn_site.notebook_page).
- on_post_build: the search index shows math as plain text, and every link of the built site must
  lead to a file and an anchor that exist (vrn_site.links).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from mkdocs.config import config_options
from mkdocs.config.base import Config
from mkdocs.exceptions import PluginError
from mkdocs.plugins import BasePlugin, event_priority
from mkdocs.structure.files import File, Files

from vrn_site import changelog, links, notebook_page, record, vendor
from vrn_site.ledger import LedgerError, load_site, read_results
from vrn_site.render import MarkdownError, Renderer, plain_search_index
from vrn_site.values import fill

CHANGELOG_MARKER = "<!-- changelog -->"
# Pages rendered from committed results: marker -> (results in docs_dir, the command that makes
# them, the module whose render() turns them into Markdown)
RESULTS = {
    "<!-- bench -->": ("bench.json", "make bench", "vrn_site.bench"),
    "<!-- mutants -->": ("mutants.json", "make mutants", "vrn_site.mutants"),
}
NOTES_SECTION = "Notes"
# A search ranks a note above its notebooks, whose titles and prose repeat the note's subject
# (the ``boost`` that Material's search reads from a page's metadata).
NOTE_SEARCH_BOOST, NOTEBOOK_SEARCH_BOOST = 10, 0.1


class LedgerConfig(Config):
    notebooks_dir = config_options.Type(str, default="notebooks")
    node_modules = config_options.Type(str, default="node_modules")
    run_record = config_options.Type(str, default=record.DEFAULT_PATH)


class LedgerPlugin(BasePlugin[LedgerConfig]):
    def on_config(self, config):
        self.root = Path(config.config_file_path).resolve().parent
        self.docs_dir = Path(config.docs_dir)
        notebooks_dir = self.root / self.config.notebooks_dir
        try:
            self.site = load_site(self.root, self.docs_dir, notebooks_dir)
            run = record.read(self.root / self.config.run_record)
        except (LedgerError, ValueError) as err:
            raise PluginError(str(err)) from None
        status = record.status(run, self.site, self.root) if run else None
        self.render = Renderer(self.site.claims, self.site.notebooks, run, status)
        self.sources: dict[str, str] = {}  # page in the site -> the file it was built from
        config.nav = self._nav(config.nav)
        config.watch.extend(str(p) for p in (notebooks_dir, self.root / "snippets") if p.is_dir())
        return config

    def _nav(self, nav: list | None) -> list:
        """The configured navigation with its (empty) Notes section filled from the notes."""
        notes = [
            {
                note.nav_title: [
                    {"The note": note.src.as_posix()},
                    *(
                        {title: f"{self.config.notebooks_dir}/{note.slug}/{stem}.ipynb"}
                        for stem, title in note.notebooks.items()
                    ),
                ]
            }
            for note in self.site.notes
        ]
        nav = list(nav or [])
        for i, entry in enumerate(nav):
            if isinstance(entry, dict) and list(entry) == [NOTES_SECTION]:
                if entry[NOTES_SECTION]:
                    raise PluginError(
                        f"mkdocs.yml: leave the nav's '{NOTES_SECTION}' section empty "
                        "([]): the ledger plugin fills it from the notes' front matter"
                    )
                nav[i] = {NOTES_SECTION: notes}
                return nav
        raise PluginError(f"mkdocs.yml: the nav needs an empty '{NOTES_SECTION}: []' section")

    @event_priority(100)  # before mkdocs-jupyter turns .ipynb files into pages
    def on_files(self, files: Files, config) -> Files:
        for nb in self.site.notebooks:
            files.append(
                File(nb.path.as_posix(), str(self.root), config.site_dir, config.use_directory_urls)
            )
        for figure in self.site.figures:
            files.append(File.generated(config, figure.src_uri, content=figure.png))
        node_modules = self.root / self.config.node_modules
        try:
            vendored = vendor.vendored_files(node_modules)
        except FileNotFoundError as err:
            raise PluginError(str(err)) from None
        for rel in vendored:
            files.append(
                File(
                    rel.as_posix(),
                    str(node_modules),
                    config.site_dir,
                    False,
                    dest_uri=f"{vendor.SITE_FOLDER}/{rel.as_posix()}",
                )
            )
        files.append(File.generated(config, "claims.json", content=self.render.claims_json()))
        return files

    def on_page_markdown(self, markdown: str, page, config, files) -> str:
        src = page.file.src_uri
        where = self.site.shown(self.docs_dir / src)
        if any(n.src.as_posix() == src for n in self.site.notes):
            page.meta.setdefault("search", {}).setdefault("boost", NOTE_SEARCH_BOOST)
        try:
            markdown = self.render.page(fill(markdown, self.site.values, where), src, where)
        except (KeyError, MarkdownError) as err:
            raise PluginError(err.args[0]) from None
        if CHANGELOG_MARKER in markdown:
            history = changelog.history(self.root, self.site.shown(self.docs_dir / "notes"))
            markdown = markdown.replace(CHANGELOG_MARKER, changelog.render(history))
        for marker, (name, command, module) in RESULTS.items():
            if marker in markdown:
                markdown = markdown.replace(marker, self._results(name, command, module))
        return markdown

    def _results(self, name: str, command: str, module: str) -> str:
        """The Markdown of committed results (docs/bench.json, docs/mutants.json)."""
        problems: list[str] = []
        results = read_results(self.docs_dir / name, problems, self.root)
        if problems:
            raise PluginError(problems[0])
        if results is None:
            return (
                f'!!! warning "Not measured yet"\n    `{command}` writes '
                f"{self.site.shown(self.docs_dir / name)}, which this page shows.\n"
            )
        return importlib.import_module(module).render(results)

    def on_page_content(self, html_text: str, page, config, files) -> str:
        if not page.file.src_uri.endswith(".ipynb"):
            return html_text
        page.meta.setdefault("search", {}).setdefault("boost", NOTEBOOK_SEARCH_BOOST)
        return notebook_page.searchable(html_text)

    def on_post_page(self, output: str, page, config) -> str:
        src = page.file.src_uri
        self.sources[page.file.dest_uri] = (
            src if src.endswith(".ipynb") else self.site.shown(self.docs_dir / src)
        )
        if not src.endswith(".ipynb"):
            return output
        try:
            return notebook_page.finish(output, src, self.site.claims, config.use_directory_urls)
        except notebook_page.PageError as err:
            raise PluginError(str(err)) from None

    @event_priority(-100)  # after the search plugin has written its index
    def on_post_build(self, config) -> None:
        index = Path(config.site_dir) / "search" / "search_index.json"
        if index.exists():
            data = plain_search_index(json.loads(index.read_text(encoding="utf-8")))
            index.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        if broken := links.broken_links(Path(config.site_dir), self.sources):
            raise PluginError("broken links:\n  " + "\n  ".join(broken))
