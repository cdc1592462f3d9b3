// The job page's step curves (training.log_every_steps): one chart per metric, the line the
// last value of each of the server's buckets of steps, a band from their min to their max
// (so a spike shows at any zoom). Refetched, downsampled, when an epoch's metrics arrive.
(function () {
  "use strict";
  const C = window.TraineryCharts;
  const data = JSON.parse(document.getElementById("job-data").textContent);
  const parent = document.getElementById("step-charts");
  if (!parent || !data.steps) return;
  const charts = new Map(); // metric -> {area, fig, plot}
  let series = data.steps;
  const url = "/v1/jobs/" + encodeURIComponent(data.id) + "/metrics?series=steps&max_points=" +
    data.step_points;

  function table(name) {
    const m = series.metrics[name];
    return [series.steps, m.last, m.min, m.max];
  }

  function mount(name, c) {
    const col = C.color(0);
    c.plot = new uPlot({ width: C.width(c.area), height: C.HEIGHT,
      series: [{ label: "step" },
        { label: name, stroke: col, width: 2, spanGaps: true },
        { label: "min", stroke: col, width: 0, alpha: 0.2, points: { show: false } },
        { label: "max", stroke: col, width: 0, alpha: 0.2, points: { show: false } }],
      bands: [{ series: [3, 2], fill: col + "33" }],
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { values: C.tickValues, size: 60 }],
      legend: { live: true } }, table(name), c.area);
    c.area.dataset.mounted = "1";
  }

  function refresh() {
    document.getElementById("steps-empty").hidden = series.steps.length > 0;
    for (const name of C.ordered(Object.keys(series.metrics), data.order)) {
      let c = charts.get(name);
      if (!c) {
        const b = C.box(parent, name);
        b.fig.dataset.metric = "steps/" + name; // the epoch chart of the same metric is "name"
        c = { area: b.area, fig: b.fig, plot: null };
        charts.set(name, c);
        C.live.push(c);
        const cc = c;
        C.lazyMount(b.fig, function () { mount(name, cc); });
      } else if (c.plot) {
        c.plot.setData(table(name));
      }
      c.fig.dataset.points = String(series.steps.length);
    }
  }

  let inFlight = false;
  function reload() {
    if (inFlight) return;
    inFlight = true;
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) { if (body) { series = body; refresh(); } })
      .catch(function () { /* the next epoch's event tries again */ })
      .finally(function () { inFlight = false; });
  }

  refresh();
  // job.js owns the event stream; it announces each epoch's metrics on the document.
  document.addEventListener("trainery:metrics", reload);
  // A long epoch writes its logged steps every 10 s (EpochRecorder.STEP_FLUSH_S): look as
  // often while the job lives (the page reloads itself when the job ends).
  if (!data.terminal) setInterval(reload, 10000);
})();
