// The dashboard's shell: hash routes to views, one live event stream, the status history
// the overview's charts draw (kept here so that it survives moving between pages).
import { Live, del, get } from "./api.js";
import { fill, h } from "./dom.js";
import { overview } from "./overview.js";
import { schedules } from "./schedules.js";
import { taskPage } from "./task.js";
import { tasks } from "./tasks.js";
import { workers } from "./workers.js";

/** Seconds of figures the charts keep (one point per status event, about 1 s apart). */
const HISTORY_SECONDS = 600;

/** Rates computed from successive status events: the charts' data. */
export class History {
  constructor() {
    this.time = [];
    this.submitted = [];
    this.completed = [];
    this.failed = [];
    this.failedShare = [];
    this.previous = null;
  }

  add(status) {
    const now = status.time;
    const totals = status.totals ?? {};
    const previous = this.previous;
    this.previous = { time: now, totals };
    if (!previous || now <= previous.time) return;
    const span = now - previous.time;
    const delta = (key) => Math.max(0, (totals[key] ?? 0) - (previous.totals[key] ?? 0));
    const completed = delta("completed");
    this.time.push(now);
    this.submitted.push(delta("submitted") / span);
    this.completed.push(completed / span);
    this.failed.push(delta("failed") / span);
    this.failedShare.push(completed ? (100 * delta("failed")) / completed : 0);
    while (this.time.length && this.time[0] < now - HISTORY_SECONDS) {
      for (const series of [this.time, this.submitted, this.completed, this.failed]) {
        series.shift();
      }
      this.failedShare.shift();
    }
  }
}

const ROUTES = [
  { pattern: /^\/?$/, name: "overview", view: overview },
  { pattern: /^\/workers$/, name: "workers", view: workers },
  { pattern: /^\/tasks$/, name: "tasks", view: tasks },
  { pattern: /^\/tasks\/([^/]+)$/, name: "tasks", view: taskPage },
  { pattern: /^\/schedules$/, name: "schedules", view: schedules },
];

const main = document.querySelector("main");
const liveState = document.querySelector("[data-testid=live-state]");
const history = new History();
const live = new Live((state) => {
  liveState.textContent = state;
  liveState.dataset.state = state;
});
live.on("status", (status) => history.add(status));
let leave = () => {};

function route() {
  leave();
  leave = () => {};
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query);
  for (const { pattern, name, view } of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    for (const link of document.querySelectorAll("nav a")) {
      link.classList.toggle("current", link.dataset.route === name);
    }
    const args = match.slice(1).map(decodeURIComponent);
    fill(main);
    leave = view(main, { live, history, params, args }) ?? (() => {});
    return;
  }
  fill(main, h("p", { class: "empty" }, `No page ${path}: `, h("a", { href: "#/" }, "overview")));
}

async function showLogout() {
  const session = await get("/v1/session").catch(() => null);
  const button = document.querySelector("[data-testid=logout]");
  if (!session?.required) return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    await del("/v1/session").catch(() => {});
    location.href = "/login";
  });
}

window.addEventListener("hashchange", route);
live.start();
route();
showLogout();
