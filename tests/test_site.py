"""The built site in a real browser: Debian's Chromium, headless, driven by playwright.

Builds the project's site strictly, serves it on 127.0.0.1 and opens every page: no console error,
no failed request, no request leaving 127.0.0.1, math typeset, notebook outputs and figures shown,
search finds a note, and claims.json holds the whole ledger. Marked `site`: `make test` runs these
after the notebooks, so the ledger shows the run that just verified them.
"""

from __future__ import annotations

import functools
import json
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import ROOT, mkdocs_build

from vrn_site.ledger import load_ledger

pytestmark = pytest.mark.site

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def port() -> int:
    """A free port on 127.0.0.1 (the site is built for it: site_url must match for instant loading)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def built_site(tmp_path_factory, port: int) -> Path:
    out = tmp_path_factory.mktemp("built")
    result = mkdocs_build(ROOT, out, site_url=f"http://127.0.0.1:{port}/")
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-5000:]}"
    return out


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def base_url(built_site: Path, port: int):
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


class PageWatch:
    """A browser page that records console errors, failed requests and off-host requests."""

    def __init__(self, browser, base_url: str) -> None:
        self.page = browser.new_page()
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda m: m.type == "error" and self.problems.append(f"console error: {m.text}"),
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        # A request cut short because the test moved on to the next page is no fault of the site;
        # a missing file shows up as an HTTP error below.
        self.page.on(
            "requestfailed",
            lambda r: (
                "ERR_ABORTED" not in (r.failure or "")
                and self.problems.append(f"failed request: {r.url} ({r.failure})")
            ),
        )
        self.page.on(
            "response",
            lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"),
        )

        def guard(route) -> None:
            host = urlparse(route.request.url).hostname
            if route.request.url.startswith("data:") or host == "127.0.0.1":
                route.continue_()
            else:
                self.problems.append(f"request leaving 127.0.0.1: {route.request.url}")
                route.abort()

        self.page.route("**/*", guard)

    def close(self) -> None:
        self.page.close()


def site_pages(built_site: Path) -> list[str]:
    return sorted(
        p.parent.relative_to(built_site).as_posix() + "/"
        for p in built_site.glob("**/index.html")
        if p.parent != built_site and "assets" not in p.parts
    )


def test_every_page_loads_cleanly_and_stays_on_the_host(browser, base_url, built_site):
    pages = [""] + site_pages(built_site)
    assert len(pages) >= 4, pages
    watch = PageWatch(browser, base_url)
    for path in pages:
        watch.page.goto(base_url + path, wait_until="networkidle")
    watch.close()
    assert not watch.problems, "\n".join(watch.problems)


def test_math_is_typeset_in_notes_and_notebooks(browser, base_url, built_site):
    watch = PageWatch(browser, base_url)
    typeset = {}
    for path in site_pages(built_site):
        watch.page.goto(base_url + path, wait_until="networkidle")
        watch.page.wait_for_function(
            "() => window.MathJax && MathJax.startup && MathJax.startup.promise"
        )
        watch.page.evaluate("() => MathJax.startup.promise")
        raw = watch.page.locator(".arithmatex:not(:has(mjx-container))").count()
        assert raw == 0, f"{path}: {raw} formulas of the note left untypeset"
        leftover = watch.page.eval_on_selector_all(
            ".jp-RenderedMarkdown",
            r"cells => cells.filter(c => /\$[^$\s][^$]*\$/.test(c.innerText)).length",
        )
        assert leftover == 0, f"{path}: {leftover} notebook Markdown cells show raw $...$ math"
        typeset[path] = watch.page.locator("mjx-container").count()
    watch.close()
    assert any(n for p, n in typeset.items() if p.startswith("notes/")), typeset
    assert any(n for p, n in typeset.items() if p.startswith("notebooks/")), typeset
    assert not watch.problems, "\n".join(watch.problems)


@pytest.mark.parametrize(
    ("link", "math"),
    [
        ("notes/attention/", ".arithmatex mjx-container"),
        ("notebooks/attention/transformer/", ".jp-RenderedMarkdown mjx-container"),
    ],
)
def test_math_typeset_after_instant_navigation(browser, base_url, link, math):
    watch = PageWatch(browser, base_url)
    watch.page.goto(base_url, wait_until="networkidle")
    watch.page.evaluate("() => { window.__not_reloaded = true; }")
    watch.page.locator(f"a.md-nav__link[href$='{link}']").first.click()
    watch.page.wait_for_url(f"**/{link}")
    watch.page.wait_for_selector(math, timeout=15_000)
    # instant navigation swapped the content in place: the page was not reloaded
    assert watch.page.evaluate("() => window.__not_reloaded === true")
    watch.close()
    assert not watch.problems, "\n".join(watch.problems)


def test_notebook_outputs_and_figures_show(browser, base_url, built_site):
    notebooks = [p for p in site_pages(built_site) if p.startswith("notebooks/")]
    assert notebooks
    watch = PageWatch(browser, base_url)
    figures = 0
    for path in notebooks:
        watch.page.goto(base_url + path, wait_until="networkidle")
        outputs = watch.page.locator(".jp-OutputArea-output")
        assert outputs.count() > 0, f"{path}: no cell outputs shown"
        assert outputs.first.is_visible(), f"{path}: outputs are hidden"
        banners = watch.page.locator(".vrn-check")
        assert banners.count() > 0, f"{path}: no checking cell is marked"
        sizes = watch.page.eval_on_selector_all(
            ".jp-OutputArea-output img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])"
        )
        assert all(done and width > 0 for done, width in sizes), f"{path}: a figure did not load"
        figures += len(sizes)
    watch.close()
    assert figures > 0, "no notebook shows a figure"
    assert not watch.problems, "\n".join(watch.problems)


def test_search_finds_a_note_by_a_word_in_it(browser, base_url):
    watch = PageWatch(browser, base_url)
    watch.page.goto(base_url, wait_until="networkidle")
    watch.page.locator("label.md-search__icon, .md-search__input").first.click()
    box = watch.page.locator("input.md-search__input")
    box.type("smoothing", delay=50)  # Material's search listens to key presses
    result = watch.page.locator(".md-search-result__item a").first
    result.wait_for(timeout=15_000)
    titles = watch.page.locator(".md-search-result__item").all_inner_texts()
    assert any("Attention" in t for t in titles), titles
    watch.close()
    assert not watch.problems, "\n".join(watch.problems)


def test_claims_json_publishes_the_whole_ledger(built_site):
    published = json.loads((built_site / "claims.json").read_text())
    claims = load_ledger(ROOT)
    assert [c["id"] for c in published["claims"]] == [c.id for c in claims]
    for entry in published["claims"]:
        assert entry["verdict"] and entry["finding"] and entry["seed"]
        assert entry["checks"] or entry["verdict"] == "unverifiable here", entry["id"]
    assert sum(published["verdict_counts"].values()) == len(claims)


def test_mermaid_diagrams_render(browser, base_url, built_site):
    pages = [
        p
        for p in site_pages(built_site)
        if 'class="mermaid"' in (built_site / p / "index.html").read_text()
    ]
    assert pages, "no page has a Mermaid diagram"
    watch = PageWatch(browser, base_url)
    for path in pages:
        watch.page.goto(base_url + path, wait_until="networkidle")
        # Material swaps each <pre class="mermaid"> source for a <div class="mermaid"> that holds
        # the drawn SVG in a closed shadow root: wait for every swap and a drawing of real size.
        watch.page.wait_for_function(
            "() => !document.querySelector('pre.mermaid') && "
            "[...document.querySelectorAll('div.mermaid')].every("
            "d => d.getBoundingClientRect().height > 50)",
            timeout=15_000,
        )
    watch.close()
    assert not watch.problems, "\n".join(watch.problems)
