// #/schedules : the router's periodic schedules, paused and resumed from here. Schedules are
// not in the status events: the list is asked again every few seconds while shown.
import { get, post } from "./api.js";
import { badge, fill, fmtTime, h, notify, table, taskLink } from "./dom.js";

const REFRESH_TICKS = 5;

export function schedules(main, { live }) {
  const body = h("div", { testid: "schedules" });
  fill(main, h("h1", {}, "Schedules"), body);

  async function toggle(schedule) {
    const op = schedule.paused ? "resume" : "pause";
    try {
      await post(`/v1/schedules/${encodeURIComponent(schedule.name)}/${op}`);
    } catch (failure) {
      notify(`${op} ${schedule.name}: ${failure.message}`);
    }
    await load();
  }

  async function load() {
    let answer;
    try {
      answer = await get("/v1/schedules");
    } catch (failure) {
      notify(failure.message);
      return;
    }
    const list = answer.schedules ?? [];
    if (!list.length) {
      fill(body, h("p", { class: "empty" }, "No schedule: register one with ex.schedule(name, fn, every=...) or cron=..."));
      return;
    }
    const rows = list.map((s) =>
      h(
        "tr",
        { testid: `schedule-${s.name}`, dataset: { paused: s.paused } },
        h("td", {}, s.name),
        h("td", { class: "mono" }, s.spec),
        h("td", {}, s.function),
        h("td", {}, badge(s.paused ? "paused" : "active", `schedule-state-${s.name}`)),
        h("td", {}, s.paused ? "—" : fmtTime(s.next_fire)),
        h("td", {}, fmtTime(s.last_fire)),
        h("td", {}, s.last_id ? taskLink(s.last_id) : "—"),
        h("td", {}, `${s.catchup} / ${s.overlap}`),
        h(
          "td",
          {},
          h(
            "button",
            { type: "button", testid: `schedule-toggle-${s.name}`, onclick: () => toggle(s) },
            s.paused ? "Resume" : "Pause",
          ),
        ),
      ),
    );
    fill(
      body,
      table(
        ["Name", "Spec", "Function", "State", "Next", "Last", "Last task", "Catch-up / overlap", ""],
        rows,
        { testid: "schedules-table" },
      ),
    );
  }

  load();
  let ticks = 0;
  return live.on("status", () => {
    ticks += 1;
    if (ticks % REFRESH_TICKS === 0) load();
  });
}
