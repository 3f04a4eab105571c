/* The feature atlas: reads the JSON block, lists the features a page of rows at a time,
   filters them by the search box (or #q= in the address), sorts them by the column clicked,
   and opens a row into its details. Every element is made with createElement and every
   value set with textContent or a numeric attribute: no data ever passes through an HTML
   parser, so a gene or label named like markup stays text. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("atlas-data").textContent);
  var FEATURES = DATA.features, LABELS = DATA.labels, ROWS = DATA.rows, BINS = DATA.bins;
  var TABLE = document.getElementById("atlas");
  var PAGE = Number(TABLE.getAttribute("data-page")) || 200;
  var SEARCH = document.getElementById("atlas-search");
  var COUNT = document.getElementById("atlas-count");
  var MORE = document.getElementById("atlas-more");
  var SVGNS = "http://www.w3.org/2000/svg";
  var PNG = "data:image/png;base64,";

  // ---------------------------------------------------------------- small helpers

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    return e;
  }
  function has(x) { return x !== null && x !== undefined; }
  function num(x) {
    if (!has(x)) return "";
    if (x === 0) return "0";
    var a = Math.abs(x);
    return a >= 1e4 || a < 1e-3 ? x.toExponential(2) : String(Number(x.toPrecision(3)));
  }
  function qtext(q) { return !has(q) ? "" : q < 1e-3 ? q.toExponential(1) : String(Number(q.toPrecision(2))); }
  function pct(d) { return !has(d) ? "" : d === 0 ? "0%" : String(Number((100 * d).toPrecision(3))) + "%"; }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // ---------------------------------------------------------------- search text

  FEATURES.forEach(function (f, i) {
    f.i = i;
    var parts = [f.n, f.desc || "", f.rl || ""];
    f.g.forEach(function (g) { parts.push(g[0]); });
    f.mo.forEach(function (m) { parts.push(m.id || "", m.name || "", m.consensus || ""); });
    f.a.forEach(function (a, j) {
      if (a && has(a.q) && a.q < DATA.alpha) parts.push(LABELS[j]);
    });
    f.s = parts.join("\n").toLowerCase();
  });

  // ---------------------------------------------------------------- columns

  function assoc(j, what) { return function (f) { var a = f.a[j]; return a ? a[what] : null; }; }
  var anyGenes = FEATURES.some(function (f) { return f.g.length > 0; });
  var COLUMNS = [
    { title: "Feature", key: function (f) { return f.i; }, cell: function (f) { return f.n; } },
    { title: "Candidate rank", key: function (f) { return f.r; }, num: true,
      cell: function (f) { return has(f.r) ? "#" + f.r : ""; } },
    { title: "Density", key: function (f) { return f.d; }, num: true, cell: function (f) { return pct(f.d); } },
    { title: "Mean activation", key: function (f) { return f.m; }, num: true, cell: function (f) { return num(f.m); } },
    { title: "Max activation", key: function (f) { return f.x; }, num: true, cell: function (f) { return num(f.x); } },
    { title: "Activations", cell: function (f) { return histogram(f, 80, 18, false); } }
  ];
  LABELS.forEach(function (label, j) {
    COLUMNS.push({ title: "q · " + label, key: assoc(j, "q"), num: true,
                   cell: function (f) { return qtext(assoc(j, "q")(f)); } });
    COLUMNS.push({ title: "effect · " + label, key: assoc(j, "e"), num: true,
                   cell: function (f) { var a = f.a[j]; return a && has(a.e) ? num(a.e) + " " + (a.en || "") : ""; } });
  });
  if (anyGenes) {
    COLUMNS.push({ title: "Top genes", cell: function (f) { return f.g.map(function (g) { return g[0]; }).join(", "); } });
  }
  COLUMNS.push({ title: "Description", cls: "desc", cell: function (f) { return f.desc || ""; } });

  // ---------------------------------------------------------------- state

  var state = { terms: [], column: 1, dir: 1, shown: PAGE, open: Object.create(null) };

  function matching() {
    var terms = state.terms;
    var list = terms.length === 0 ? FEATURES.slice() : FEATURES.filter(function (f) {
      for (var t = 0; t < terms.length; t++) if (f.s.indexOf(terms[t]) < 0) return false;
      return true;
    });
    var key = COLUMNS[state.column].key, dir = state.dir;
    list.sort(function (a, b) {  // missing values last whichever way; ties by feature order
      var x = key(a), y = key(b);
      if (!has(x) && !has(y)) return a.i - b.i;
      if (!has(x)) return 1;
      if (!has(y)) return -1;
      return x < y ? -dir : x > y ? dir : a.i - b.i;
    });
    return list;
  }

  // ---------------------------------------------------------------- drawing

  function histogram(f, w, h, axes) {
    var box = svg("svg", { "class": "hist", width: w, height: h + (axes ? 14 : 0), role: "img" });
    var title = svg("title", {});
    title.textContent = f.h.length ? f.n + ": activations of the " + (f.k || 0) + " rows where it fires, " +
      BINS + " bins from 0 to " + num(f.x) + " (log scale)" : f.n + ": no histogram";
    box.appendChild(title);
    if (!f.h.length) return box;
    var top = Math.log1p(Math.max.apply(null, f.h)) || 1, bw = w / f.h.length;
    f.h.forEach(function (c, b) {
      if (c <= 0) return;
      var bh = Math.max(1, h * Math.log1p(c) / top);
      box.appendChild(svg("rect", { x: (b * bw).toFixed(2), y: (h - bh).toFixed(2),
                                    width: Math.max(bw - 0.5, 0.5).toFixed(2), height: bh.toFixed(2) }));
    });
    box.appendChild(svg("line", { x1: 0, y1: h, x2: w, y2: h }));
    if (axes) {
      var lo = svg("text", { x: 0, y: h + 12 }); lo.textContent = "0";
      var hi = svg("text", { x: w, y: h + 12, "text-anchor": "end" }); hi.textContent = num(f.x);
      box.appendChild(lo); box.appendChild(hi);
    }
    return box;
  }

  function table(head, rows) {
    var t = el("table"), tr = el("tr");
    head.forEach(function (h) { tr.appendChild(el("th", null, h)); });
    t.appendChild(el("thead")).appendChild(tr);
    var body = t.appendChild(el("tbody"));
    rows.forEach(function (r) {
      var row = body.appendChild(el("tr"));
      r.forEach(function (v) { row.appendChild(el("td", null, v)); });
    });
    return t;
  }

  function section(box, title, content) {
    box.appendChild(el("h4", null, title));
    box.appendChild(content);
  }

  function details(f) {
    var box = el("div", "details");
    var head = f.n + (has(f.r) ? " — candidate #" + f.r + (f.rl ? " (" + f.rl + ")" : "") : "");
    box.appendChild(el("h3", null, head));
    box.appendChild(f.desc ? el("p", null, f.desc) : el("p", "none", "Not interpreted."));
    var dl = el("dl");
    [["Density", pct(f.d) + (has(f.k) ? " (" + f.k + " rows fire)" : "")],
     ["Mean activation", num(f.m)], ["Max activation", num(f.x)]].forEach(function (p) {
      dl.appendChild(el("dt", null, p[0])); dl.appendChild(el("dd", null, p[1] || "not known"));
    });
    box.appendChild(dl);
    if (f.h.length) section(box, "Activations where it fires (log scale)", histogram(f, 320, 80, true));
    var assocRows = [];
    f.a.forEach(function (a, j) {
      if (!a) return;
      var ci = has(a.lo) && has(a.hi) ? num(a.lo) + " to " + num(a.hi) : "";
      assocRows.push([LABELS[j], a.t || "", a.c || "", (a.en || "") + " " + num(a.e), ci, qtext(a.q)]);
    });
    section(box, "Best association per label", assocRows.length ?
      table(["Label", "Test", "Contrast", "Effect", "95% CI", "q"], assocRows) : el("p", "none", "None tested."));
    if (f.g.length) {
      section(box, "Top genes / tokens (mean activation over their rows)",
              table(["Gene", "Mean activation"], f.g.map(function (g) { return [g[0], num(g[1])]; })));
    }
    if (f.mo.length) {
      section(box, "Motifs", table(["Motif", "JASPAR", "Consensus", "q"], f.mo.map(function (m) {
        return [m.name || "", m.id || "", m.consensus || "", qtext(m.q)];
      })));
    }
    if (f.ex.length) {
      var cols = ROWS.columns, pos = ROWS.position;
      var head2 = ["Activation"].concat(pos ? ["Row"] : []).concat(cols);
      section(box, "Top examples (subjects by pseudonym)", table(head2, f.ex.map(function (e) {
        return [num(e[1])].concat(pos ? [String(pos[e[0]])] : []).concat(ROWS.values[e[0]] || []);
      })));
    }
    if (f.fig.length) {
      var figs = el("div", "figures");
      f.fig.forEach(function (fig) {
        if (typeof fig[1] !== "string" || fig[1].indexOf(PNG) !== 0) return;  // only inlined PNGs
        var figure = figs.appendChild(el("figure")), img = el("img");
        img.alt = f.n + ": " + fig[0];
        img.src = fig[1];
        figure.appendChild(img);
        figure.appendChild(el("figcaption", null, fig[0]));
      });
      section(box, "Figures", figs);
    }
    return box;
  }

  function detailRow(f) {
    var tr = el("tr", "details-row"), td = el("td");
    td.colSpan = COLUMNS.length;
    td.appendChild(details(f));
    tr.appendChild(td);
    return tr;
  }

  function toggle(tr, f) {
    var open = !state.open[f.i];
    state.open[f.i] = open;
    tr.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) tr.parentNode.insertBefore(detailRow(f), tr.nextSibling);
    else if (tr.nextSibling && tr.nextSibling.className === "details-row") tr.parentNode.removeChild(tr.nextSibling);
  }

  function featureRow(f) {
    var tr = el("tr", "feature");
    tr.tabIndex = 0;
    tr.setAttribute("aria-expanded", state.open[f.i] ? "true" : "false");
    COLUMNS.forEach(function (c) {
      var v = c.cell(f), td = el("td", c.num ? "num" : c.cls || null);
      if (v instanceof Node) td.appendChild(v); else td.textContent = v;
      tr.appendChild(td);
    });
    if (has(f.r)) tr.cells[0].className = "candidate";
    tr.addEventListener("click", function () { toggle(tr, f); });
    tr.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); toggle(tr, f); }
    });
    return tr;
  }

  function header() {
    var thead = TABLE.tHead, tr = el("tr");
    clear(thead);
    COLUMNS.forEach(function (c, j) {
      var th = el("th");
      th.scope = "col";
      if (c.key) {
        var b = th.appendChild(el("button", null, c.title));
        b.type = "button";
        b.title = "Sort by " + c.title;
        if (state.column === j) th.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
        b.addEventListener("click", function () {
          if (state.column === j) state.dir = -state.dir; else { state.column = j; state.dir = 1; }
          state.shown = PAGE;
          header();
          render();
        });
      } else {
        th.textContent = c.title;
      }
      tr.appendChild(th);
    });
    thead.appendChild(tr);
  }

  function render() {
    var list = matching(), body = TABLE.tBodies[0], n = Math.min(state.shown, list.length);
    clear(body);
    var frag = document.createDocumentFragment();
    for (var i = 0; i < n; i++) {
      frag.appendChild(featureRow(list[i]));
      if (state.open[list[i].i]) frag.appendChild(detailRow(list[i]));
    }
    body.appendChild(frag);
    COUNT.textContent = (state.terms.length ? list.length + " of " + FEATURES.length + " features match"
                                             : FEATURES.length + " features") +
      (n < list.length ? "; showing the first " + n : "");
    MORE.hidden = n >= list.length;
    MORE.textContent = "Show " + Math.min(PAGE, list.length - n) + " more (" + n + " of " + list.length + " shown)";
  }

  // ---------------------------------------------------------------- search and the address

  function fromHash() {
    var q = "";
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      if (part.indexOf("q=") !== 0) return;
      try { q = decodeURIComponent(part.slice(2).replace(/\+/g, " ")); } catch (e) { q = part.slice(2); }
    });
    return q;
  }

  function search(text, remember) {
    state.terms = text.toLowerCase().split(/\s+/).filter(function (t) { return t.length > 0; });
    state.shown = PAGE;
    if (remember) {  // the address then links to this search
      try { history.replaceState(null, "", text ? "#q=" + encodeURIComponent(text) : location.pathname + location.search); }
      catch (e) { /* some browsers refuse for file: pages; the search still works */ }
    }
    render();
  }

  var timer = null;
  SEARCH.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { search(SEARCH.value, true); }, 150);
  });
  window.addEventListener("hashchange", function () { SEARCH.value = fromHash(); search(SEARCH.value, false); });
  MORE.addEventListener("click", function () { state.shown += PAGE; render(); });

  SEARCH.value = fromHash();
  header();
  search(SEARCH.value, false);
})();
