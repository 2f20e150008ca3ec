// #/tasks/<id> : one task's record (GET /v1/tasks/{id}/record): timeline, attempts, worker,
// error type, message and traceback; Cancel while it may still run, Retry for a failed
// background task. Asked again whenever the stream says something happened to it.
import { del, get, post } from "./api.js";
import { badge, fill, fmtSeconds, fmtTime, h, notify, taskLink } from "./dom.js";

const CANCELLABLE = new Set(["scheduled", "waiting", "queued", "running"]);
const TASK_EVENTS = [
  "task.submitted", "task.started", "task.succeeded", "task.failed", "task.cancelled",
  "task.expired", "task.redelivered",
];

export function taskPage(main, { live, args }) {
  const [id] = args;
  const body = h("div", { testid: "task" });
  fill(main, h("p", { class: "crumbs" }, h("a", { href: "#/tasks" }, "Tasks"), " / ", h("span", { class: "mono" }, id)), body);
  let gone = false;
  let pending = null;

  async function cancel() {
    if (!window.confirm(`Cancel task ${id}?`)) return;
    try {
      const answer = await del(`/v1/tasks/${encodeURIComponent(id)}`);
      notify(answer.cancelled ? `Task ${id} cancelled.` : `Task ${id} had already ended.`, "info");
    } catch (failure) {
      notify(`Cancel: ${failure.message}`);
    }
    load();
  }

  async function retry() {
    try {
      const answer = await post(`/v1/tasks/${encodeURIComponent(id)}/retry`);
      notify(`Retried as ${answer.id}.`, "info");
      location.hash = `#/tasks/${encodeURIComponent(answer.id)}`;
    } catch (failure) {
      notify(`Retry: ${failure.message}`);
    }
  }

  function field(label, value, testid) {
    return [h("dt", {}, label), h("dd", { testid }, value ?? "—")];
  }

  function render(task) {
    const actions = h("div", { class: "actions" });
    if (CANCELLABLE.has(task.state)) {
      actions.append(h("button", { type: "button", class: "danger", testid: "task-cancel", onclick: cancel }, "Cancel"));
    }
    if (task.state === "failed" && task.background) {
      actions.append(h("button", { type: "button", testid: "task-retry", onclick: retry }, "Retry"));
    }
    const start = task.timeline?.[0]?.[1];
    const timeline = h(
      "ol",
      { class: "timeline", testid: "task-timeline" },
      (task.timeline ?? []).map(([event, at]) =>
        h("li", { dataset: { event } }, h("span", { class: "event" }, event), " ", fmtTime(at),
          start && at > start ? h("span", { class: "muted" }, ` +${fmtSeconds(at - start)}`) : null)),
    );
    const error = task.error_type || task.error_message || task.traceback
      ? h(
          "section",
          { class: "error", testid: "task-error" },
          h("h2", {}, "Error"),
          h("p", {}, h("strong", { testid: "task-error-type" }, task.error_type ?? "error"), ": ",
            h("span", { testid: "task-error-message" }, task.error_message ?? "")),
          task.traceback
            ? h("pre", { class: "traceback", testid: "task-traceback" }, task.traceback)
            : h("p", { class: "muted" }, "No traceback kept for this task."),
        )
      : null;
    fill(
      body,
      h("h1", {}, task.name || "task", " ", badge(task.state ?? "unknown", "task-state")),
      actions,
      h(
        "dl",
        { class: "facts wide" },
        field("Id", h("span", { class: "mono" }, task.id), "task-id"),
        field("Function", task.name, "task-name"),
        field("Queue", task.queue, "task-queue"),
        field("Priority", task.priority, "task-priority"),
        field("Kind", task.background ? "background (kept by the router)" : "tied to its client", "task-kind"),
        field("Worker", task.worker_pid, "task-worker"),
        field("Attempts", task.attempts, "task-attempts"),
        field("Run time", fmtSeconds(task.runtime), "task-runtime"),
        field("Submitted", fmtTime(task.submitted), "task-submitted"),
        field("Started", fmtTime(task.started), "task-started"),
        field("Finished", fmtTime(task.finished), "task-finished"),
        task.reason ? field("Reason", task.reason, "task-reason") : null,
        task.retry_of ? field("Retry of", taskLink(task.retry_of), "task-retry-of") : null,
      ),
      h("h2", {}, "Timeline"),
      timeline,
      error,
    );
  }

  async function load() {
    pending = null;
    try {
      render(await get(`/v1/tasks/${encodeURIComponent(id)}/record`));
    } catch (failure) {
      if (gone) return;
      fill(body, h("p", { class: "error-text", testid: "task-missing" }, failure.message));
    }
  }

  load();
  const off = live.on(TASK_EVENTS, (event) => {
    if (event.id === id && !pending) pending = setTimeout(load, 100);
  });
  return () => {
    gone = true;
    clearTimeout(pending);
    off();
  };
}
