'use strict';
// Bad options throw Error objects with a code and a message naming the bad value.
const test = require('node:test');
const assert = require('assert');
const net = require('net');
const path = require('path');
const rcluster = require('..');

const WORKER = path.join(__dirname, 'fixtures', 'api_worker.js');
const base = { exec: WORKER, args: [], execArgv: [] };

function throwsCode(fn, code, ...words) {
  assert.throws(fn, (e) => {
    assert.ok(e instanceof Error);
    assert.strictEqual(e.code, code, e.message);
    for (const w of words) assert.ok(e.message.includes(w), `${e.message} should name ${w}`);
    return true;
  });
}

test('workers out of range names the option and the value', () => {
  throwsCode(() => rcluster.start({ ...base, workers: 0 }), 'ERR_RCLUSTER_INVALID_OPTION', 'workers', '0');
  throwsCode(() => rcluster.start({ ...base, workers: 1.5 }), 'ERR_RCLUSTER_INVALID_OPTION', 'workers', '1.5');
});

test('unknown enum values are named', () => {
  throwsCode(() => rcluster.start({ ...base, readyOn: 'soon' }), 'ERR_RCLUSTER_INVALID_OPTION', 'readyOn', 'soon');
  throwsCode(() => rcluster.start({ ...base, restart: 'sometimes' }), 'ERR_RCLUSTER_INVALID_OPTION', 'restart.mode', 'sometimes');
  throwsCode(() => rcluster.start({ ...base, dispatch: 'random' }), 'ERR_RCLUSTER_INVALID_OPTION', 'dispatch', 'random');
  throwsCode(() => rcluster.start({ ...base, serialization: 'xml' }), 'ERR_RCLUSTER_INVALID_OPTION', 'serialization', 'xml');
});

test('bad durations and restart numbers are named', () => {
  throwsCode(() => rcluster.start({ ...base, killTimeout: -5 }), 'ERR_RCLUSTER_INVALID_OPTION', 'killTimeout', '-5');
  throwsCode(() => rcluster.start({ ...base, eventQueueLimit: 100 }), 'ERR_RCLUSTER_INVALID_OPTION', 'options.eventQueueLimit', '100');
  throwsCode(() => rcluster.start({ ...base, restart: { backoffMultiplier: 0.5 } }), 'ERR_RCLUSTER_INVALID_OPTION', 'backoffMultiplier', '0.5');
});

test('ranges are the core\'s and name the option as JS spells it', () => {
  throwsCode(() => rcluster.start({ ...base, sendQueueLimit: 10 }), 'ERR_RCLUSTER_INVALID_OPTION',
    'options.sendQueueLimit = 10', 'largest message');
  throwsCode(() => rcluster.start({ ...base, restart: { noRestartCodes: [256] } }), 'ERR_RCLUSTER_INVALID_OPTION',
    'options.restart.noRestartCodes = 256', '0..=255');
  throwsCode(() => rcluster.start({ ...base, workers: -2 }), 'ERR_RCLUSTER_INVALID_OPTION', 'options.workers = -2', '1..=4096');
  throwsCode(() => rcluster.start({ ...base, restart: { minUptime: 400 * 86400000 } }), 'ERR_RCLUSTER_INVALID_OPTION',
    'options.restart.minUptime', 'at most a year');
  throwsCode(() => rcluster.start({ ...base, ackTimeout: 0 }), 'ERR_RCLUSTER_INVALID_OPTION', 'options.ackTimeout', 'more than 0');
});

test('a maxMessage above the default queue raises the queue, as in every host', async () => {
  const c = rcluster.start({ ...base, workers: 1, maxMessage: 100 * 2 ** 20 });
  await c.stop();
  throwsCode(() => rcluster.start({ ...base, maxMessage: 100 * 2 ** 20, sendQueueLimit: 64 * 2 ** 20 }),
    'ERR_RCLUSTER_INVALID_OPTION', 'options.sendQueueLimit', 'largest message');
});

test('a zero backoff restarts at once, as the core allows', async () => {
  const c = rcluster.start({ ...base, restart: { backoffInitial: 0, backoffMax: 0 } });
  await c.stop();
});

test('bad recycling limits are named', () => {
  throwsCode(() => rcluster.start({ ...base, maxMemory: '5X' }), 'ERR_RCLUSTER_INVALID_OPTION', 'maxMemory', '5X');
  throwsCode(() => rcluster.start({ ...base, maxMemory: 0 }), 'ERR_RCLUSTER_INVALID_OPTION', 'maxMemory', '0');
  throwsCode(() => rcluster.start({ ...base, maxRequests: 0 }), 'ERR_RCLUSTER_INVALID_OPTION', 'maxRequests', '0');
  throwsCode(() => rcluster.start({ ...base, maxRequestsJitter: 5 }), 'ERR_RCLUSTER_INVALID_OPTION', 'maxRequestsJitter', '5');
});

test('a misspelt option is refused with its name instead of being ignored', () => {
  throwsCode(() => rcluster.start({ ...base, dispach: 'rr' }), 'ERR_RCLUSTER_INVALID_OPTION', 'options.dispach', 'unknown option');
  throwsCode(() => rcluster.start({ ...base, restart: { mode: 'always', maxRestart: 3 } }),
    'ERR_RCLUSTER_INVALID_OPTION', 'options.restart.maxRestart');
  throwsCode(() => rcluster.start({ ...base, listeners: [{ address: 8080, dispach: 'rr' }] }),
    'ERR_RCLUSTER_INVALID_OPTION', 'options.listeners[0].dispach');
});

test('a non-boolean strictTurns is named', () => {
  throwsCode(() => rcluster.start({ ...base, strictTurns: 'yes' }), 'ERR_RCLUSTER_INVALID_OPTION', 'strictTurns', 'yes');
  throwsCode(() => rcluster.setupPrimary({ strictTurns: 1 }), 'ERR_RCLUSTER_INVALID_OPTION', 'settings.strictTurns', '1');
});

test('a non-boolean kernelRoundRobin is named', () => {
  throwsCode(() => rcluster.start({ ...base, kernelRoundRobin: 'yes' }), 'ERR_RCLUSTER_INVALID_OPTION', 'kernelRoundRobin', 'yes');
  throwsCode(() => rcluster.setupPrimary({ kernelRoundRobin: 1 }), 'ERR_RCLUSTER_INVALID_OPTION', 'settings.kernelRoundRobin', '1');
});

test('a malformed listen address is named by the core', () => {
  throwsCode(() => rcluster.start({ ...base, listen: 'localhost:http' }), 'ERR_RCLUSTER_INVALID_OPTION', 'localhost:http');
});

test('an address in use is ERR_RCLUSTER_BIND naming the address', async () => {
  const s = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const addr = `127.0.0.1:${s.address().port}`;
  try {
    throwsCode(() => rcluster.start({ ...base, listen: addr }), 'ERR_RCLUSTER_BIND', addr, 'in use');
  } finally {
    s.close();
  }
});

test('a second cluster on an address fails naming it, unless both share it', async () => {
  const s = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const addr = `127.0.0.1:${s.address().port}`;
  s.close();
  const first = rcluster.start({ ...base, listen: addr });
  try {
    throwsCode(() => rcluster.start({ ...base, listen: addr }), 'ERR_RCLUSTER_BIND', addr, 'in use');
  } finally {
    await first.stop();
  }
  const listeners = [{ address: addr, share: true }];
  const a = rcluster.start({ ...base, listeners });
  const b = rcluster.start({ ...base, listeners });
  await Promise.all([a.stop(), b.stop()]);
  throwsCode(() => rcluster.start({ ...base, listeners: [{ address: addr, share: 'yes' }] }),
    'ERR_RCLUSTER_INVALID_OPTION', 'share');
});

test('ackTimeout takes milliseconds or null', async () => {
  const a = rcluster.start({ ...base, ackTimeout: null });
  const b = rcluster.start({ ...base, ackTimeout: 500 });
  await Promise.all([a.stop(), b.stop()]);
  throwsCode(() => rcluster.start({ ...base, ackTimeout: 'soon' }), 'ERR_RCLUSTER_INVALID_OPTION', 'ackTimeout');
});

test('a missing program is named before anything starts', () => {
  throwsCode(() => rcluster.start({ program: '/nonexistent/prog', args: [] }), 'ERR_RCLUSTER_INVALID_OPTION', '/nonexistent/prog');
});

test('sending to a worker that does not exist is ERR_RCLUSTER_NO_SUCH_WORKER', async () => {
  const c = rcluster.start({ ...base, workers: 1 });
  try {
    throwsCode(() => c.send(7, 'x'), 'ERR_RCLUSTER_NO_SUCH_WORKER', '7');
    throwsCode(() => c.send(0, undefined), 'ERR_RCLUSTER_INVALID_OPTION', 'message');
  } finally {
    await c.stop();
  }
});

test('fork(env) with a non-object env is refused', () => {
  throwsCode(() => rcluster.fork('FOO=1'), 'ERR_RCLUSTER_INVALID_OPTION', 'env', 'FOO=1');
});
