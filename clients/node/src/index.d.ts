/** Types of @squall/client (see docs/http.md for the HTTP API it speaks). */

export type TaskState = 'scheduled' | 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Squall's call options (docs/http.md, "Calls"). */
export interface CallOptions {
  queue?: string;
  /** Higher runs first. */
  priority?: number;
  /** Seconds before it may start. */
  delay?: number;
  /** Seconds after which, never started, it fails with `squall.TaskExpired`. */
  expires?: number;
  /** Seconds per attempt. */
  timeout?: number;
  /** Attempts again on an exception. */
  retries?: number;
  /** A unique key: calling again with the same key returns the same task. */
  key?: string;
}

export interface RemoteError {
  /** The exception's name, e.g. "ValueError" or "squall.TaskTimeout". */
  type: string;
  message: string;
  traceback?: string;
}

/** A task object, as `GET /v1/tasks/{id}` answers and a webhook delivers it. */
export interface Task<R = Json> {
  id: string;
  function?: string;
  state: TaskState;
  result?: R;
  error?: RemoteError;
  attempts?: number;
  /** Unix seconds, or null. */
  submitted?: number | null;
  started?: number | null;
  finished?: number | null;
  [key: string]: unknown;
}

export interface SquallOptions {
  /** The gateway's base URL, e.g. "http://127.0.0.1:8000" (without /v1). */
  url: string;
  /** Sent as `Authorization: Bearer TOKEN`. */
  token?: string;
}

export class Squall {
  constructor(options: SquallOptions);
  readonly url: string;
  readonly token?: string;
  /** Calls `name` and resolves with its result; rejects with TaskError or TimeoutError. */
  call<R = Json>(
    name: string,
    args?: Json[],
    options?: { kwargs?: Record<string, Json>; options?: CallOptions; timeout?: number },
  ): Promise<R>;
  /** Enqueues a background call and resolves with its task id. */
  enqueue(
    name: string,
    args?: Json[],
    options?: { kwargs?: Record<string, Json>; options?: CallOptions; callbackUrl?: string },
  ): Promise<string>;
  get<R = Json>(id: string): Promise<Task<R>>;
  /** Resolves with the task's result; rejects with TaskError or TimeoutError. */
  wait<R = Json>(id: string, options?: { timeout?: number }): Promise<R>;
  /** True if cancelled, false if it had already ended. */
  cancel(id: string): Promise<boolean>;
}

export class SquallError extends Error {
  constructor(message: string, options?: { status?: number; code?: string; cause?: unknown });
  /** The HTTP status, or undefined when no answer came. */
  status?: number;
  /** The JSON error code, e.g. "unauthorized", "unknown_function", "task_not_found". */
  code?: string;
}
export class BadRequestError extends SquallError {}
export class AuthError extends SquallError {}
export class NotFoundError extends SquallError {}
export class TooLargeError extends SquallError {}
export class QueueFullError extends SquallError {}
export class UnavailableError extends SquallError {}
export class TimeoutError extends SquallError {
  constructor(id: string, timeout: number | undefined);
  /** The task, which goes on running. */
  id: string;
  timeout: number | undefined;
}
export class TaskError extends SquallError {
  constructor(task: Task);
  /** The remote exception's name ("cancelled" for a cancelled task without an error). */
  type: string;
  traceback: string | null;
  id: string;
  task: Task;
}

/** Checks a `Squall-Signature: t=<unix>,v1=<hex>` header against the raw body. */
export function verifySignature(
  secret: string,
  header: string | null | undefined,
  body: string | Uint8Array,
  options?: { tolerance?: number; now?: number },
): boolean;
