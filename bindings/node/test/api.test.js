'use strict';
// rcluster's own API, end to end with real worker processes.
const test = require('node:test');
const assert = require('assert');
const http = require('http');
const net = require('net');
const os = require('os');
const path = require('path');
const rcluster = require('..');
const { get, freePort, once } = require('./helpers');

const WORKER = path.join(__dirname, 'fixtures', 'api_worker.js');

test('start → spawn, online, ready; send/message round trip; workers(); stop resolves', async () => {
  const c = rcluster.start({ workers: 2, exec: WORKER, args: [], execArgv: [] });
  const spawned = [];
  c.on('spawn', (w) => spawned.push(w));
  let ready = 0;
  await once(c, 'ready', () => ++ready === 2);
  assert.deepStrictEqual(spawned.map((w) => w.id).sort(), [0, 1]);
  assert.ok(spawned.every((w) => w.pid > 0 && w.generation === 1));
  c.send(1, { cmd: 'echo', data: { deep: [1, 'two'] } });
  const [msg, from] = await once(c, 'message');
  assert.deepStrictEqual(msg, { echo: { deep: [1, 'two'] }, id: 1, generation: 1 });
  assert.strictEqual(from.id, 1);
  const ws = c.workers();
  assert.deepStrictEqual(ws.map((w) => [w.id, w.state]), [[0, 'ready'], [1, 'ready']]);
  assert.strictEqual(c.broadcast({ cmd: 'echo', data: 'all' }), 2);
  let echoed = 0;
  await once(c, 'message', (m) => m.echo === 'all' && ++echoed === 2);
  const exits = [];
  c.on('exit', (e) => exits.push(e.reason));
  await c.stop({ timeout: 5000 });
  assert.deepStrictEqual(exits, ['shutdown', 'shutdown']);
});

test('after a message leaves, primary and worker poll for the answer without sleeping, for a moment', async () => {
  // A pending immediate keeps libuv from blocking in epoll_wait: an answer that comes
  // meanwhile is read without a wake-up. It must end by itself.
  const immediates = () => process.getActiveResourcesInfo().filter((r) => r === 'Immediate').length;
  const c = rcluster.start({ workers: 1, exec: WORKER, args: [], execArgv: [] });
  try {
    await once(c, 'ready');
    await new Promise((r) => setTimeout(r, 20));
    const before = immediates();
    c.send(0, { cmd: 'spin' });
    // A flood of sends keeps one spin going, not one each.
    for (let i = 0; i < 100; i++) c.send(0, { cmd: 'noop' });
    const during = immediates();
    const [msg] = await once(c, 'message', (m) => m.spin);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepStrictEqual([during - before, immediates() - before], [1, 0], 'primary');
    const [wBefore, wDuring, wAfter] = msg.spin;
    assert.deepStrictEqual([wDuring - wBefore, wAfter - wBefore], [1, 0], 'worker');
  } finally {
    await c.stop();
  }
});

test('a cluster given no worker count runs the core\'s default, one per usable CPU', async () => {
  const n = rcluster.defaultWorkers();
  assert.ok(Number.isInteger(n) && n >= 1 && n <= os.availableParallelism(), `${n}`);
  const c = rcluster.start({ exec: WORKER, args: [], execArgv: [] });
  let ready = 0;
  await once(c, 'ready', () => ++ready === n);
  assert.strictEqual(c.workers().length, n);
  await c.stop({ timeout: 5000 });
});

test('unnamed listeners get the core\'s default names, by place', async () => {
  const sock = path.join(os.tmpdir(), `rcluster-names-${process.pid}.sock`);
  const c = rcluster.start({ workers: 1, program: '/bin/sleep', args: ['30'], readyOn: 'spawn',
    listeners: [{ address: 0 }, { address: `unix:${sock}`, name: 'api' }] });
  assert.deepStrictEqual(c.listenerAddresses.map((l) => l.name), ['listen0', 'api']);
  await c.stop({ timeout: 5000 });
});

test('listeners with round-robin dispatch feed worker.serve(http.Server)', async () => {
  const port = await freePort();
  const c = rcluster.start({ workers: 2, exec: WORKER, args: [], execArgv: [], listen: `127.0.0.1:${port}` });
  let ready = 0;
  await once(c, 'ready', () => ++ready === 2);
  assert.deepStrictEqual(c.listenerAddresses, [{ name: 'listen0', address: `127.0.0.1:${port}` }]);
  // EventEmitter's listeners() still works: the addresses do not shadow it.
  const onExit = () => {};
  c.on('exit', onExit);
  assert.deepStrictEqual(c.listeners('exit'), [onExit]);
  c.off('exit', onExit);
  const ids = new Set();
  for (let i = 0; i < 10; i++) ids.add((await get(port)).split(' ')[0]);
  assert.deepStrictEqual([...ids].sort(), ['0', '1']);
  await c.stop();
});

test('with maxInflight 1 a worker reports each closed connection, so the next one comes', async () => {
  // The primary holds a connection back until the worker reported the previous one closed:
  // without the reports, the second request would wait for queueTimeout.
  const port = await freePort();
  const c = rcluster.start({
    workers: 1, exec: WORKER, args: [], execArgv: [], listen: `127.0.0.1:${port}`, maxInflight: 1, queueTimeout: 3000,
  });
  try {
    await once(c, 'ready');
    const started = Date.now();
    for (let i = 0; i < 5; i++) assert.match(await get(port), /^0 1$/);
    assert.ok(Date.now() - started < 2000, `five requests took ${Date.now() - started} ms`);
  } finally {
    await c.stop();
  }
});

test('with maxInflight a connection over the worker\'s maxConnections waits in the primary for room, and then takes no place', async () => {
  // One worker, maxInflight 2, maxConnections 1: the second connection is given back and
  // waits in the primary until the first closes, then the worker serves it. Refused and
  // unreported (as before), it took a place for good; closed, its client lost it.
  const port = await freePort();
  const c = rcluster.start({
    workers: 1, exec: WORKER, args: [], execArgv: [], listen: `127.0.0.1:${port}`, maxInflight: 2, queueTimeout: 3000,
  });
  const held = [];
  const hold = () => new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.on('error', reject);
    held.push(s);
  });
  const limit = async (n) => {
    c.send(0, { cmd: 'maxConnections', n });
    await once(c, 'message', (m) => m.maxConnections !== undefined);
  };
  try {
    await once(c, 'ready');
    await limit(1);
    const first = await hold();
    await new Promise((r) => setTimeout(r, 100)); // handed over and taken
    const second = await hold();
    let text = '';
    second.on('data', (d) => { text += d; });
    const ended = new Promise((resolve) => second.on('close', resolve));
    second.write('GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
    await new Promise((r) => setTimeout(r, 400));
    assert.strictEqual(text, '', 'a connection over maxConnections was answered');
    assert.ok(!second.destroyed, 'a connection over maxConnections was closed');
    const freed = Date.now();
    first.destroy();
    await ended;
    assert.match(text, /\r\n\r\n0 1$/, 'the worker serves it once it has room');
    assert.ok(Date.now() - freed < 1500, `it waited ${Date.now() - freed} ms after the room`);
    await limit(null);
    await hold(); // one place; the other is free
    const started = Date.now();
    assert.match(await get(port), /^0 1$/);
    assert.ok(Date.now() - started < 1500, `the request waited ${Date.now() - started} ms for a place`);
  } finally {
    for (const s of held) s.destroy();
    await c.stop();
  }
});

test('a TCP and a Unix-socket listener side by side each serve many connections', async () => {
  // Each listener's connections are wrapped in their own kind of handle (TCP, Pipe), also
  // after the first one.
  const port = await freePort();
  const sock = path.join(os.tmpdir(), `rcluster-node-${process.pid}.sock`);
  const c = rcluster.start({
    workers: 2, exec: WORKER, args: [], execArgv: [], listen: [`127.0.0.1:${port}`, `unix:${sock}`],
  });
  try {
    let ready = 0;
    await once(c, 'ready', () => ++ready === 2);
    const overUnix = () => new Promise((resolve, reject) => {
      const req = http.get({ socketPath: sock, path: '/', agent: false, headers: { Connection: 'close' } }, (res) => {
        let body = '';
        res.on('data', (d) => { body += d; });
        res.on('end', () => resolve(body));
      });
      req.on('error', reject);
      req.setTimeout(5000, () => req.destroy(new Error('timeout')));
    });
    for (let i = 0; i < 6; i++) {
      assert.match(await get(port), /^[01] 1$/);
      assert.match(await overUnix(), /^[01] 1$/);
    }
  } finally {
    await c.stop();
  }
});

test('maxRequests recycles each worker after its connections, replacement first, and every request is answered', async () => {
  const port = await freePort();
  const c = rcluster.start({
    workers: 2, exec: WORKER, args: [], execArgv: [], listen: `127.0.0.1:${port}`,
    // The primary hands connections over: counted at once (the kernel's turns every 100 ms).
    kernelRoundRobin: false,
    maxRequests: 3, maxRequestsJitter: 1, maxMemory: '1G',
  });
  let ready = 0;
  await once(c, 'ready', () => ++ready === 2);
  const recycling = [];
  c.on('recycling', (e) => recycling.push(e));
  let recycled = 0;
  const twoRecycled = once(c, 'exit', (e) => e.reason === 'max_requests' && ++recycled === 2, 20000);
  try {
    for (let i = 0; i < 16; i++) assert.match(await get(port), /^\d+ 1$/);
    await twoRecycled;
    assert.ok(recycling.length >= 2, JSON.stringify(recycling));
    assert.ok(recycling.every((e) => e.reason === 'max_requests' && e.pid > 0), JSON.stringify(recycling));
    const stats = await c.stats();
    const byReason = stats.workers.reduce((n, w) => n + (w.restarts_by_reason.max_requests || 0), 0);
    assert.ok(byReason >= 2, JSON.stringify(stats.workers));
  } finally {
    await c.stop();
  }
});

test('a crashed worker is restarted by policy; scale(n) and reload() work', async () => {
  const c = rcluster.start({
    workers: 1, exec: WORKER, args: [], execArgv: [],
    restart: { mode: 'on-failure', backoffInitial: 10, jitter: 0 },
  });
  await once(c, 'ready');
  try {
    // Both arrive in one batch of events: listen for them before they can fire.
    const exited = once(c, 'exit');
    const restarting = once(c, 'restarting');
    const readyAgain = once(c, 'ready');
    c.send(0, { cmd: 'crash' });
    const exit = await exited;
    assert.strictEqual(exit.code, 3);
    assert.strictEqual(exit.reason, 'crashed');
    assert.strictEqual((await restarting).id, 0);
    await readyAgain;
    const second = once(c, 'ready', (w) => w.id === 1);
    c.scale(2);
    await second;
    const phases = [];
    c.on('reload', (e) => phases.push(e.phase));
    const { generation } = await c.reload();
    assert.strictEqual(generation, 2);
    assert.deepStrictEqual(phases, ['started', 'done']);
    assert.ok(c.workers().filter((w) => w.state === 'ready').every((w) => w.generation === 2));
  } finally {
    await c.stop();
  }
});

test('a worker whose event loop is blocked is killed by the heartbeat timeout', async () => {
  const c = rcluster.start({
    workers: 1, exec: WORKER, args: [], execArgv: [],
    heartbeatTimeout: 300, restart: 'never',
  });
  await once(c, 'ready');
  // Alive with an idle loop for several timeouts: the heartbeats come from the JS loop.
  await new Promise((r) => setTimeout(r, 1000));
  assert.strictEqual(c.workers()[0].state, 'ready');
  c.send(0, { cmd: 'block', ms: 5000 });
  const exit = await once(c, 'exit');
  assert.strictEqual(exit.reason, 'heartbeat');
  assert.strictEqual(exit.signal, 'SIGKILL');
  await c.stop();
});

test("serialization: 'advanced' carries Map, Date and BigInt", async () => {
  const c = rcluster.start({ workers: 1, exec: WORKER, args: [], execArgv: [], serialization: 'advanced' });
  await once(c, 'ready');
  const data = { m: new Map([[1, 'a']]), d: new Date(5), n: 10n ** 20n };
  c.send(0, { cmd: 'echo', data });
  const [msg] = await once(c, 'message');
  assert.deepStrictEqual(msg.echo, data);
  await c.stop();
});

test('readyOn explicit waits for worker.ready()', async () => {
  const c = rcluster.start({
    workers: 1, exec: WORKER, args: [], execArgv: [], readyOn: 'explicit', env: { EXPLICIT_READY: '1' },
  });
  const order = [];
  c.on('online', () => order.push('online'));
  c.on('ready', () => order.push('ready'));
  await once(c, 'ready');
  assert.deepStrictEqual(order, ['online', 'ready']);
  await c.stop();
});
