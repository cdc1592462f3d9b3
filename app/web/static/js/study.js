// The study page: the best objective so far over time, and the objective against each
// searched parameter (one small scatter per parameter; choices on a categorical axis).
(function () {
  "use strict";
  const C = window.TraineryCharts;
  const data = JSON.parse(document.getElementById("study-data").textContent);
  const charts = [];

  function mount(c, opts, cols) {
    c.plot = new uPlot(Object.assign({ width: C.width(c.area), height: C.HEIGHT,
      legend: { show: false } }, opts), cols, c.area);
    c.fig.dataset.points = String(cols[0].length);
    c.area.dataset.mounted = "1";
  }

  function chart(parent, title, build) {
    const b = C.box(parent, title);
    const c = { area: b.area, fig: b.fig, plot: null };
    charts.push(c);
    C.live.push(c);
    C.lazyMount(b.fig, function () { build(c); });
  }

  // Best so far: a step up (or down) at each improvement, held to the last one.
  if (data.best.length) {
    chart(document.getElementById("best-chart"), "best " + data.metric, function (c) {
      const t = data.best.map(function (p) { return p.t; });
      const v = data.best.map(function (p) { return p.value; });
      mount(c, {
        series: [{ label: "seconds" }, { label: "best " + data.metric, stroke: C.color(0), width: 2,
          paths: uPlot.paths.stepped({ align: 1 }), points: { show: true, size: 6 } }],
        scales: { x: { time: false } },
        axes: [{ label: "seconds since the study started" }, { values: C.tickValues, size: 60 }],
      }, [t, v]);
    });
  }

  // A choice's values go on an axis of their own indices, labelled with the values.
  function label(v) { return typeof v === "string" ? v : JSON.stringify(v); }

  for (const param of data.params) {
    chart(document.getElementById("param-charts"), param.path, function (c) {
      const choices = param.type === "choice" ? param.choices.map(label) : null;
      const pts = param.points.map(function (p) {
        return [choices ? choices.indexOf(label(p[0])) : p[0], p[1]];
      }).filter(function (p) { return typeof p[0] === "number" && p[0] >= 0; });
      pts.sort(function (a, b) { return a[0] - b[0]; }); // uPlot wants x ascending
      const logX = param.type === "loguniform" || param.log;
      const xAxis = choices
        ? { label: param.path, incrs: [1], values: function (u, vals) {
          return vals.map(function (v) { return Number.isInteger(v) && choices[v] !== undefined ? choices[v] : ""; });
        } }
        : { label: param.path, values: C.tickValues };
      const xScale = choices ? { time: false, range: [-0.5, choices.length - 0.5] }
        : { time: false, distr: logX ? 3 : 1 };
      mount(c, {
        series: [{ label: param.path }, { label: data.metric, stroke: C.color(1),
          paths: function () { return null; }, points: { show: true, size: 8, fill: C.color(1) } }],
        scales: { x: xScale },
        axes: [xAxis, { label: data.metric, values: C.tickValues, size: 60 }],
        cursor: { points: { show: false } },
      }, [pts.map(function (p) { return p[0]; }), pts.map(function (p) { return p[1]; })]);
    });
  }
  window.traineryChartsReady = true;
})();
