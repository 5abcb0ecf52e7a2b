'use strict';
// rcluster.Pool with real worker processes: values, errors, crashes, timeouts, aborts, the
// bounded queue, recycling, destroy, and a task file that cannot load.
const test = require('node:test');
const assert = require('assert');
const path = require('path');
const { Pool } = require('..');

const TASKS = path.join(__dirname, 'fixtures', 'pool_tasks.js');

async function withPool(options, fn) {
  const pool = new Pool({ filename: TASKS, workers: 2, ...options });
  try {
    return await fn(pool);
  } finally {
    await pool.destroy();
  }
}

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail('expected a rejection');
}

test('results arrive for every task, in order and out of order', () => withPool({}, async (pool) => {
  assert.strictEqual(await pool.run(21), 42);
  const order = [];
  const slow = pool.run(300, { name: 'sleep' }).then((v) => { order.push('slow'); return v; });
  const quick = Array.from({ length: 100 }, (_, i) => pool.run(i, { name: 'echo' }).then((v) => { order.push(v); return v; }));
  const results = await Promise.all([slow, ...quick]);
  assert.deepStrictEqual(results, [300, ...Array.from({ length: 100 }, (_, i) => i)]);
  assert.notStrictEqual(order[0], 'slow', 'quick tasks overtake the slow one');
}));

test('values travel as structured clones: Buffers, typed arrays, Maps, Dates', () => withPool({}, async (pool) => {
  const value = {
    buf: Buffer.from('hi'),
    f64: new Float64Array([1.5, 2.5]),
    map: new Map([['a', new Date(0)]]),
    set: new Set([1, 2]),
    big: 2n ** 70n,
  };
  const back = await pool.run(value, { name: 'echo' });
  assert.deepStrictEqual(Buffer.from(back.buf), Buffer.from('hi'));
  assert.ok(back.f64 instanceof Float64Array);
  assert.deepStrictEqual(Array.from(back.f64), [1.5, 2.5]);
  assert.ok(back.map.get('a') instanceof Date);
  assert.strictEqual(back.map.get('a').getTime(), 0);
  assert.deepStrictEqual(back.set, new Set([1, 2]));
  assert.strictEqual(back.big, 2n ** 70n);
}));

test('an error thrown in a task arrives as an Error with its message, name, code and stack', () => withPool({}, async (pool) => {
  const err = await rejection(pool.run('bad input', { name: 'fail' }));
  assert.ok(err instanceof Error);
  assert.strictEqual(err.message, 'bad input');
  assert.strictEqual(err.name, 'RangeError');
  assert.strictEqual(err.code, 'E_TASK');
  assert.match(err.stack, /pool_tasks\.js/);
  const async = await rejection(pool.run('later', { name: 'failAsync' }));
  assert.strictEqual(async.name, 'TypeError');
  assert.strictEqual(async.message, 'later');
}));

for (const [name, arg, check] of [
  ['process.exit', 7, (e) => { assert.strictEqual(e.exitCode, 7); assert.match(e.message, /exit code 7/); }],
  ['SIGSEGV', undefined, (e) => { assert.strictEqual(e.signal, 'SIGSEGV'); assert.match(e.message, /SIGSEGV/); }],
]) {
  test(`a task that ends its process (${name}) fails alone with ERR_WORKER_CRASHED while 1,000 others succeed`, () => withPool({}, async (pool) => {
    const others = [];
    for (let i = 0; i < 500; i++) others.push(pool.run(i, { name: 'echo' }));
    const crash = rejection(pool.run(arg, { name: name === 'SIGSEGV' ? 'segv' : 'exit' }));
    for (let i = 500; i < 1000; i++) others.push(pool.run(i, { name: 'echo' }));
    const err = await crash;
    assert.strictEqual(err.code, 'ERR_WORKER_CRASHED', err.message);
    check(err);
    const values = await Promise.all(others);
    assert.deepStrictEqual(values, Array.from({ length: 1000 }, (_, i) => i));
    assert.strictEqual(await pool.run(1), 2, 'the pool is still usable');
    assert.strictEqual(pool.stats().failedCrashed, 1);
  }));
}

test('with several tasks per worker, idempotent tasks held by a crashing worker run again', () => withPool({ concurrentTasksPerWorker: 8 }, async (pool) => {
  const others = [];
  for (let i = 0; i < 500; i++) others.push(pool.run(i, { name: 'echo', idempotent: true }));
  const crash = rejection(pool.run(3, { name: 'exit' }));
  for (let i = 500; i < 1000; i++) others.push(pool.run(i, { name: 'echo', idempotent: true }));
  assert.strictEqual((await crash).code, 'ERR_WORKER_CRASHED');
  assert.deepStrictEqual(await Promise.all(others), Array.from({ length: 1000 }, (_, i) => i));
  assert.strictEqual(pool.stats().failedCrashed, 1);
}));

test('a runaway task with a 200 ms timeout is rejected within 250 ms; the others are unaffected', () => withPool({}, async (pool) => {
  await Promise.all([pool.run(20, { name: 'sleep' }), pool.run(20, { name: 'sleep' })]);
  const started = process.hrtime.bigint();
  const runaway = rejection(pool.run(null, { name: 'spin', timeout: 200 }).finally(() => {}));
  const others = Array.from({ length: 50 }, (_, i) => pool.run(i, { name: 'echo' }));
  const err = await runaway;
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  assert.strictEqual(err.code, 'ERR_TASK_TIMEOUT', err.message);
  assert.ok(ms >= 195 && ms < 250, `rejected after ${ms} ms`);
  assert.strictEqual((await Promise.all(others)).length, 50);
  assert.strictEqual(pool.stats().failedTimeout, 1);
}));

test('taskTimeout applies to every task', () => withPool({ taskTimeout: 150 }, async (pool) => {
  const err = await rejection(pool.run(null, { name: 'spin' }));
  assert.strictEqual(err.code, 'ERR_TASK_TIMEOUT');
  assert.strictEqual(await pool.run(2), 4);
}));

test('an AbortSignal cancels a queued task and a running one; the next task runs on a fresh worker', () => withPool({ workers: 1 }, async (pool) => {
  const pid1 = await pool.run(null, { name: 'pid' });
  const running = new AbortController();
  const queued = new AbortController();
  const spin = rejection(pool.run(null, { name: 'spin', signal: running.signal }));
  const waiting = rejection(pool.run(1, { name: 'echo', signal: queued.signal }));
  const next = pool.run(null, { name: 'pid' });
  queued.abort();
  const q = await waiting;
  assert.strictEqual(q.name, 'AbortError');
  await new Promise((r) => setTimeout(r, 100));
  running.abort(new Error('enough'));
  const r = await spin;
  assert.strictEqual(r.name, 'AbortError');
  assert.strictEqual(r.code, 'ABORT_ERR');
  assert.strictEqual(r.cause.message, 'enough');
  assert.notStrictEqual(await next, pid1, 'not given to the worker being killed');
  const pre = new AbortController();
  pre.abort();
  assert.strictEqual((await rejection(pool.run(1, { signal: pre.signal }))).name, 'AbortError');
}));

test('aborting a task that waits in its worker behind a running one leaves that worker alive', () => withPool({ workers: 1 }, async (pool) => {
  const pid = await pool.run(null, { name: 'pid' });
  const ahead = new AbortController();
  const slow = pool.run(300, { name: 'sleep' });
  const waiting = rejection(pool.run(1, { name: 'echo', signal: ahead.signal }));
  // The sleep runs; the echo is sent ahead to the same worker.
  const deadline = Date.now() + 10000;
  while (pool.stats().running < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.strictEqual(pool.stats().running, 2);
  ahead.abort();
  assert.strictEqual((await waiting).name, 'AbortError');
  assert.strictEqual(await slow, 300);
  assert.strictEqual(await pool.run(null, { name: 'pid' }), pid, 'the same worker answers the next task');
  const s = pool.stats();
  assert.deepStrictEqual([s.failedCrashed, s.failedCancelled], [0, 1]);
}));

for (const first of ['sleep', 'block']) {
  test(`a task sent ahead and aborted behind a ${first} never runs and the same worker goes on`, () => withPool({ workers: 1 }, async (pool) => {
    const fs = require('fs');
    const os = require('os');
    const mark = path.join(os.tmpdir(), `rcluster-node-cancelled-${process.pid}-${first}`);
    fs.rmSync(mark, { force: true });
    const pid = await pool.run(null, { name: 'pid' });
    const ahead = new AbortController();
    const slow = pool.run(400, { name: first });
    const waiting = rejection(pool.run(mark, { name: 'touch', signal: ahead.signal }));
    const deadline = Date.now() + 10000;
    while (pool.stats().running < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.strictEqual(pool.stats().running, 2);
    ahead.abort();
    assert.strictEqual((await waiting).name, 'AbortError');
    assert.strictEqual(await slow, 400);
    assert.strictEqual(await pool.run(null, { name: 'pid' }), pid, 'the same worker answers the next task');
    assert.strictEqual(fs.existsSync(mark), false, 'the aborted task ran');
    assert.strictEqual(pool.stats().running, 0);
  }));
}

test('a crash fails only the running task; the tasks sent ahead to that worker run on another', () => withPool({ workers: 1 }, async (pool) => {
  await Promise.all(Array.from({ length: 200 }, (_, i) => pool.run(i, { name: 'echo' })));
  const slow = pool.run(200, { name: 'sleep' });
  const crash = rejection(pool.run(7, { name: 'exit' }));
  const rest = Array.from({ length: 20 }, (_, i) => pool.run(i, { name: 'echo' }));
  assert.strictEqual(await slow, 200);
  const err = await crash;
  assert.strictEqual(err.code, 'ERR_WORKER_CRASHED');
  assert.strictEqual(err.exitCode, 7);
  assert.deepStrictEqual(await Promise.all(rest), Array.from({ length: 20 }, (_, i) => i));
  const s = pool.stats();
  assert.strictEqual(s.failed, 1);
  assert.ok(s.requeued >= 1, `no task waited in the crashed worker: ${JSON.stringify(s)}`);
}));

test('maxQueue rejects with ERR_QUEUE_FULL, or waits for room with whenFull: wait', async () => {
  await withPool({ workers: 1, maxQueue: 2 }, async (pool) => {
    const busy = pool.run(300, { name: 'sleep' });
    while (pool.stats().running === 0) await new Promise((r) => setTimeout(r, 5));
    const a = pool.run(1, { name: 'echo' });
    const b = pool.run(2, { name: 'echo' });
    const err = await rejection(pool.run(3, { name: 'echo' }));
    assert.strictEqual(err.code, 'ERR_QUEUE_FULL');
    assert.deepStrictEqual(await Promise.all([busy, a, b]), [300, 1, 2]);
  });
  await withPool({ workers: 1, maxQueue: 2, whenFull: 'wait' }, async (pool) => {
    const all = Array.from({ length: 200 }, (_, i) => pool.run(i, { name: 'echo' }));
    assert.ok(pool.stats().queued <= 2);
    assert.deepStrictEqual(await Promise.all(all), Array.from({ length: 200 }, (_, i) => i));
  });
});

test('workers are replaced after maxTasksPerWorker without a failed task', () => withPool({ maxTasksPerWorker: 10 }, async (pool) => {
  // Tasks of 10 ms, so that replacements have time to start and take over (a worker past its
  // limit runs tasks until its replacement is ready).
  await Promise.all(Array.from({ length: 100 }, () => pool.run(10, { name: 'sleep' })));
  const s = pool.stats();
  assert.strictEqual(s.completed, 100);
  assert.strictEqual(s.failed, 0);
  assert.ok(s.recycled >= 1, JSON.stringify(s));
}));

test('a worker above maxWorkerMemoryMb after a task is replaced, without a failed task', () => withPool({ workers: 1, maxWorkerMemoryMb: 64 }, async (pool) => {
  const before = await pool.run(null, { name: 'pid' });
  assert.strictEqual(await pool.run(100, { name: 'grow' }), 1);
  let after = before;
  for (let i = 0; i < 500 && after === before; i++) {
    after = await pool.run(null, { name: 'pid' });
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.notStrictEqual(after, before, 'the worker above the limit was not replaced');
  const s = pool.stats();
  assert.strictEqual(s.failed, 0);
  assert.ok(s.recycled >= 1);
}));

test('destroy rejects queued tasks with ERR_POOL_DESTROYED and later runs too', async () => {
  const pool = new Pool({ filename: TASKS, workers: 1 });
  const queued = Array.from({ length: 20 }, () => rejection(pool.run(200, { name: 'sleep' })));
  await new Promise((r) => setTimeout(r, 50));
  await pool.destroy();
  const errors = (await Promise.allSettled(queued)).map((r) => r.value);
  assert.ok(errors.filter((e) => e && e.code === 'ERR_POOL_DESTROYED').length >= 18);
  assert.strictEqual((await rejection(pool.run(1))).code, 'ERR_POOL_DESTROYED');
});

test('a worker file that throws on load gives a clear error, without a crash loop', async () => {
  const pool = new Pool({ filename: path.join(__dirname, 'fixtures', 'pool_throws_on_load.js'), workers: 2 });
  try {
    const err = await rejection(pool.run(1));
    assert.strictEqual(err.code, 'ERR_WORKER_INIT_FAILED', err.message);
    assert.match(err.message, /missing configuration TASKS_DB/);
    assert.match(err.message, /pool_throws_on_load\.js/);
    const again = await rejection(pool.run(1));
    assert.match(again.message, /missing configuration TASKS_DB/);
  } finally {
    await pool.destroy();
  }
});

test('values that do not serialize give a clear error naming the type', () => withPool({}, async (pool) => {
  const arg = await rejection(pool.run({ f: () => 1 }));
  assert.strictEqual(arg.code, 'ERR_TASK_DATA_NOT_SERIALIZABLE');
  assert.match(arg.message, /cannot be serialized/);
  const fn = await rejection(pool.run(function named() {}));
  assert.match(fn.message, /function named/);
  const result = await rejection(pool.run(null, { name: 'fn' }));
  assert.strictEqual(result.code, 'ERR_TASK_RESULT_NOT_SERIALIZABLE');
  assert.match(result.message, /function notCloneable/);
}));

test('bad options name the option', () => {
  assert.throws(() => new Pool({ filename: TASKS, workers: 0 }), /workers/);
  assert.throws(() => new Pool({ filename: TASKS, concurrentTasksPerWorker: 1.5 }), /concurrentTasksPerWorker/);
  assert.throws(() => new Pool({ filename: TASKS, whenFull: 'block' }), /whenFull/);
  assert.throws(() => new Pool({ filename: TASKS, maxQeue: 1 }), /maxQeue/);
  assert.throws(() => new Pool({}), /filename/);
});
