// #/tasks?state=&name=&queue=&since=&until=&offset= : live and recent tasks, newest first,
// filtered and paged by the router (GET /v1/tasks). Live: the stream's task events change
// the state of rows shown, and on the first page put new matching tasks on top.
import { get, withQuery } from "./api.js";
import { badge, fill, fmtSeconds, fmtTime, h, notify, table, taskLink } from "./dom.js";

const STATES = [
  "scheduled", "waiting", "queued", "running", "succeeded", "failed", "cancelled", "expired",
];
const PAGE = 50;
/** The state a task is in after each event. */
const EVENT_STATE = {
  "task.submitted": "queued",
  "task.started": "running",
  "task.succeeded": "succeeded",
  "task.failed": "failed",
  "task.cancelled": "cancelled",
  "task.expired": "expired",
  "task.redelivered": "queued",
};

/** A datetime-local input's value as Unix seconds, and back. */
function toUnix(text) {
  return text ? new Date(text).getTime() / 1000 : undefined;
}
function fromUnix(unix) {
  if (!unix) return "";
  const date = new Date(Number(unix) * 1000);
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 19);
}

export function tasks(main, { live, params }) {
  const filters = {
    state: params.get("state") ?? "",
    name: params.get("name") ?? "",
    queue: params.get("queue") ?? "",
    since: params.get("since") ?? "",
    until: params.get("until") ?? "",
  };
  const offset = Number(params.get("offset") ?? 0) || 0;
  let keepLive = true;

  const state = h("select", { name: "state", testid: "filter-state" },
    h("option", { value: "" }, "any state"),
    STATES.map((s) => h("option", { value: s, selected: s === filters.state }, s)));
  const name = h("input", { name: "name", placeholder: "function name contains", value: filters.name, testid: "filter-name" });
  const queue = h("input", { name: "queue", placeholder: "queue", value: filters.queue, testid: "filter-queue" });
  const since = h("input", { type: "datetime-local", step: 1, value: fromUnix(filters.since), testid: "filter-since" });
  const until = h("input", { type: "datetime-local", step: 1, value: fromUnix(filters.until), testid: "filter-until" });
  const form = h(
    "form",
    { class: "filters", testid: "task-filters" },
    h("label", {}, "State ", state),
    h("label", {}, "Name ", name),
    h("label", {}, "Queue ", queue),
    h("label", {}, "Since ", since),
    h("label", {}, "Until ", until),
    h("button", { type: "submit", testid: "filter-apply" }, "Filter"),
    h("button", { type: "button", class: "link", testid: "filter-clear", onclick: () => go({}) }, "Clear"),
    h("label", { class: "toggle" },
      h("input", { type: "checkbox", checked: true, testid: "live-toggle", onchange: (e) => { keepLive = e.target.checked; } }),
      " live"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go({
      state: state.value,
      name: name.value.trim(),
      queue: queue.value.trim(),
      since: toUnix(since.value),
      until: toUnix(until.value),
    });
  });
  const tbody = h("tbody", { testid: "task-rows" });
  const pager = h("div", { class: "pager", testid: "pager" });
  fill(
    main,
    h("h1", {}, "Tasks"),
    form,
    h("table", { class: "tasks", testid: "tasks-table" },
      h("thead", {}, h("tr", {},
        ["Task", "Function", "Queue", "State", "Submitted", "Run time", "Worker", "Attempts", "Error"]
          .map((text) => h("th", {}, text)))),
      tbody),
    pager,
  );

  function go(values, page = 0) {
    location.hash = withQuery("#/tasks", { ...values, offset: page || undefined });
  }

  const rows = new Map();

  function row(task) {
    const error = [task.error_type, task.error_message].filter(Boolean).join(": ");
    const element = h(
      "tr",
      { testid: "task-row", dataset: { id: task.id, state: task.state } },
      h("td", {}, taskLink(task.id, `task-link-${task.id}`)),
      h("td", { testid: "task-name" }, task.name || "—"),
      h("td", {}, task.queue),
      h("td", {}, badge(task.state, `task-state-${task.id}`)),
      h("td", {}, fmtTime(task.submitted)),
      h("td", { class: "num" }, fmtSeconds(task.runtime)),
      h("td", { class: "mono" }, task.worker_pid ?? "—"),
      h("td", { class: "num" }, task.attempts ?? "—"),
      h("td", { class: "error-text", testid: `task-error-${task.id}` }, error),
    );
    rows.set(task.id, { task, element });
    return element;
  }

  async function load() {
    let page;
    try {
      page = await get(withQuery("/v1/tasks", { ...filters, limit: PAGE, offset }));
    } catch (failure) {
      notify(failure.message);
      fill(tbody, h("tr", {}, h("td", { colspan: 9, class: "error-text" }, failure.message)));
      return;
    }
    rows.clear();
    fill(tbody, page.tasks.map(row));
    if (!page.tasks.length) {
      fill(tbody, h("tr", { testid: "no-tasks" }, h("td", { colspan: 9, class: "empty" }, "No task matches.")));
    }
    fill(
      pager,
      h("button", { type: "button", testid: "page-prev", disabled: offset === 0,
        onclick: () => go(filters, Math.max(0, offset - PAGE)) }, "← Newer"),
      h("span", { testid: "page-info" }, page.tasks.length ? `${offset + 1}–${offset + page.tasks.length}` : "—"),
      h("button", { type: "button", testid: "page-next", disabled: page.next == null,
        onclick: () => go(filters, page.next) }, "Older →"),
    );
  }

  function matches(task) {
    if (filters.state && task.state !== filters.state) return false;
    if (filters.name && !(task.name ?? "").includes(filters.name)) return false;
    if (filters.queue && task.queue !== filters.queue) return false;
    if (filters.until && task.t > Number(filters.until)) return false;
    return true;
  }

  function onEvent(event, type) {
    if (!keepLive) return;
    const newState = EVENT_STATE[type];
    const known = rows.get(event.id);
    const task = {
      ...(known?.task ?? { id: event.id, submitted: event.t, attempts: event.attempt }),
      name: event.name || known?.task.name,
      queue: event.queue,
      state: newState,
      t: event.t,
    };
    if (type === "task.started") task.started = event.t;
    if (event.worker) task.worker_pid = event.worker;
    if (event.runtime !== undefined) task.runtime = event.runtime;
    if (event.attempt) task.attempts = event.attempt;
    if (event.error_type) {
      task.error_type = event.error_type;
      task.error_message = event.error_message;
    }
    if (known) {
      const fresh = row(task);
      known.element.replaceWith(fresh);
    } else if (offset === 0 && matches(task)) {
      tbody.querySelector("[data-testid=no-tasks]")?.remove();
      tbody.prepend(row(task));
      while (tbody.children.length > PAGE) {
        const last = tbody.lastElementChild;
        rows.delete(last.dataset.id);
        last.remove();
      }
    }
  }

  load();
  return live.on(Object.keys(EVENT_STATE), onEvent);
}
