// The compare page: one chart per metric, every run overlaid, EMA-smoothed over its faint raw line.
(function () {
  "use strict";
  const C = window.TraineryCharts;
  const data = JSON.parse(document.getElementById("compare-data").textContent);
  const parent = document.getElementById("charts");
  const smoothing = document.getElementById("smoothing");
  const smoothingOut = document.getElementById("smoothing-value");
  const logY = document.getElementById("log-y");
  const xAxis = document.getElementById("x-axis");
  const charts = [];

  for (const el of document.querySelectorAll(".swatch[data-run]")) {
    el.style.borderColor = C.color(Number(el.dataset.run));
  }

  // Align every run's (x, y) onto one x column (uPlot wants one), nulls where a run has no point.
  function table(metric) {
    const xKey = xAxis.value;
    const w = Number(smoothing.value);
    const xs = new Set();
    const perRun = data.runs.map(function (run) {
      const m = new Map();
      const xcol = run.columns[xKey], ycol = run.columns[metric];
      for (let i = 0; i < xcol.length; i++) {
        if (ycol[i] !== null) { m.set(xcol[i], ycol[i]); xs.add(xcol[i]); }
      }
      return m;
    });
    const x = Array.from(xs).sort(function (a, b) { return a - b; });
    const cols = [x];
    for (const m of perRun) {
      const raw = x.map(function (v) { return m.has(v) ? m.get(v) : null; });
      const present = raw.filter(function (v) { return v !== null; });
      const sm = C.ema(present, w);
      let j = 0;
      cols.push(raw); // drawn first: faint, behind the smoothed line
      cols.push(raw.map(function (v) { return v === null ? null : sm[j++]; }));
    }
    if (logY.checked) { // log scales cannot show zero or negatives
      for (let i = 1; i < cols.length; i++) cols[i] = cols[i].map(function (v) { return v !== null && v > 0 ? v : null; });
    }
    return cols;
  }

  function options(c) {
    const series = [{ label: xAxis.value === "t" ? "seconds" : "epoch" }];
    data.runs.forEach(function (run, i) {
      const col = C.color(i);
      series.push({ label: run.name + " (raw)", stroke: col + "40", width: 1, spanGaps: true,
        points: { show: false } });
      series.push({ label: run.name, stroke: col, width: 2, spanGaps: true, points: { show: false } });
    });
    return { width: C.width(c.area), height: C.HEIGHT, series: series,
      scales: { x: { time: false }, y: { distr: logY.checked ? 3 : 1 } },
      axes: [xAxis.value === "t" ? { label: "wall-clock (s since start)" }
        : { label: "epoch", incrs: C.EPOCH_INCRS }, { values: C.tickValues, size: 60 }],
      legend: { show: false }, cursor: { points: { show: false } } };
  }

  function mount(c) {
    if (c.plot) c.plot.destroy();
    const opts = options(c);
    c.plot = new uPlot(opts, table(c.metric), c.area);
    c.fig.dataset.series = String(opts.series.length - 1);
    performance.mark("trainery-chart-mounted"); // bench/web_charts.py reads these
    c.area.dataset.mounted = "1";
  }

  for (const metric of data.metrics) {
    const b = C.box(parent, metric);
    const c = { metric: metric, area: b.area, fig: b.fig, plot: null };
    charts.push(c);
    C.live.push(c);
    C.lazyMount(b.fig, function () { mount(c); });
  }

  smoothing.addEventListener("input", function () {
    smoothingOut.textContent = Number(smoothing.value).toFixed(2);
    for (const c of charts) if (c.plot) c.plot.setData(table(c.metric));
  });
  // A new scale or x axis needs new options: remount the mounted charts.
  function remount() { for (const c of charts) if (c.plot) mount(c); }
  logY.addEventListener("change", remount);
  xAxis.addEventListener("change", remount);
  window.traineryChartsReady = true;
})();
