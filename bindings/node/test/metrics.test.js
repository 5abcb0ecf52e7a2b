'use strict';
// The HTTP side of an embedded primary: options.metrics, readyMin and drainDelay reach the
// core, and /metrics and /readyz answer a real HTTP client.
const test = require('node:test');
const assert = require('assert');
const http = require('http');
const net = require('net');
const path = require('path');
const rcluster = require('..');
const { once } = require('./helpers');

const WORKER = path.join(__dirname, 'fixtures', 'api_worker.js');

/** A port nothing listens on now (the core binds it a moment later). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function get(port, urlPath) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'], body }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${urlPath}: no answer within 5 s`)));
    req.on('error', reject);
  });
}

test('metrics and readyMin: /metrics and /readyz of an embedded Node primary answer an HTTP client', async () => {
  const port = await freePort();
  const c = rcluster.start({
    workers: 1, exec: WORKER, args: [], execArgv: [], metrics: `127.0.0.1:${port}`, readyMin: 2, drainDelay: 200,
  });
  try {
    await once(c, 'ready');
    const m = await get(port, '/metrics');
    assert.strictEqual(m.status, 200);
    assert.match(m.type, /^text\/plain; version=0\.0\.4/);
    assert.match(m.body, /^rcluster_workers\{state="ready"\} 1$/m, m.body);
    assert.match(m.body, /^rcluster_workers_desired 1$/m, m.body);
    assert.strictEqual((await get(port, '/healthz')).status, 200);
    // readyMin 2, one worker ready: not ready yet.
    assert.strictEqual((await get(port, '/readyz')).status, 503);
    const second = once(c, 'ready');
    c.scale(2);
    await second;
    assert.strictEqual((await get(port, '/readyz')).status, 200);
  } finally {
    await c.stop({ timeout: 5000 });
  }
});

test('a bad metrics, readyMin or drainDelay is refused with the core error naming the option', () => {
  const bad = [
    [{ metrics: 'nowhere' }, /options\.metrics/],
    [{ metrics: true }, /options\.metrics/],
    [{ readyMin: 0 }, /options\.readyMin/],
    [{ drainDelay: -5 }, /options\.drainDelay/],
  ];
  for (const [opts, named] of bad) {
    assert.throws(() => rcluster.start({ workers: 1, exec: WORKER, ...opts }),
      (e) => e.code === 'ERR_RCLUSTER_INVALID_OPTION' && named.test(e.message), JSON.stringify(opts));
  }
});

const root = process.getuid() === 0;

test('connections the kernel turns give Node workers count in stats() while open and after', { skip: !root && 'the kernel turns need CAP_BPF (root)' }, async () => {
  const port = await freePort();
  const c = rcluster.start({ workers: 2, exec: WORKER, args: [], execArgv: [], listen: `127.0.0.1:${port}` });
  const open = [];
  try {
    let ready = 0;
    await once(c, 'ready', () => ++ready === 2);
    const sum = (st, key) => st.workers.reduce((n, w) => n + w[key], 0);
    // Until both workers have joined the turns, the primary accepts and hands connections
    // over itself (counted in connections_total, not in connections_active in round-robin):
    // warm up, then count from a baseline taken once nothing changes any more.
    for (let i = 0; i < 10; i++) await get(port, '/');
    let base = await c.stats();
    for (let i = 0; i < 50; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      const again = await c.stats();
      const same = sum(again, 'connections_active') === sum(base, 'connections_active');
      base = again;
      if (same) break;
    }
    // Kept-alive connections, each with one answered request: in hand in a worker.
    for (let i = 0; i < 6; i++) {
      const s = net.connect(port, '127.0.0.1');
      open.push(s);
      await new Promise((resolve, reject) => {
        s.once('error', reject);
        s.once('data', () => resolve());
        s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      });
    }
    const st = await c.stats();
    const delta = (now, key) => sum(now, key) - sum(base, key);
    assert.strictEqual(delta(st, 'connections_total'), 6, JSON.stringify(st.workers));
    assert.strictEqual(delta(st, 'connections_active'), 6, JSON.stringify(st.workers));
    for (const s of open.splice(0)) s.destroy();
    // The workers take one off as each closes (bounded wait).
    let after = await c.stats();
    for (let i = 0; i < 50 && delta(after, 'connections_active') > 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      after = await c.stats();
    }
    assert.strictEqual(delta(after, 'connections_active'), 0, JSON.stringify(after.workers));
    assert.strictEqual(delta(after, 'connections_total'), 6, JSON.stringify(after.workers));
  } finally {
    for (const s of open) s.destroy();
    await c.stop({ timeout: 5000 });
  }
});
