/* bpfprof flame graph viewer. Inlined into each page: no network, no libraries.
 *
 * The tree arrives as flat arrays in pre-order (see agent/tools/flamegraph/tree.py):
 * node i's subtree is [i, i + size[i]), so children are walked by skipping
 * subtrees and no per-node objects are ever made. Only frames at least one
 * pixel wide become elements; a run of narrower siblings becomes one striped
 * "merged" element, so the element count is bounded by the chart's pixels,
 * not by the profile's size.
 */
(function () {
  "use strict";
  var t0 = performance.now();
  var D = JSON.parse(document.getElementById("fg-data").textContent);
  var N = D.func.length;
  var K = D.types.length;
  var F = D.funcs;
  Object.keys(D.scaled).forEach(function (c) {
    var s = D.scaled[c], base = D.columns[s[0]];
    D.columns[c] = base.map(function (v) { return v * s[1]; });
  });
  var lineOf = new Map();
  for (var p = 0; p < D.lines.length; p += 2) lineOf.set(D.lines[p], D.lines[p + 1]);
  var ROW = 18;
  var end = new Int32Array(N);
  var parent = new Int32Array(N);
  (function () {
    var open = [];
    for (var i = 0; i < N; i++) {
      end[i] = i + D.size[i];
      while (open.length && end[open[open.length - 1]] <= i) open.pop();
      parent[i] = open.length ? open[open.length - 1] : -1;
      open.push(i);
    }
  })();
  var timings = (window.bpfprofTimings = { parseMs: performance.now() - t0 });

  var state = { type: D.defaultType, zoom: 0, flame: false, re: null };
  var chart = document.getElementById("fg-chart");
  var tip = document.getElementById("fg-tooltip");
  var escaped = new Array(D.names.length);
  var colours = {};
  var layout = []; // node per rendered element; -count for a merged run
  var mergedWidth = [];

  function col(c) { return D.columns[c]; }
  function share(c, i) { var v = col(c); return v[0] ? v[i] / v[0] : 0; }
  function shares(i) {
    // [before, after] shares of each profile's total for the current type.
    return D.diff ? [share(state.type, i), share(K + state.type, i)] : [0, share(state.type, i)];
  }
  // Widths are read for every child of every drawn frame: no allocation here.
  var wNew, wBase, wNewTotal, wBaseTotal;
  function setWeights() {
    wNew = col(D.diff ? K + state.type : state.type);
    wBase = col(state.type);
    wNewTotal = wNew[0] || 1;
    wBaseTotal = wBase[0] || 1;
  }
  function width(i) {
    return D.diff ? (wBase[i] / wBaseTotal + wNew[i] / wNewTotal) / 2 : wNew[i] / wNewTotal;
  }
  function depth(i) { var d = 0; while (i > 0) { i = parent[i]; d++; } return d; }
  function nameOf(i) { return F.name[D.func[i]]; }
  function label(i) { return D.names[nameOf(i)]; }
  function kindOf(i) { return F.kind[D.func[i]]; }
  function family(i) { return D.families[kindOf(i) >> 1]; }
  function inlined(i) { return (kindOf(i) & 1) === 1; }
  function lineAt(i) { var l = lineOf.get(i); return l === undefined ? F.line[D.func[i]] : l; }

  // A frame's label is its whole name or, cut with an ellipsis, at least its
  // first three characters; with less room the text is there (for find and
  // screen readers) but not drawn: "l" or "lo" says nothing (pprof and
  // speedscope leave such frames blank too). Measured once per name.
  var PAD_X = 7; // .f's padding and border, px
  var pen = document.createElement("canvas").getContext("2d");
  var roomNeeded = [], penReady = false;
  function labelRoom(n) {
    var r = roomNeeded[n];
    if (r === undefined) {
      if (!penReady) {
        var cs = getComputedStyle(chart);
        pen.font = cs.fontSize + " " + cs.fontFamily;
        penReady = true;
      }
      var name = D.names[n];
      r = roomNeeded[n] = Math.min(pen.measureText(name).width,
        pen.measureText(name.slice(0, 3) + "\u2026").width);
    }
    return r;
  }

  function esc(s) {
    return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function escName(i) {
    var n = nameOf(i);
    if (escaped[n] === undefined) escaped[n] = esc(D.names[n]);
    return escaped[n];
  }
  function nameHash(s) {
    var h = 0;
    for (var k = 0; k < s.length; k++) h = (Math.imul(h, 31) + s.charCodeAt(k)) >>> 0;
    return (h % 1000) / 1000;
  }
  function colour(i) {
    if (D.diff) return diffColour(i);
    var key = nameOf(i) + ":" + family(i);
    var c = colours[key];
    if (c === undefined) {
      var p = D.palette[family(i)], v = nameHash(label(i));
      c = colours[key] = "rgb(" + (p[0] + Math.floor(p[3] * v)) + "," +
        (p[1] + Math.floor(p[4] * v)) + "," + (p[2] + Math.floor(p[5] * v)) + ")";
    }
    return c;
  }
  var largestChange = [];
  function diffColour(i) {
    var t = state.type;
    if (largestChange[t] === undefined) {
      var m = 0;
      for (var j = 0; j < N; j++) m = Math.max(m, Math.abs(share(K + t, j) - share(t, j)));
      largestChange[t] = m;
    }
    var s = shares(i), d = s[1] - s[0], big = largestChange[t];
    var strength = big > 0 ? Math.min(1, Math.abs(d) / big) : 0;
    var other = 20 + Math.round(235 * (1 - Math.pow(strength, 0.7)));
    if (d > 0) return "rgb(255," + other + "," + other + ")";
    if (d < 0) return "rgb(" + other + "," + other + ",255)";
    return "rgb(255,255,255)";
  }

  // ---- layout and drawing -------------------------------------------------
  function render() {
    var t = performance.now();
    var W = chart.clientWidth, z = state.zoom, scale = W / (width(z) || 1);
    // Pass 1: lay out. Frames at least a pixel wide, and runs of narrower
    // siblings as one merged frame; nothing below a merged run is visited.
    var nodes = [], xs = [], ws = [], ds = [], maxDepth = 0;
    mergedWidth = [];
    function put(i, x, w, d) {
      nodes.push(i); xs.push(x); ws.push(w); ds.push(d);
      if (d > maxDepth) maxDepth = d;
    }
    var ancestors = [];
    for (var a = parent[z]; a >= 0; a = parent[a]) ancestors.unshift(a);
    ancestors.forEach(function (node, d) { put(node, 0, W, d); });
    var stack = [z, 0, ancestors.length];
    while (stack.length) {
      var d = stack.pop(), x = stack.pop(), i = stack.pop();
      put(i, x, width(i) * scale, d);
      var runX = 0, runW = 0, runN = 0;
      for (var j = i + 1; j < end[i]; j = end[j]) {
        var w = width(j) * scale;
        if (w <= 0) continue;
        if (w < 1) {
          if (!runN) runX = x;
          runW += w; runN++;
        } else {
          if (runN && runW >= 1) { put(-runN, runX, runW, d + 1); mergedWidth.push(runW / scale); }
          runN = runW = 0;
          stack.push(j, x, d + 1);
        }
        x += w;
      }
      if (runN && runW >= 1) { put(-runN, runX, runW, d + 1); mergedWidth.push(runW / scale); }
    }
    // Pass 2: one string, one innerHTML: the cheapest way to make thousands of elements.
    var html = new Array(nodes.length), matched = state.re && nameMatches(state.re), m = 0;
    for (var k = 0; k < nodes.length; k++) {
      var n = nodes[k], top = (state.flame ? maxDepth - ds[k] : ds[k]) * ROW;
      var pos = '" style="left:' + xs[k].toFixed(1) + "px;width:" + ws[k].toFixed(1) + "px;top:" + top + "px";
      if (n < 0) {
        html[k] = '<div class="f merged" data-k="' + k + '" data-m="' + (m++) + pos +
          '" aria-label="' + -n + ' frames narrower than a pixel"></div>';
      } else {
        var cls = (k < ancestors.length ? " anc" : "") + (matched && matched[nameOf(n)] ? " match" : "") +
          (ws[k] - PAD_X < labelRoom(nameOf(n)) ? " nl" : "");
        html[k] = '<div class="f' + cls + '" data-k="' + k + pos + ";background:" + colour(n) + '">' +
          escName(n) + "</div>";
      }
    }
    layout = nodes;
    chart.innerHTML = html.join("");
    chart.style.height = (maxDepth + 1) * ROW + "px";
    highlight(true);
    document.title = z ? label(z) + " \u2014 " + D.title : D.title;
    document.getElementById("fg-zoomed").textContent = z ? "zoomed into " + label(z) : "";
    document.getElementById("fg-reset").disabled = z === 0;
    document.getElementById("fg-summary").textContent = "Total: " +
      (D.diff ? "before " + fmt(col(state.type)[0]) + ", after " + fmt(col(K + state.type)[0])
        : fmt(col(state.type)[0]));
    timings.lastRenderMs = performance.now() - t;
    timings.frames = nodes.length;
    if (timings.firstRenderMs === undefined) timings.firstRenderMs = timings.lastRenderMs;
  }

  // ---- values and units (as pprof prints them) ----------------------------
  var TIME = [["ns", 1], ["us", 1e3], ["ms", 1e6], ["s", 1e9], ["hrs", 3600e9]];
  var BYTES = [["B", 1], ["kB", 1024], ["MB", 1048576], ["GB", 1073741824], ["TB", 1099511627776]];
  var UNITS = { nanoseconds: [TIME, 1], microseconds: [TIME, 1e3], milliseconds: [TIME, 1e6],
    seconds: [TIME, 1e9], bytes: [BYTES, 1] };
  function fmt(v) {
    var type = D.types[state.type], u = UNITS[type[1].toLowerCase()];
    if (!u) return v.toLocaleString("en-US") + (type[1] === "count" ? " " + type[0] : " " + type[1]);
    var m = Math.abs(v) * u[1], n = v, suffix = "";
    u[0].forEach(function (s) { if (m >= s[1]) { n = (v < 0 ? -m : m) / s[1]; suffix = s[0]; } });
    return (+n.toFixed(2)).toString() + suffix;
  }
  function pct(f) { return (f * 100).toFixed(2) + "%"; }

  // ---- search -------------------------------------------------------------
  function highlight(drawn) {
    // After a render the classes are already in place (drawn): only count.
    var re = state.re, matchedNames = re && nameMatches(re), count = 0, els = chart.children;
    for (var k = 0; k < els.length; k++) {
      var i = layout[k], on = !!(matchedNames && i >= 0 && matchedNames[nameOf(i)]);
      if (!drawn) els[k].classList.toggle("match", on);
      if (on) count++;
    }
    chart.setAttribute("data-highlighted", count);
    var out = document.getElementById("fg-matched");
    if (!re) { out.textContent = ""; return; }
    // The share of the zoomed frame spent in matching functions: a match
    // below another match is already counted, as flamegraph.pl does.
    var z = state.zoom, sum = 0;
    for (var i = z; i < end[z];) {
      if (matchedNames[nameOf(i)]) { sum += width(i); i = end[i]; } else i++;
    }
    out.textContent = "Matched: " + pct(sum / (width(z) || 1)) + " (" + count + " frames highlighted)";
  }
  var matchCache = { re: null, flags: null };
  function nameMatches(re) {
    if (matchCache.re !== re) {
      var flags = new Uint8Array(D.names.length);
      for (var n = 0; n < D.names.length; n++) flags[n] = re.test(D.names[n]) ? 1 : 0;
      matchCache = { re: re, flags: flags };
    }
    return matchCache.flags;
  }
  function setSearch(text) {
    if (!text) state.re = null;
    else {
      try { state.re = new RegExp(text, /[A-Z]/.test(text) ? "" : "i"); }
      catch (e) { state.re = new RegExp(text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "i"); }
    }
    highlight();
  }

  // ---- tooltip --------------------------------------------------------------
  function row(k, v) { return "<tr><td>" + k + "</td><td>" + v + "</td></tr>"; }
  function selfShares(i) {
    var s = shares(i);
    for (var j = i + 1; j < end[i]; j = end[j]) { var c = shares(j); s[0] -= c[0]; s[1] -= c[1]; }
    return s;
  }
  function tooltipHtml(k) {
    var i = layout[k];
    if (i < 0) {
      return "<b>" + -i + " frames narrower than a pixel</b><table>" +
        row("Total", pct(mergedWidth[+chart.children[k].getAttribute("data-m")] / (width(state.zoom) || 1)) +
          " of the view") + "</table>";
    }
    var where = D.files[F.file[D.func[i]]];
    if (where && lineAt(i) > 0) where += ":" + lineAt(i);
    var kind = D.kinds[kindOf(i) >> 1] + (inlined(i) ? ", inlined" : "");
    var head = "<b>" + escName(i) + "</b><br>" + esc(kind) + (where ? "<br>" + esc(where) : "");
    var s = shares(i), self = selfShares(i), zw = width(state.zoom) || 1;
    if (D.diff) {
      var b = col(state.type)[i], a = col(K + state.type)[i];
      return head + "<table>" + row("Before", pct(s[0]) + " (" + fmt(b) + "), self " + pct(self[0])) +
        row("After", pct(s[1]) + " (" + fmt(a) + "), self " + pct(self[1])) +
        row("Change", ((s[1] - s[0]) * 100 >= 0 ? "+" : "") + ((s[1] - s[0]) * 100).toFixed(2) +
          " points") + "</table>";
    }
    var v = col(state.type), selfV = v[i];
    for (var j = i + 1; j < end[i]; j = end[j]) selfV -= v[j];
    var ofZoom = state.zoom ? ", " + pct(s[1] / zw) + " of the view" : "";
    return head + "<table>" + row("Total", fmt(v[i]) + " (" + pct(s[1]) + ofZoom + ")") +
      row("Self", fmt(selfV) + " (" + pct(self[1]) + ")") + "</table>";
  }
  chart.addEventListener("mousemove", function (e) {
    var el = e.target.closest(".f");
    if (!el) { tip.hidden = true; return; }
    tip.innerHTML = tooltipHtml(+el.getAttribute("data-k"));
    tip.hidden = false;
    var x = e.clientX + 14, y = e.clientY + 14;
    if (x + tip.offsetWidth > window.innerWidth) x = Math.max(0, e.clientX - tip.offsetWidth - 14);
    if (y + tip.offsetHeight > window.innerHeight) y = Math.max(0, e.clientY - tip.offsetHeight - 14);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  });
  chart.addEventListener("mouseleave", function () { tip.hidden = true; });

  // ---- zoom, kept in the URL so the browser's Back button zooms out ---------
  function zoomTo(i) {
    if (i === state.zoom) return;
    try {
      history.pushState(null, "", i > 0 ? "#zoom=" + i : "#");
    } catch (e) { /* some embedders forbid history: zoom without it */ }
    state.zoom = i;
    render();
  }
  function fromHash() {
    var m = /zoom=(\d+)/.exec(location.hash), i = m ? +m[1] : 0;
    i = i > 0 && i < N && width(i) > 0 ? i : 0;
    if (i !== state.zoom || !layout.length) { state.zoom = i; render(); }
  }
  chart.addEventListener("click", function (e) {
    var el = e.target.closest(".f");
    if (!el) return;
    var i = layout[+el.getAttribute("data-k")];
    if (i >= 0) zoomTo(i);
  });
  window.addEventListener("popstate", fromHash);
  window.addEventListener("hashchange", fromHash);

  // ---- controls ---------------------------------------------------------------
  function setUp() {
    var select = document.getElementById("fg-type");
    D.types.forEach(function (type, t) {
      var o = document.createElement("option");
      o.value = t;
      o.textContent = type[0] + " (" + type[1] + ")";
      select.appendChild(o);
    });
    select.value = state.type;
    select.disabled = K < 2;
    select.addEventListener("change", function () {
      state.type = +select.value;
      setWeights();
      if (width(state.zoom) <= 0) state.zoom = 0;
      render();
    });
    var orient = document.getElementById("fg-orient");
    orient.addEventListener("click", function () {
      state.flame = !state.flame;
      orient.textContent = state.flame ? "Icicle (root at top)" : "Flame (root at bottom)";
      orient.setAttribute("aria-pressed", state.flame);
      render();
    });
    document.getElementById("fg-reset").addEventListener("click", function () { zoomTo(0); });
    var search = document.getElementById("fg-search");
    search.addEventListener("input", function () { setSearch(search.value); });
    document.addEventListener("keydown", function (e) {
      if (e.target === search) {
        if (e.key === "Escape") { search.value = ""; setSearch(""); }
        return;
      }
      if (e.key === "Escape") zoomTo(0);
      if (e.key === "/") { e.preventDefault(); search.focus(); }
    });
    var pending = 0;
    window.addEventListener("resize", function () {
      clearTimeout(pending);
      pending = setTimeout(render, 100);
    });
    var legend = document.getElementById("fg-legend");
    var items = D.diff ? [["grew", "rgb(255,60,60)"], ["shrank", "rgb(60,60,255)"], ["unchanged", "#fff"]]
      : D.legend.map(function (f) {
        var p = D.palette[f];
        return [f === "jit" ? "JIT" : f, "rgb(" + p[0] + "," + p[1] + "," + p[2] + ")"];
      });
    items.push(["narrower than a pixel, merged", "repeating-linear-gradient(135deg,#bbb 0 2px,#ddd 2px 4px)"]);
    items.push(["search match", "rgb(230,0,230)"]);
    legend.innerHTML = items.map(function (it) {
      return '<span style="--c:' + it[1] + '">' + esc(it[0]) + "</span>";
    }).join("");
  }

  if (D.empty) return;
  setWeights();
  setUp();
  fromHash();
  timings.loadMs = performance.now() - t0;
})();
