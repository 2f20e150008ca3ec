/**
 * @squall/client: call squall's named Python functions over its HTTP API (docs/http.md).
 *
 * No dependencies: Node 18+'s global fetch and node:crypto.
 */

import { createHmac, timingSafeEqual } from 'node:crypto';

/** The longest `?wait=` the gateway honours (docs/http.md: "at most 60"). */
const MAX_WAIT = 60;
/** Extra time a request may take beyond the `?wait=` it asks for, before it is abandoned. */
const REQUEST_SLACK = 30;
/** Task states after which nothing changes. */
const ENDED = new Set(['succeeded', 'failed', 'cancelled']);

/** Base of every error this client throws. `status` and `code` come from the gateway's answer
 * (`{"error": {"code", "message"}}`); both are undefined when no answer came. */
export class SquallError extends Error {
  constructor(message, { status, code, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    this.status = status;
    this.code = code;
  }
}

/** 400 `bad_request`: the body, args, kwargs or options were malformed. */
export class BadRequestError extends SquallError {}
/** 401 `unauthorized`: the token is missing or unknown. */
export class AuthError extends SquallError {}
/** 404 `unknown_function` or `task_not_found` (see `code`). */
export class NotFoundError extends SquallError {}
/** 413 `too_large`: the request body is larger than the gateway takes. */
export class TooLargeError extends SquallError {}
/** 429 `queue_full`: the router's queue is full; retry later. */
export class QueueFullError extends SquallError {}
/** 503 `no_router` (the router does not answer), or the gateway could not be reached. */
export class UnavailableError extends SquallError {}

/** A task that did not end within the time the caller gave. The task itself goes on:
 * `id` lets the caller wait again, or cancel it. */
export class TimeoutError extends SquallError {
  constructor(id, timeout) {
    super(`task ${id} did not end within ${timeout} s`, { code: 'timeout' });
    this.id = id;
    this.timeout = timeout;
  }
}

/** A task that failed (or was cancelled). `message`, `type` and `traceback` are the remote
 * exception's; `task` is the whole task object. */
export class TaskError extends SquallError {
  constructor(task) {
    const error = task.error ?? (task.state === 'cancelled'
      ? { type: 'cancelled', message: 'the task was cancelled' }
      : { type: 'unknown', message: `the task ended ${task.state}` });
    super(error.message ?? '', { code: 'task_failed' });
    this.type = error.type;
    this.traceback = error.traceback ?? null;
    this.id = task.id;
    this.task = task;
  }
}

const ERRORS = {
  400: BadRequestError, 401: AuthError, 404: NotFoundError, 413: TooLargeError,
  429: QueueFullError, 503: UnavailableError,
};

/** A client of one squall HTTP gateway. */
export class Squall {
  /**
   * @param {{url: string, token?: string}} options  `url` is the gateway's base URL (without
   *   `/v1`); `token` is sent as `Authorization: Bearer` (a gateway started with `--tokens`).
   */
  constructor({ url, token } = {}) {
    if (!url) throw new TypeError('Squall: `url` is required');
    this.url = String(url).replace(/\/+$/, '');
    this.token = token;
  }

  /**
   * Calls `name` and resolves with its result, or rejects with a `TaskError` if it fails, or a
   * `TimeoutError` if it does not end within `timeout` seconds (default: wait as long as it
   * takes). `options` are squall's call options (queue, priority, timeout per attempt, ...).
   */
  async call(name, args = [], { kwargs, options, timeout } = {}) {
    const deadline = deadlineOf(timeout);
    const wait = waitFor(deadline);
    const task = await this.#request('POST', `/v1/functions/${encodeURIComponent(name)}/calls`,
      { body: callBody(args, kwargs, options), wait });
    return ENDED.has(task.state) ? outcome(task) : this.#waitUntil(task.id, deadline, timeout);
  }

  /** Enqueues a background call of `name` and resolves with its task id. With `callbackUrl`,
   * the gateway POSTs the task object there when it ends (check it with `verifySignature`). */
  async enqueue(name, args = [], { kwargs, options, callbackUrl } = {}) {
    const body = callBody(args, kwargs, options);
    if (callbackUrl !== undefined) body.callback_url = callbackUrl;
    const task = await this.#request('POST', `/v1/functions/${encodeURIComponent(name)}/calls`,
      { body });
    return task.id;
  }

  /** The task object: `{id, function, state, result?, error?, attempts, submitted, ...}`. */
  get(id) {
    return this.#request('GET', taskPath(id));
  }

  /** Waits for task `id` to end (at most `timeout` seconds, default: as long as it takes) and
   * resolves with its result; rejects like `call`. */
  wait(id, { timeout } = {}) {
    return this.#waitUntil(id, deadlineOf(timeout), timeout);
  }

  /** Cancels task `id`: resolves true, or false if it had already ended. */
  async cancel(id) {
    const answer = await this.#request('DELETE', taskPath(id));
    return answer.cancelled === true;
  }

  /** Long-polls `GET /v1/tasks/{id}?wait=` (the gateway holds each request up to 60 s) so
   * that a task ending is seen at once without busy polling. */
  async #waitUntil(id, deadline, timeout) {
    for (;;) {
      const wait = waitFor(deadline);
      const task = await this.#request('GET', taskPath(id), { wait });
      if (ENDED.has(task.state)) return outcome(task);
      if (Date.now() >= deadline) throw new TimeoutError(id, timeout);
    }
  }

  /** One request; resolves with the parsed JSON answer or rejects with a `SquallError`. */
  async #request(method, path, { body, wait } = {}) {
    const headers = { Accept: 'application/json' };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const query = wait === undefined ? '' : `?wait=${wait}`;
    let response;
    let text;
    try {
      response = await fetch(this.url + path + query, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        // A dead gateway must not hang the caller forever: allow the wait asked plus slack.
        signal: AbortSignal.timeout(((wait ?? 0) + REQUEST_SLACK) * 1000),
      });
      text = await response.text();
    } catch (cause) {
      throw new UnavailableError(`squall gateway ${this.url}: ${cause.message}`, { cause });
    }
    let data;
    try {
      data = text ? JSON.parse(text) : {};
    } catch {
      data = undefined;
    }
    if (response.ok && data !== undefined) return data;
    const error = data?.error ?? {};
    const Kind = ERRORS[response.status] ?? SquallError;
    throw new Kind(error.message ?? `HTTP ${response.status} ${response.statusText}`,
      { status: response.status, code: error.code });
  }
}

/**
 * Checks a webhook's `Squall-Signature: t=<unix>,v1=<hex>` header: `v1` must be the HMAC-SHA256,
 * keyed with `secret`, of `t + "." + body`, and `t` within `tolerance` seconds of now (which
 * stops an old delivery being replayed). `body` must be the raw bytes received (a Buffer or
 * string), not re-serialized JSON. Never throws: anything malformed is false.
 *
 * @param {string} secret
 * @param {string | null | undefined} header
 * @param {string | Uint8Array} body
 * @param {{tolerance?: number, now?: number}} [options]  `now` in Unix seconds (for tests).
 * @returns {boolean}
 */
export function verifySignature(secret, header, body, { tolerance = 300, now } = {}) {
  if (!secret || typeof header !== 'string' || body === undefined || body === null) return false;
  let t;
  const signatures = [];
  for (const part of header.split(',')) {
    const at = part.indexOf('=');
    const key = part.slice(0, at).trim();
    const value = part.slice(at + 1).trim();
    if (key === 't') t = value;
    else if (key === 'v1' && /^[0-9a-f]{64}$/i.test(value)) signatures.push(value);
  }
  if (!t || !/^\d+$/.test(t) || signatures.length === 0) return false;
  const age = (now ?? Date.now() / 1000) - Number(t);
  if (!(Math.abs(age) <= tolerance)) return false;
  const expected = createHmac('sha256', secret).update(`${t}.`).update(body).digest();
  // timingSafeEqual: comparing byte by byte would tell an attacker how much of a guess matched.
  return signatures.some((hex) => timingSafeEqual(Buffer.from(hex, 'hex'), expected));
}

function callBody(args, kwargs, options) {
  if (!Array.isArray(args)) throw new TypeError('squall: `args` must be an array');
  const body = { args };
  if (kwargs !== undefined) body.kwargs = kwargs;
  if (options !== undefined) body.options = options;
  return body;
}

function taskPath(id) {
  return `/v1/tasks/${encodeURIComponent(id)}`;
}

/** The absolute time (ms) a wait of `timeout` seconds ends; Infinity for none. */
function deadlineOf(timeout) {
  if (timeout === undefined || timeout === null) return Infinity;
  if (!(timeout >= 0)) throw new TypeError('squall: `timeout` must be a number of seconds >= 0');
  return Date.now() + timeout * 1000;
}

/** The `?wait=` for the time left until `deadline`: at most 60 s, to the millisecond. */
function waitFor(deadline) {
  const left = Math.max(0, (deadline - Date.now()) / 1000);
  return Math.min(MAX_WAIT, Math.round(left * 1000) / 1000);
}

/** A task that has ended: its result, or a `TaskError`. */
function outcome(task) {
  if (task.state === 'succeeded') return task.result;
  throw new TaskError(task);
}
