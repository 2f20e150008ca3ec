// #/workers : every connected worker process, and those lately lost or drained (shown as
// such, greyed); Drain sends a worker nothing new. Redrawn from each `status` event.
import { get, post } from "./api.js";
import { badge, fill, fmtAgo, fmtBytes, fmtCount, fmtSeconds, h, notify, table } from "./dom.js";

export function workers(main, { live }) {
  const body = h("div", { testid: "workers" });
  fill(main, h("h1", {}, "Workers"), body);

  async function drain(pid) {
    if (!window.confirm(`Drain worker ${pid}? It takes no new task; what it runs finishes.`)) return;
    try {
      await post(`/v1/workers/${pid}/drain`);
      notify(`Worker ${pid} drains.`, "info");
      render(await get("/v1/status"));
    } catch (failure) {
      notify(`Drain ${pid}: ${failure.message}`);
    }
  }

  function row(worker, gone) {
    const pid = worker.pid;
    const action = gone
      ? h("span", { class: "muted" }, `${worker.state} ${fmtAgo(worker.since)}`)
      : h(
          "button",
          {
            type: "button",
            testid: `drain-${pid}`,
            disabled: worker.state === "draining",
            onclick: () => drain(pid),
          },
          worker.state === "draining" ? "Draining" : "Drain",
        );
    return h(
      "tr",
      { testid: `worker-${pid}`, class: gone ? "gone" : "", dataset: { pid, state: worker.state } },
      h("td", { class: "mono" }, pid),
      h("td", {}, worker.host),
      h("td", {}, badge(worker.state, `worker-state-${pid}`)),
      h("td", {}, (worker.queues ?? []).join(", ")),
      h("td", {}, worker.group ?? ""),
      h("td", { class: "num" }, fmtCount(worker.running)),
      h("td", { class: "num" }, fmtCount(worker.capacity)),
      h("td", { class: "num" }, fmtCount(worker.done)),
      h("td", { class: "num" }, fmtBytes(worker.rss)),
      h("td", { class: "num" }, gone ? "—" : fmtSeconds(worker.last_heartbeat_age)),
      h("td", { class: "num" }, fmtSeconds(worker.up_for)),
      h("td", {}, action),
    );
  }

  function render(status) {
    const up = status.workers ?? [];
    const gone = status.gone_workers ?? [];
    if (!up.length && !gone.length) {
      fill(body, h("p", { class: "empty" }, "No worker is connected: start one with `squall worker --connect ...`."));
      return;
    }
    fill(
      body,
      h("p", { class: "muted", testid: "workers-count" }, `${up.length} connected, ${gone.length} gone lately`),
      table(
        ["PID", "Host", "State", "Queues", "Group", "Running", "Capacity", "Done", "RSS", "Heartbeat", "Up for", ""],
        [...up.map((w) => row(w, false)), ...gone.map((w) => row(w, true))],
        { testid: "workers-table" },
      ),
    );
  }

  if (live.lastStatus) render(live.lastStatus);
  get("/v1/status").then(render).catch((failure) => notify(failure.message));
  return live.on("status", render);
}
