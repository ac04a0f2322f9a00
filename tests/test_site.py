"""The built site in a real browser: Debian's Chromium, headless, driven by playwright.

Builds the project's site strictly, serves it on 127.0.0.1 and visits every page once at 1280 px
and once at 390 px, gathering what a reader sees; the tests below then check it: no console error,
no failed request, no request leaving 127.0.0.1, math typeset (table of contents included), notebook
outputs and figures shown, each note's figures with alt text, no page scrolling sideways, Mermaid
labels large enough to read, search ranking each note first for its subject, clean search previews,
and claims.json holding the whole ledger. Marked `site`: `make test` runs these after the notebooks,
so the ledger shows the run that just verified them. With VRN_SCREENSHOTS=<dir> set (`make
screenshots`), every page is also saved as a PNG at both widths, for a person to look at.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import ROOT, machine_traces, mkdocs_build

from vrn_site.ledger import load_site

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

    def __init__(self, browser, base_url: str, viewport: dict | None = None) -> None:
        self.page = browser.new_page(viewport=viewport or {"width": WIDE[0], "height": WIDE[1]})
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


WIDE, PHONE = (1280, 900), (390, 844)
MIN_MERMAID_LABEL_PX = 11
RAW_TEX = r"/\$[^$\s]|\\[(\[]|\\(frac|mathrm|varepsilon|sqrt|text)\b/"

# What a reader sees on one page, gathered in one visit (one round trip per check is too slow).
GATHER = """() => {
  const visible = (el) => el.getBoundingClientRect().width > 0;
  const rawTex = RAW_TEX;
  // Claims tables must fit; other data tables may scroll inside their own box.
  const wrappers = [...document.querySelectorAll(".vrn-claims .md-typeset__scrollwrap, .vrn-claims table")]
    .filter((w) => w.scrollWidth > w.clientWidth + 1);
  return {
    sideways: document.documentElement.scrollWidth > window.innerWidth + 1,
    tables_cut: wrappers.length,
    untypeset: document.querySelectorAll(".arithmatex:not(:has(mjx-container))").length,
    raw_markdown_math: [...document.querySelectorAll(".jp-RenderedMarkdown")]
      .filter((c) => /\\$[^$\\s][^$]*\\$/.test(c.innerText)).length,
    toc_raw_tex: [...document.querySelectorAll(".md-nav--secondary .md-nav__link")]
      .map((a) => a.innerText).filter((t) => rawTex.test(t)),
    mjx: document.querySelectorAll("mjx-container").length,
    outputs: document.querySelectorAll(".jp-OutputArea-output").length,
    outputs_visible: [...document.querySelectorAll(".jp-OutputArea-output")].some(visible),
    banners: document.querySelectorAll(".vrn-check").length,
    verdicts: document.querySelectorAll(".vrn-verdict").length,
    notebook_images: [...document.querySelectorAll(".jp-OutputArea-output img")]
      .map((i) => [i.complete, i.naturalWidth]),
    figures: [...document.querySelectorAll("article figure img")]
      .map((i) => ({alt: i.alt, width: i.naturalWidth, caption: !!i.closest("figure").querySelector("figcaption")})),
    images_without_alt: [...document.querySelectorAll("article img")].filter((i) => !i.alt.trim()).length,
    mermaid_pending: document.querySelectorAll("pre.mermaid").length,
  };
}""".replace("RAW_TEX", RAW_TEX)


def mermaid_label_sizes(page) -> list[float]:
    """On-screen px of every Mermaid label: Mermaid draws into closed shadow roots, which only the
    DevTools protocol sees into; a label's font size is scaled by its SVG's width / viewBox."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument", {"depth": -1, "pierce": True})["root"]
    sizes: list[float] = []

    def children(node):
        yield from node.get("children", [])
        yield from node.get("shadowRoots", [])

    def labels(node):
        if node.get("nodeName", "").lower() in ("span", "text", "p") and node.get("nodeType") == 1:
            if any(
                c.get("nodeType") == 3 and c.get("nodeValue", "").strip() for c in children(node)
            ):
                yield node
        for child in children(node):
            yield from labels(child)

    def walk(node):
        attrs = node.get("attributes", [])
        attr = dict(zip(attrs[::2], attrs[1::2], strict=True))
        if node.get("nodeName", "").lower() == "svg" and "aria-roledescription" in attr:
            view_width = float(attr.get("viewBox", "0 0 0 0").split()[2])
            box = cdp.send("DOM.getBoxModel", {"nodeId": node["nodeId"]})["model"]
            scale = box["width"] / view_width if view_width else 1.0
            for label in labels(node):
                style = cdp.send("CSS.getComputedStyleForNode", {"nodeId": label["nodeId"]})
                size = {p["name"]: p["value"] for p in style["computedStyle"]}["font-size"]
                sizes.append(float(size.removesuffix("px")) * scale)
            return
        for child in children(node):
            walk(child)

    walk(root)
    cdp.detach()
    return sizes


def visit_every_page(base_url: str, built_site: Path, name: str, size: tuple[int, int]) -> dict:
    """{(name, page): what the reader sees} at one width, in a browser of its own (each width
    runs in its own thread: playwright's sync API wants one instance per thread)."""
    from playwright.sync_api import sync_playwright

    shots = os.environ.get("VRN_SCREENSHOTS")
    seen: dict[tuple[str, str], dict] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        watch = PageWatch(browser, base_url, viewport={"width": size[0], "height": size[1]})
        for path in [""] + site_pages(built_site):
            watch.page.goto(base_url + path, wait_until="load")  # scripts, styles and images
            watch.page.wait_for_function(
                "() => window.MathJax && MathJax.startup && MathJax.startup.promise"
            )
            watch.page.evaluate("() => MathJax.startup.promise")
            if 'class="mermaid"' in (built_site / path / "index.html").read_text():
                watch.page.wait_for_function(
                    "() => !document.querySelector('pre.mermaid') && [...document."
                    "querySelectorAll('div.mermaid')].every(d => d.getBoundingClientRect().height > 0)",
                    timeout=60_000,
                )
            seen[(name, path)] = watch.page.evaluate(GATHER)
            if name == "wide":
                seen[(name, path)]["mermaid_px"] = mermaid_label_sizes(watch.page)
            if shots:
                target = (
                    Path(shots) / name / ((path.strip("/").replace("/", "__") or "home") + ".png")
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                watch.page.screenshot(path=str(target), full_page=True)
        watch.close()
        browser.close()
    seen[(name, "problems")] = watch.problems
    return seen


@pytest.fixture(scope="module")
def visits(base_url, built_site) -> dict[tuple[str, str], dict]:
    """{(width name, page): what the reader sees}, every page visited once at each width; the two
    widths are visited side by side."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with ThreadPoolExecutor(max_workers=2) as pool:
        widths = [
            pool.submit(visit_every_page, base_url, built_site, name, size)
            for name, size in (("wide", WIDE), ("phone", PHONE))
        ]
        return {key: value for width in widths for key, value in width.result().items()}


@pytest.mark.parametrize("width", ["wide", "phone"])
def test_every_page_loads_cleanly_and_stays_on_the_host(visits, width):
    assert len([k for k in visits if k[0] == width]) >= 5
    assert not visits[(width, "problems")], "\n".join(visits[(width, "problems")])


@pytest.mark.parametrize("width", ["wide", "phone"])
def test_no_page_scrolls_sideways_and_no_table_is_cut(visits, width):
    bad = [
        f"{page}: {'page scrolls sideways' if v['sideways'] else ''} {v['tables_cut']} claims table(s) cut"
        for (w, page), v in visits.items()
        if w == width and page != "problems" and (v["sideways"] or v["tables_cut"])
    ]
    assert not bad, "\n".join(bad)


def pages(visits, prefix: str = "") -> dict[str, dict]:
    return {
        p: v
        for (w, p), v in visits.items()
        if w == "wide" and p != "problems" and p.startswith(prefix)
    }


def test_math_is_typeset_in_notes_notebooks_and_tables_of_contents(visits):
    for page, v in pages(visits).items():
        assert v["untypeset"] == 0, f"{page}: {v['untypeset']} formulas of the note left untypeset"
        assert v["raw_markdown_math"] == 0, f"{page}: notebook Markdown cells show raw $...$ math"
        assert not v["toc_raw_tex"], f"{page}: table of contents shows raw TeX {v['toc_raw_tex']}"
    assert any(v["mjx"] for v in pages(visits, "notes/").values())
    assert any(v["mjx"] for v in pages(visits, "notebooks/").values())


def test_every_note_shows_its_figures_with_alt_text_and_captions(visits):
    notes = pages(visits, "notes/")
    assert notes
    for page, v in notes.items():
        assert len(v["figures"]) >= 2, (
            f"{page}: {len(v['figures'])} figures, a note shows at least 2"
        )
        for figure in v["figures"]:
            assert figure["width"] > 0, f"{page}: figure {figure['alt']!r} did not load"
            assert len(figure["alt"]) >= 20, (
                f"{page}: figure alt text {figure['alt']!r} says too little"
            )
            assert figure["caption"], f"{page}: figure {figure['alt']!r} has no caption"
    for page, v in pages(visits).items():
        assert v["images_without_alt"] == 0, (
            f"{page}: {v['images_without_alt']} images lack alt text"
        )


def test_each_claim_shows_its_verdict_where_it_is_argued(visits):
    claims = load_site(ROOT).claims
    for page, v in pages(visits, "notes/").items():
        own = [c for c in claims if c.note.stem == page.split("/")[1]]
        assert v["verdicts"] == len(own), (
            f"{page}: {v['verdicts']} verdict lines for {len(own)} claims"
        )


def test_notebook_outputs_figures_and_checks_show(visits):
    notebooks = pages(visits, "notebooks/")
    assert notebooks
    for page, v in notebooks.items():
        assert v["outputs"] > 0 and v["outputs_visible"], f"{page}: no visible cell output"
        assert v["banners"] > 0, f"{page}: no checking cell is marked"
        assert all(done and width > 0 for done, width in v["notebook_images"]), page
    assert sum(len(v["notebook_images"]) for v in notebooks.values()) > 0


def test_mermaid_diagrams_render_with_readable_labels(visits):
    drawn = {p: v["mermaid_px"] for p, v in pages(visits).items() if v["mermaid_px"]}
    assert drawn, "no page has a drawn Mermaid diagram"
    for page, sizes in drawn.items():
        assert min(sizes) >= MIN_MERMAID_LABEL_PX, (
            f"{page}: Mermaid labels as small as {min(sizes):.1f} px on a 1280 px screen"
        )
    assert all(v["mermaid_pending"] == 0 for v in pages(visits).values())


@pytest.mark.parametrize(
    ("start", "link", "math"),
    [
        ("", "notes/attention/", ".arithmatex mjx-container"),
        (
            "notes/attention/",
            "notebooks/attention/transformer/",
            ".jp-RenderedMarkdown mjx-container",
        ),
    ],
)
def test_math_typeset_after_instant_navigation(browser, base_url, start, link, math):
    watch = PageWatch(browser, base_url)
    watch.page.goto(base_url + start, wait_until="networkidle")
    watch.page.evaluate("() => { window.__not_reloaded = true; }")
    watch.page.locator(f"article a[href$='{link}']").first.click()
    watch.page.wait_for_url(f"**/{link}")
    watch.page.wait_for_selector(math, timeout=60_000)
    # instant navigation swapped the content in place: the page was not reloaded
    assert watch.page.evaluate("() => window.__not_reloaded === true")
    watch.close()
    assert not watch.problems, "\n".join(watch.problems)


# The subject a reader would type to find each note; every note needs one.
SUBJECTS = {
    "attention": "label smoothing",
    "bert": "masked language model",
    "gpt": "KV cache",
    "gqa": "grouped-query attention",
    "beam": "beam search",
    "needle": "needle in a haystack",
    "zephyr": "DPO",
    "prompting": "Medprompt",
    "openhathi": "OpenHathi",
}


def test_search_ranks_each_note_first_for_its_subject(browser, base_url, built_site):
    notes = [p.split("/")[1] for p in site_pages(built_site) if p.startswith("notes/")]
    assert set(notes) <= set(SUBJECTS), f"give {set(notes) - set(SUBJECTS)} a subject in SUBJECTS"
    watch = PageWatch(browser, base_url)
    watch.page.goto(base_url, wait_until="networkidle")
    wrong = []
    for slug in notes:
        watch.page.locator("label.md-search__icon, .md-search__input").first.click()
        box = watch.page.locator("input.md-search__input")
        box.press("Control+a")
        box.press("Backspace")
        box.type(SUBJECTS[slug], delay=30)  # Material's search listens to key presses
        first = watch.page.locator(".md-search-result__item a").first
        first.wait_for(timeout=60_000)
        watch.page.wait_for_timeout(300)  # let the results settle on the last key press
        href = watch.page.locator(".md-search-result__item a").first.get_attribute("href")
        if f"notes/{slug}/" not in href:
            wrong.append(f"{SUBJECTS[slug]!r}: first result {href}, not the {slug} note")
    watch.close()
    assert not wrong, "\n".join(wrong)
    assert not watch.problems, "\n".join(watch.problems)


def test_search_previews_hold_no_raw_tex_prompts_or_widget_text(built_site):
    index = json.loads((built_site / "search" / "search_index.json").read_text())
    tex = re.compile(RAW_TEX.strip("/"))
    for doc in index["docs"]:
        text = f"{doc['title']} {doc['text']}"
        for bad in ("¶", "Copied!", "celltag_"):
            assert bad not in text, f"{doc['location']}: search preview shows {bad!r}"
        assert not re.search(r"In \[\d*\]:", text), f"{doc['location']}: a notebook prompt"
        assert not tex.search(text), f"{doc['location']}: raw TeX {tex.search(text)[0]!r}"


def test_claims_json_publishes_the_whole_ledger(built_site):
    published = json.loads((built_site / "claims.json").read_text())
    claims = load_site(ROOT).claims
    assert [c["id"] for c in published["claims"]] == [c.id for c in claims]
    for entry in published["claims"]:
        assert entry["verdict"] and entry["finding"] and entry["seed"]
        assert entry["checks"] or entry["verdict"] == "unverifiable here", entry["id"]
    assert sum(published["verdict_counts"].values()) == len(claims)


def test_the_built_site_leaks_nothing_of_this_machine(built_site):
    """No absolute path of this checkout or home, and no host name, in any built page, notebook
    copy, claims.json or search index (a stored traceback would carry such paths)."""
    assert machine_traces(built_site, ROOT) == []
