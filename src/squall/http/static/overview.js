// #/ : totals, throughput and failure charts, queues, workers in brief, recent failures;
// redrawn from each `status` event of the stream (about once a second).
import { get } from "./api.js";
import {
  badge, fill, fmtAgo, fmtBytes, fmtCount, fmtRate, fmtSeconds, h, table, taskLink,
} from "./dom.js";

/** The totals shown as cards: [key in status.totals, label]. */
const CARDS = [
  ["submitted", "Submitted"],
  ["completed", "Completed"],
  ["succeeded", "Succeeded"],
  ["failed", "Failed"],
  ["cancelled", "Cancelled"],
  ["redelivered", "Redelivered"],
  ["queued", "Queued"],
  ["running", "Running"],
  ["workers", "Workers"],
];

/** A uPlot time chart; ``series``: [label, colour, scale] (scale "%" gets its own axis,
 * 0 to 100, on the right). */
function chart(container, title, series, data) {
  const width = Math.max(300, container.clientWidth - 24);
  const percent = series.some(([, , scale]) => scale === "%");
  const options = {
    title,
    width,
    height: 220,
    scales: {
      x: { time: true },
      y: { range: (_, min, max) => [0, Math.max(1, max * 1.1)] },
      "%": { range: [0, 100] },
    },
    axes: [
      {},
      { size: 56 },
      percent ? { scale: "%", side: 1, size: 48, grid: { show: false }, values: (_, ticks) => ticks.map((t) => `${t}%`) } : null,
    ].filter(Boolean),
    series: [
      {},
      ...series.map(([label, stroke, scale = "y"]) => ({ label, stroke, scale, width: 2 })),
    ],
  };
  return new window.uPlot(options, data, container);
}

export function overview(main, { live, history }) {
  const cards = h("section", { class: "cards", testid: "totals" });
  const throughput = h("div", { class: "chart", testid: "chart-throughput" });
  const failures = h("div", { class: "chart", testid: "chart-failures" });
  const queues = h("div", { testid: "queues" });
  const fleet = h("div", { testid: "workers-summary" });
  const router = h("div", { class: "router", testid: "router" });
  const recent = h("div", { testid: "recent-failures" });
  fill(
    main,
    h("h1", {}, "Overview"),
    cards,
    h("section", { class: "charts" }, throughput, failures),
    h(
      "section",
      { class: "columns" },
      h("div", {}, h("h2", {}, "Queues"), queues),
      h("div", {}, h("h2", {}, "Workers"), fleet, h("h2", {}, "Router"), router),
    ),
    h("h2", {}, "Recent failures"),
    recent,
  );

  const values = {};
  for (const [key, label] of CARDS) {
    values[key] = h("div", { class: "value", testid: `total-${key}`, dataset: { value: 0 } }, "—");
    cards.append(h("div", { class: `card card-${key}` }, h("div", { class: "label" }, label), values[key]));
  }
  const rates = h("div", { class: "value small", testid: "rates" }, "—");
  cards.append(h("div", { class: "card" }, h("div", { class: "label" }, "Rate in / out"), rates));

  const charts = [];
  if (window.uPlot) {
    charts.push([
      chart(throughput, "Throughput (tasks/s)", [["completed/s", "#2563eb"], ["submitted/s", "#9ca3af"]],
        [history.time, history.completed, history.submitted]),
      () => [history.time, history.completed, history.submitted],
    ]);
    charts.push([
      chart(failures, "Failures", [["failed/s", "#dc2626"], ["% of completed", "#f59e0b", "%"]],
        [history.time, history.failed, history.failedShare]),
      () => [history.time, history.failed, history.failedShare],
    ]);
  } else {
    fill(throughput, "the chart library did not load");
  }
  const resize = () => {
    for (const [plot] of charts) plot.setSize({ width: Math.max(300, throughput.clientWidth - 24), height: 220 });
  };
  window.addEventListener("resize", resize);

  function render(status) {
    const totals = status.totals ?? {};
    for (const [key] of CARDS) {  // changed in place: a figure being read is never replaced
      const value = totals[key] ?? 0;
      values[key].dataset.value = value;
      values[key].textContent = fmtCount(value);
    }
    rates.textContent = `${fmtRate(status.rates?.in)} / ${fmtRate(status.rates?.out)}`;
    for (const [plot, data] of charts) plot.setData(data());
    renderQueues(queues, status.queues ?? {});
    renderFleet(fleet, status);
    const info = status.router ?? {};
    fill(
      router,
      h("span", {}, `pid ${info.pid ?? "—"}`),
      h("span", {}, `up ${fmtSeconds(info.uptime)}`),
      h("span", {}, `RSS ${fmtBytes(info.rss)}`),
      h("span", {}, `CPU ${fmtSeconds(info.cpu_seconds)}`),
      info.endpoint ? h("span", { class: "mono" }, info.endpoint) : null,
      h("span", {}, `history ${fmtCount(status.history?.kept)} of ${fmtCount(status.history?.max)}`),
    );
    renderFailures(recent, status.recent_failures ?? []);
  }

  if (live.lastStatus) render(live.lastStatus);
  else get("/v1/status").then(render).catch(() => {});
  const off = live.on("status", render);
  return () => {
    off();
    window.removeEventListener("resize", resize);
    for (const [plot] of charts) plot.destroy();
  };
}

function renderQueues(element, queues) {
  const names = Object.keys(queues).sort();
  if (!names.length) {
    fill(element, h("p", { class: "empty" }, "No queue has seen a task yet."));
    return;
  }
  const rows = names.map((name) => {
    const q = queues[name];
    return h(
      "tr",
      { testid: `queue-${name}` },
      h("td", {}, name),
      h("td", { class: "num", testid: `queue-depth-${name}` }, fmtCount(q.queued)),
      h("td", { class: "num" }, fmtCount(q.running)),
      h("td", { class: "num" }, fmtCount(q.scheduled)),
      h("td", { class: "num" }, fmtCount(q.workers)),
      h("td", { class: "num" }, fmtRate(q.rate_in)),
      h("td", { class: "num" }, fmtRate(q.rate_out)),
      h("td", { class: "num" }, q.oldest_wait == null ? "—" : fmtSeconds(q.oldest_wait)),
      h("td", { class: "num" }, q.limit ? JSON.stringify(q.limit) : ""),
    );
  });
  fill(
    element,
    table(
      ["Queue", "Queued", "Running", "Scheduled", "Workers", "In", "Out", "Oldest wait", "Limit"],
      rows,
      { testid: "queues-table" },
    ),
  );
}

function renderFleet(element, status) {
  const workers = status.workers ?? [];
  const gone = status.gone_workers ?? [];
  const count = (state) => workers.filter((w) => w.state === state).length;
  const capacity = workers.reduce((sum, w) => sum + (w.capacity ?? 0), 0);
  const running = workers.reduce((sum, w) => sum + (w.running ?? 0), 0);
  const hosts = new Set(workers.map((w) => w.host)).size;
  fill(
    element,
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Up"), h("dd", { testid: "workers-up" }, count("up")),
      h("dt", {}, "Blocked"), h("dd", { testid: "workers-blocked" }, count("blocked")),
      h("dt", {}, "Draining"), h("dd", { testid: "workers-draining" }, count("draining")),
      h("dt", {}, "Lost lately"),
      h("dd", { testid: "workers-lost" }, gone.filter((w) => w.state === "lost").length),
      h("dt", {}, "Hosts"), h("dd", {}, hosts),
      h("dt", {}, "Slots busy"), h("dd", {}, `${fmtCount(running)} of ${fmtCount(capacity)}`),
    ),
    h("a", { href: "#/workers" }, "All workers →"),
  );
}

function renderFailures(element, failures) {
  if (!failures.length) {
    fill(element, h("p", { class: "empty" }, "No failures."));
    return;
  }
  const rows = failures.slice(0, 10).map((task) =>
    h(
      "tr",
      { testid: "recent-failure" },
      h("td", {}, taskLink(task.id)),
      h("td", {}, task.name || "—"),
      h("td", {}, task.queue),
      h("td", {}, badge(task.state)),
      h("td", { class: "error-text" }, [task.error_type, task.error_message].filter(Boolean).join(": ")),
      h("td", {}, fmtAgo(task.finished)),
    ),
  );
  fill(element, table(["Task", "Function", "Queue", "State", "Error", "When"], rows));
}
