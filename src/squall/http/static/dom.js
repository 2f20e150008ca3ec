// Building the page: elements from plain values, text always as text nodes. Nothing here (or
// anywhere in the dashboard) assigns innerHTML: task names, error messages and tracebacks
// come from users' code and are shown exactly as they are.

/**
 * ``h("td", {class: "num", testid: "x", onclick: f}, child, ...)``: an element whose children
 * are nodes or text (strings and numbers become text nodes; null, undefined and false are
 * left out; arrays are flattened).
 */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "testid") element.dataset.testid = value;
    else if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else if (key === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else if (child instanceof Node) element.appendChild(child);
    else element.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace an element's children (same rules as ``h``). */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A link to a task's page. */
export function taskLink(id, testid) {
  return h("a", { href: `#/tasks/${encodeURIComponent(id)}`, class: "mono", testid }, id);
}

export function badge(state, testid) {
  return h("span", { class: `badge state-${state}`, testid }, state);
}

export function table(headings, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, headings.map((text) => h("th", {}, text)))),
    h("tbody", {}, rows),
  );
}

// -- formatting -------------------------------------------------------------------------

export function fmtTime(unix) {
  if (!unix) return "—";
  const date = new Date(unix * 1000);
  const today = new Date().toDateString() === date.toDateString();
  const time = date.toLocaleTimeString([], { hour12: false });
  const ms = String(date.getMilliseconds()).padStart(3, "0");
  return today ? `${time}.${ms}` : `${date.toLocaleDateString()} ${time}`;
}

export function fmtSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 0.001) return `${(seconds * 1e6).toFixed(0)} µs`;
  if (seconds < 1) return `${(seconds * 1000).toFixed(1)} ms`;
  if (seconds < 60) return `${seconds.toFixed(2)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}

export function fmtAgo(unix) {
  if (!unix) return "—";
  return `${fmtSeconds(Math.max(0, Date.now() / 1000 - unix))} ago`;
}

export function fmtBytes(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

export function fmtRate(perSecond) {
  if (perSecond === null || perSecond === undefined) return "—";
  return perSecond >= 100 ? `${perSecond.toFixed(0)}/s` : `${perSecond.toFixed(1)}/s`;
}

export function fmtCount(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
}

/** A short message on the page's notice line (errors of actions), gone after a while. */
export function notify(text, kind = "error") {
  const notice = document.querySelector("[data-testid=notice]");
  notice.textContent = text;
  notice.className = `notice ${kind}`;
  notice.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => {
    notice.hidden = true;
  }, 8000);
}
