// Tests of @squall/client against a real squall stack started by clients/harness.py.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { dirname, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import {
  AuthError, NotFoundError, Squall, SquallError, TaskError, TimeoutError, UnavailableError,
  verifySignature,
} from '../src/index.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const NODE_DIR = resolve(HERE, '..');
const PYTHON = process.env.PYTHON || resolve(NODE_DIR, '../../.venv/bin/python');
const HARNESS = resolve(NODE_DIR, '../harness.py');
const T = { timeout: 30_000 };

let harness;
let stack;
let squall;

/** Starts the harness and resolves with its one JSON line (or rejects with its stderr). */
function startHarness() {
  return new Promise((resolveStack, reject) => {
    const child = spawn(PYTHON, [HARNESS], { stdio: ['pipe', 'pipe', 'pipe'] });
    harness = child;
    let out = '';
    let err = '';
    child.stderr.on('data', (chunk) => { err += chunk; });
    child.on('error', (e) => reject(new Error(`cannot start ${PYTHON} ${HARNESS}: ${e.message}`)));
    child.on('exit', (code) => reject(new Error(`harness exited (${code}) before its line:\n${err}`)));
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const line = out.indexOf('\n');
      if (line >= 0) resolveStack(JSON.parse(out.slice(0, line)));
    });
  });
}

before(async () => {
  stack = await startHarness();
  squall = new Squall({ url: stack.url, token: stack.token });
}, { timeout: 120_000 });

after(async () => {
  if (!harness || harness.exitCode !== null || harness.signalCode !== null) return;
  const exited = new Promise((done) => harness.once('exit', done));
  harness.stdin.end(); // the harness stops its stack when its stdin closes
  const late = (ms) => new Promise((done) => setTimeout(done, ms, 'late').unref());
  if (await Promise.race([exited, late(20_000)]) === 'late') {
    process.kill(harness.pid, 'SIGTERM'); // it stops its children on SIGTERM too
    if (await Promise.race([exited, late(10_000)]) === 'late') process.kill(harness.pid, 'SIGKILL');
  }
}, { timeout: 40_000 });

/** Polls `get(id)` until `check(task)` holds (bounded by the test's own timeout). */
async function until(id, check) {
  for (;;) {
    const task = await squall.get(id);
    if (check(task)) return task;
    await new Promise((done) => setTimeout(done, 100));
  }
}

test('call a deployed function with JSON args', T, async () => {
  assert.equal(await squall.call('math.add', [2, 3]), 5);
  assert.equal(await squall.call('math.add', [], { kwargs: { a: 1.5, b: 2 } }), 3.5);
  assert.equal(await squall.call('math.add', [1, 1], { options: { priority: 5 }, timeout: 10 }), 2);
});

test('call a function published by value', T, async () => {
  assert.equal(await squall.call('published.double', [21]), 42);
  assert.deepEqual(await squall.call('published.double', [[1, 'a']]), [1, 'a', 1, 'a']);
});

test('a failed task rejects with TaskError carrying the remote exception', T, async () => {
  const error = await squall.call('text.shout', ['']).then(
    () => assert.fail('text.shout("") resolved'), (e) => e);
  assert.ok(error instanceof TaskError, `not a TaskError: ${error}`);
  assert.ok(error instanceof SquallError);
  assert.equal(error.type, 'ValueError');
  assert.equal(error.message, 'nothing to shout');
  assert.match(error.traceback, /raise ValueError/);
  assert.equal(error.task.state, 'failed');
  assert.equal(await squall.call('text.shout', ['hi']), 'HI!');
});

test('enqueue, get, wait', T, async () => {
  const id = await squall.enqueue('math.add', [20, 22]);
  assert.equal(typeof id, 'string');
  const task = await squall.get(id);
  assert.equal(task.id, id);
  assert.ok(['scheduled', 'queued', 'running', 'succeeded'].includes(task.state), task.state);
  assert.equal(await squall.wait(id, { timeout: 10 }), 42);
  const done = await squall.get(id);
  assert.equal(done.state, 'succeeded');
  assert.equal(done.result, 42);
  assert.equal(done.function, 'math.add');
});

test('wait and call reject with TimeoutError when the task does not end in time', T, async () => {
  const id = await squall.enqueue('sleep.echo', [10, 'late']);
  try {
    const started = Date.now();
    await assert.rejects(squall.wait(id, { timeout: 0.5 }), (e) => e instanceof TimeoutError && e.id === id);
    assert.ok(Date.now() - started < 5_000);
    await assert.rejects(squall.call('sleep.echo', [10], { timeout: 0.5 }), TimeoutError);
  } finally {
    await squall.cancel(id);
  }
});

test('cancel a long task', T, async () => {
  const id = await squall.enqueue('sleep.echo', [30, 'never']);
  await until(id, (task) => task.state === 'running');
  assert.equal(await squall.cancel(id), true);
  const task = await until(id, (t) => t.state !== 'running');
  assert.equal(task.state, 'cancelled');
  await assert.rejects(squall.wait(id, { timeout: 5 }), TaskError);
  assert.equal(await squall.cancel(id), false, 'cancelling an ended task');
});

test('a missing or wrong token is an AuthError (401)', T, async () => {
  for (const token of [undefined, 'not-the-token']) {
    const client = new Squall({ url: stack.url, token });
    await assert.rejects(client.call('math.add', [1, 2]),
      (e) => e instanceof AuthError && e.status === 401 && e.code === 'unauthorized');
    await assert.rejects(client.get('01J0000000000000000000000A'), AuthError);
  }
});

test('an unknown function or task is a NotFoundError (404)', T, async () => {
  await assert.rejects(squall.call('no.such.function', []),
    (e) => e instanceof NotFoundError && e.status === 404 && e.code === 'unknown_function');
  await assert.rejects(squall.enqueue('no.such.function'), NotFoundError);
  await assert.rejects(squall.get('01J0000000000000000000000A'),
    (e) => e instanceof NotFoundError && e.code === 'task_not_found');
});

test('an unreachable gateway is an UnavailableError without a status', T, async () => {
  const client = new Squall({ url: 'http://127.0.0.1:1/' });
  await assert.rejects(client.get('01J0000000000000000000000A'),
    (e) => e instanceof UnavailableError && e.status === undefined && e.cause !== undefined);
});

test('a webhook is delivered and its signature verifies', T, async (t) => {
  let deliver;
  const delivered = new Promise((done) => { deliver = done; });
  const server = createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      response.writeHead(200).end();
      deliver({ method: request.method, headers: request.headers, body: Buffer.concat(chunks) });
    });
  });
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  t.after(() => new Promise((done) => server.close(done)));
  const { port } = server.address();

  const id = await squall.enqueue('math.add', [4, 5], { callbackUrl: `http://127.0.0.1:${port}/hook` });
  const hook = await delivered;
  assert.equal(hook.method, 'POST');
  assert.equal(hook.headers['squall-task-id'], id);
  assert.match(hook.headers['content-type'], /^application\/json/);
  const task = JSON.parse(hook.body);
  assert.equal(task.id, id);
  assert.equal(task.state, 'succeeded');
  assert.equal(task.result, 9);
  const header = hook.headers['squall-signature'];
  assert.match(header, /^t=\d+,v1=[0-9a-f]{64}$/);
  assert.equal(verifySignature(stack.webhook_secret, header, hook.body), true);
  assert.equal(verifySignature(stack.webhook_secret, header, hook.body.toString()), true);
  const tampered = Buffer.from(JSON.stringify({ ...task, result: 10 }));
  assert.equal(verifySignature(stack.webhook_secret, header, tampered), false);
  assert.equal(verifySignature('another-secret', header, hook.body), false);
});

test('verifySignature checks the age and the header format', () => {
  const secret = 's3cret';
  const body = '{"id": "x"}';
  const sign = (t) => `t=${t},v1=${createHmac('sha256', secret).update(`${t}.${body}`).digest('hex')}`;
  const now = Math.floor(Date.now() / 1000);
  assert.equal(verifySignature(secret, sign(now), body), true);
  assert.equal(verifySignature(secret, sign(now - 299), body), true);
  assert.equal(verifySignature(secret, sign(now - 301), body), false, 'too old');
  assert.equal(verifySignature(secret, sign(now - 301), body, { tolerance: 600 }), true);
  assert.equal(verifySignature(secret, sign(1000), body, { now: 1100 }), true);
  for (const bad of [undefined, '', 'garbage', `t=${now}`, `v1=${'0'.repeat(64)}`,
    `t=${now},v1=abc`, `t=soon,v1=${'0'.repeat(64)}`]) {
    assert.equal(verifySignature(secret, bad, body), false, String(bad));
  }
  assert.equal(verifySignature('', sign(now), body), false);
});
