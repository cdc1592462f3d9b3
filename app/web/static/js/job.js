// The job page: epoch curves that grow as the SSE stream reports metrics, and a live event log.
(function () {
  "use strict";
  const C = window.TraineryCharts;
  const data = JSON.parse(document.getElementById("job-data").textContent);
  const rows = new Map();
  for (const r of data.rows) rows.set(r.epoch, r);
  const charts = new Map(); // group title -> {keys, area, plot}
  const parent = document.getElementById("charts");
  const TERMINAL = ["succeeded", "failed", "cancelled"];

  function sortedRows() {
    return Array.from(rows.values()).sort(function (a, b) { return a.epoch - b.epoch; });
  }

  function table(keys) {
    const rs = sortedRows();
    const cols = [rs.map(function (r) { return r.epoch; })];
    for (const k of keys) cols.push(rs.map(function (r) { return typeof r[k] === "number" ? r[k] : null; }));
    return cols;
  }

  function mount(c) {
    const series = [{ label: "epoch" }];
    c.keys.forEach(function (k, i) {
      series.push({ label: k, stroke: C.color(i), width: 2, spanGaps: true,
        points: { show: true, size: 5 } });
    });
    c.plot = new uPlot({ width: C.width(c.area), height: C.HEIGHT, series: series,
      scales: { x: { time: false } },
      axes: [{ label: "epoch", incrs: C.EPOCH_INCRS }, { values: C.tickValues, size: 60 }],
      legend: { live: true } }, table(c.keys), c.area);
    c.area.dataset.mounted = "1";
    performance.mark("trainery-chart-mounted"); // bench/web_charts.py reads these
  }

  function refresh() {
    const names = C.ordered(C.metricNames(sortedRows()), data.order);
    document.getElementById("curves-empty").hidden = names.length > 0;
    for (const g of C.groups(names)) {
      let c = charts.get(g.title);
      if (c && c.keys.join() !== g.keys.join()) { // a new series (e.g. val_*) appeared
        if (c.plot) c.plot.destroy();
        c.fig.remove();
        c = null;
      }
      if (!c) {
        const b = C.box(parent, g.title);
        c = { keys: g.keys, area: b.area, fig: b.fig, plot: null };
        charts.set(g.title, c);
        C.live.push(c);
        const cc = c;
        C.lazyMount(b.fig, function () { mount(cc); });
      } else if (c.plot) {
        c.plot.setData(table(c.keys));
      }
      c.fig.dataset.points = String(rows.size);
    }
  }

  function logEvent(e) {
    const li = document.createElement("li");
    li.className = "event event-" + e.kind;
    const time = document.createElement("time");
    time.textContent = new Date(e.ts).toISOString().replace("T", " ").slice(0, 19) + " UTC";
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = e.kind;
    li.append(time, " ", kind, " ", e.message);
    document.getElementById("events").append(li);
  }

  function setStatus(status) {
    const span = document.querySelector("#job-status .status");
    span.textContent = status;
    span.className = "status status-" + status;
  }

  refresh();
  if (!window.EventSource) return;
  const es = new EventSource("/v1/jobs/" + encodeURIComponent(data.id) + "/events?after=" + data.after);
  function onEvent(ev) {
    const e = JSON.parse(ev.data);
    logEvent(e);
    if (e.kind === "metrics" && e.data && typeof e.data.epoch === "number") {
      const prev = rows.get(e.data.epoch) || {};
      rows.set(e.data.epoch, Object.assign({ t: prev.t }, e.data));
      const p = document.getElementById("job-progress");
      p.value = e.data.epoch;
      document.getElementById("job-epochs").textContent = "epoch " + e.data.epoch + "/" + p.max;
      refresh();
      document.dispatchEvent(new CustomEvent("trainery:metrics", { detail: e.data }));
    }
    if (e.kind === "state" && e.to_status) setStatus(e.to_status);
  }
  for (const kind of ["state", "metrics", "log", "checkpoint", "dataset"]) es.addEventListener(kind, onEvent);
  es.addEventListener("end", function () {
    es.close();
    // The job finished while the page was open: reload for the model card, downloads and actions.
    if (!data.terminal) window.location.reload();
  });
  es.onerror = function () {
    if (TERMINAL.indexOf(data.status) >= 0) es.close();
  };
})();
