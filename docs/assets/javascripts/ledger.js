// Filters above the claims ledger: by verdict and by note. Rows carry no data attributes (the
// table is Markdown), so each row's verdict and note are read from its cells.
function ledgerFilters() {
  const table = document.querySelector(".vrn-ledger table");
  if (!table || table.dataset.filtered) return;
  table.dataset.filtered = "yes";
  const rows = [...table.tBodies[0].rows].map((row) => ({
    row,
    verdict: row.querySelector(".verdict").textContent.trim(),
    note: row.cells[0].textContent.split("·")[0].trim(),
  }));
  const choices = (key) => [...new Set(rows.map((r) => r[key]))].sort();
  const bar = document.createElement("div");
  bar.className = "vrn-filters";
  const selects = {};
  for (const [key, label] of [["verdict", "Verdict"], ["note", "Note"]]) {
    const select = document.createElement("select");
    select.setAttribute("aria-label", `Show claims by ${label.toLowerCase()}`);
    select.id = `vrn-filter-${key}`;
    for (const value of ["all", ...choices(key)]) select.add(new Option(value, value));
    const wrap = document.createElement("label");
    wrap.append(`${label}: `, select);
    bar.append(wrap);
    selects[key] = select;
  }
  const count = document.createElement("span");
  bar.append(count);
  const apply = () => {
    let shown = 0;
    for (const r of rows) {
      const keep = Object.entries(selects).every(([k, s]) => s.value === "all" || r[k] === s.value);
      r.row.hidden = !keep;
      shown += keep;
    }
    count.textContent = `${shown} of ${rows.length} claims shown`;
  };
  Object.values(selects).forEach((s) => s.addEventListener("change", apply));
  table.closest(".vrn-ledger").before(bar);
  apply();
}

document$.subscribe(ledgerFilters);
