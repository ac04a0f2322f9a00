// MathJax 3, served by this site (node_modules/mathjax, copied by the ledger plugin).
// Typesets the notes' math (pymdownx.arithmatex spans), the notebooks' Markdown cells ($...$) and
// the table of contents (whose entries repeat the headings' TeX), on first load and again after
// every instant navigation. Only those elements are scanned, so a dollar sign elsewhere stays text.
function typesetSite() {
  const math = document.querySelectorAll(
    ".arithmatex, .jp-RenderedMarkdown, .md-nav--secondary .md-nav__link",
  );
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  return MathJax.typesetPromise([...math]);
}

window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  startup: {
    typeset: false,
    ready: () => {
      MathJax.startup.defaultReady();
      MathJax.startup.promise.then(typesetSite);
    },
  },
};

document$.subscribe(() => {
  // Before MathJax has loaded, `ready` above does the first typesetting.
  if (MathJax.startup && MathJax.startup.promise) MathJax.startup.promise.then(typesetSite);
});
