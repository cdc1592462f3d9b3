// Shared chart helpers: colours, EMA smoothing, lazy mounting, metric grouping.
(function () {
  "use strict";
  // 20 distinguishable colours (Tableau 20 order), one per run.
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"];
  const HEIGHT = 240;

  function color(i) { return PALETTE[i % PALETTE.length]; }

  // TensorBoard-style EMA with bias correction; nulls pass through.
  function ema(values, weight) {
    if (!weight) return values.slice();
    const out = new Array(values.length);
    let last = 0, n = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || v === undefined || !isFinite(v)) { out[i] = null; continue; }
      last = last * weight + (1 - weight) * v;
      n++;
      out[i] = last / (1 - Math.pow(weight, n));
    }
    return out;
  }

  // Mount a chart only once its box scrolls into view.
  function lazyMount(el, mount) {
    if (!("IntersectionObserver" in window)) { mount(); return; }
    const io = new IntersectionObserver(function (entries) {
      for (const e of entries) {
        if (e.isIntersecting) { io.disconnect(); mount(); return; }
      }
    }, { rootMargin: "100px" });
    io.observe(el);
  }

  // Where a metric's chart goes: the server's order (loss first, timings last), others between.
  function rank(name, order) {
    const base = name.startsWith("val_") ? name.slice(4) : name;
    const i = (order || []).indexOf(base);
    return i >= 0 ? i : (order || []).indexOf("*");
  }

  function ordered(names, order) {
    return names.slice().sort(function (a, b) { return rank(a, order) - rank(b, order); });
  }

  // Ticks in at most 4 significant digits (uPlot's defaults can round 0.0015 to 0.002).
  function tickValues(u, vals) {
    return vals.map(function (v) { return v === null ? "" : Number(v.toPrecision(4)).toString(); });
  }

  // Whole-number steps for an epoch axis.
  const EPOCH_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

  // loss + val_loss in one chart, accuracy + val_accuracy in another, lr alone...
  function groups(names) {
    const byBase = new Map();
    for (const n of names) {
      const base = n.startsWith("val_") ? n.slice(4) : n;
      if (!byBase.has(base)) byBase.set(base, []);
      byBase.get(base).push(n);
    }
    return Array.from(byBase, function ([base, keys]) {
      keys.sort(function (a, b) { return a.length - b.length; });
      return { title: base, keys: keys };
    });
  }

  function metricNames(rows) {
    const seen = [];
    for (const r of rows) {
      for (const k in r) {
        if (k !== "epoch" && k !== "t" && typeof r[k] === "number" && seen.indexOf(k) < 0) seen.push(k);
      }
    }
    return seen;
  }

  // A titled box for one chart, appended to parent.
  function box(parent, title) {
    const fig = document.createElement("figure");
    fig.className = "chart";
    fig.dataset.metric = title;
    const cap = document.createElement("figcaption");
    cap.textContent = title;
    const area = document.createElement("div");
    area.className = "plot";
    fig.append(cap, area);
    parent.append(fig);
    return { fig: fig, area: area };
  }

  function width(el) { return Math.max(260, Math.floor(el.clientWidth || 600)); }

  // Charts resize with the window.
  const live = [];
  window.addEventListener("resize", function () {
    for (const c of live) { if (c.plot) c.plot.setSize({ width: width(c.area), height: HEIGHT }); }
  });

  window.TraineryCharts = { color: color, ema: ema, lazyMount: lazyMount, groups: groups,
    ordered: ordered, tickValues: tickValues, EPOCH_INCRS: EPOCH_INCRS,
    metricNames: metricNames, box: box, width: width, HEIGHT: HEIGHT, live: live };
})();
