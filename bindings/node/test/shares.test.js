'use strict';
// `shared` (cluster.SCHED_NONE): both workers accept from one socket, one connection per turn
// of their event loop, and a worker ahead of the other leaves it the next connections.
const test = require('node:test');
const assert = require('assert');
const fs = require('fs');
const net = require('net');
const path = require('path');
const { spawn } = require('child_process');
const { runFixture, get, freePort, once, startApiWorkers } = require('./helpers');

/**
 * Runs fixtures/shares.js under `impl` and sends it `total` requests, `clients` at a time;
 * resolves how many each worker answered.
 */
async function sharesOf(impl, { slow, total, clients }) {
  const port = await freePort();
  let result;
  let failed;
  const run = runFixture('shares.js', impl, [port, slow], {
    stdin: 'pipe',
    timeout: 30000,
    onLine: async (line, child) => {
      if (!line.startsWith('READY')) return;
      try {
        const by = {};
        let sent = 0;
        const client = async () => {
          while (sent < total) {
            sent++;
            const id = await get(port);
            by[id] = (by[id] || 0) + 1;
          }
        };
        await Promise.all(Array.from({ length: clients }, client));
        result = by;
      } catch (e) { failed = e; }
      child.stdin.end();
    },
  });
  const { out } = await run;
  if (failed) throw failed;
  return { by: result, out };
}

test('rcluster: a slow worker keeps its share of a shared socket', async () => {
  // Worker 2 takes 3 ms a request. Taking whatever waits, worker 1 answers most (Node's own
  // cluster: about 200 of 240); keeping level, it leaves worker 2 a third or more.
  const { by, out } = await sharesOf('rcluster', { slow: 3, total: 240, clients: 6 });
  assert.strictEqual((by['1'] || 0) + (by['2'] || 0), 240, `${JSON.stringify(by)} ${out}`);
  assert.ok((by['2'] || 0) >= 80, `worker 2 answered ${by['2'] || 0} of 240: ${JSON.stringify(by)}`);
});

test('rcluster: a worker stuck on a request does not hold up a shared socket', async () => {
  // Worker 2 spends 1 s on each request: once it has one, worker 1 is far ahead of it, and
  // still takes the rest (keeping level never leaves a connection waiting for long). A
  // connection worker 2 took during its last turn waits for it: 2 s at most, under the
  // clients' 5 s timeout.
  const started = Date.now();
  const { by } = await sharesOf('rcluster', { slow: 1000, total: 60, clients: 4 });
  assert.ok((by['1'] || 0) >= 56, `answered by ${JSON.stringify(by)}`);
  assert.ok(Date.now() - started < 15000, `took ${Date.now() - started} ms`);
});

test('rcluster API: a shared listener of start() is served by worker.serve(), and counted', async () => {
  const port = await freePort();
  const c = await startApiWorkers(port, { dispatch: 'shared' });
  try {
    const answers = [];
    for (let i = 0; i < 20; i++) answers.push(await get(port));
    assert.ok(answers.every((a) => a === '0 1' || a === '1 1'), answers.join(', '));
    const total = (await c.stats()).workers.reduce((n, w) => n + w.connections_total, 0);
    assert.strictEqual(total, 20);
  } finally {
    await c.stop();
  }
});

/** The inode of the socket listening on 127.0.0.1:`port`, from /proc/net/tcp. */
function listeningInode(port) {
  const want = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[1] === want && f[3] === '0A') return f[9];
  }
  return null;
}

/** How many descriptors of process `pid` refer to socket `inode`. */
function descriptorsOf(pid, inode) {
  const dir = `/proc/${pid}/fd`;
  return fs.readdirSync(dir).filter((fd) => {
    try { return fs.readlinkSync(`${dir}/${fd}`) === `socket:[${inode}]`; } catch { return false; }
  }).length;
}

test('rcluster API: a worker holds one descriptor of a shared listener, and none once its server closed', async () => {
  // Each worker inherits the listener and asks the primary for it by name; the answer's copy
  // replaces the inherited descriptor, which must be closed, and closing the server closes the
  // copy. A leak of either keeps the port open in the worker.
  const port = await freePort();
  const c = await startApiWorkers(port, { dispatch: 'shared' });
  try {
    assert.ok(['0 1', '1 1'].includes(await get(port)));
    const inode = listeningInode(port);
    assert.ok(inode, `no socket listens on port ${port}`);
    const pids = c.workers().map((w) => w.pid);
    assert.deepStrictEqual(pids.map((p) => descriptorsOf(p, inode)), [1, 1]);
    c.send(0, { cmd: 'close' });
    await once(c, 'message', (m) => m.closed === 0);
    assert.deepStrictEqual(pids.map((p) => descriptorsOf(p, inode)), [0, 1]);
    // The other worker still serves, and alone.
    for (let i = 0; i < 5; i++) assert.strictEqual(await get(port), '1 1');
  } finally {
    await c.stop();
  }
});

test('rcluster API: connections handed to a worker before it closed its server are answered, and then none come', async () => {
  // The primary accepts and hands connections over. Worker 1 is stuck while its server is
  // told to close and its turns are handed to it: they reach it after the close, before the
  // primary has read that it closed.
  const port = await freePort();
  const c = await startApiWorkers(port, { kernelRoundRobin: false, strictTurns: true });
  try {
    c.send(1, { cmd: 'block', ms: 1000 });
    c.send(1, { cmd: 'close' });
    await new Promise((resolve) => setTimeout(resolve, 200));
    const pending = Array.from({ length: 6 }, () => get(port).catch((e) => `failed: ${e.message}`));
    await once(c, 'message', (m) => m.closed === 1);
    const answers = await Promise.all(pending);
    assert.ok(answers.every((a) => a === '0 1' || a === '1 1'), answers.join(', '));
    assert.ok(answers.includes('1 1'), `none was handed to worker 1: ${answers.join(', ')}`);
    const after = [];
    for (let i = 0; i < 6; i++) after.push(await get(port));
    assert.deepStrictEqual(after, Array(6).fill('0 1'));
  } finally {
    await c.stop();
  }
});

test('rcluster: a rolling restart of SCHED_NONE workers under load fails no request', async () => {
  const port = await freePort();
  const bodies = [];
  let failures = 0;
  let polling = true;
  let pollers;
  const run = runFixture('classic_rolling.js', 'rcluster', [port, 'none'], {
    stdin: 'pipe',
    timeout: 30000,
    onLine: async (line, child) => {
      if (line === 'READY') {
        // Eight clients at once, so that connections wait in the socket as workers leave it.
        pollers = Promise.all(Array.from({ length: 8 }, async () => {
          while (polling) {
            try { bodies.push(await get(port)); } catch (e) { failures++; console.error(`request failed: ${e.message}`); }
          }
        }));
        child.stdin.write('reload\n');
      } else if (line.startsWith('RELOADED')) {
        // The new workers serve on: the clients go on until both have answered (5 s at most;
        // on a loaded machine the last one may have taken nothing yet).
        const until = Date.now() + 5000;
        while (Date.now() < until && !(bodies.includes('3') && bodies.includes('4'))) {
          await new Promise((r) => setTimeout(r, 20));
        }
        polling = false;
        pollers.then(() => child.stdin.end());
      }
    },
  });
  const { code, out } = await run;
  assert.match(out, /RELOADED 3,4/);
  assert.strictEqual(failures, 0, `${failures} of ${bodies.length + failures} requests failed`);
  assert.ok(bodies.includes('3') && bodies.includes('4'), `served by ${[...new Set(bodies)]}`);
  assert.strictEqual(code, 0, out);
});

test('rcluster: a worker out of descriptors pauses accepting on a shared socket instead of spinning', async () => {
  // Both workers may open 100 descriptors; 200 clients that connect and send nothing fill
  // them. What cannot be accepted waits in the socket, the workers' loops stay idle, and once
  // the clients leave the cluster serves again.
  const port = await freePort();
  const fixture = path.join(__dirname, 'fixtures', 'shares.js');
  const child = spawn('bash', ['-c', `ulimit -n 100 && exec "${process.execPath}" "${fixture}" ${port} 0`], {
    env: { ...process.env, CLUSTER_IMPL: path.join(__dirname, '..') },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let out = '';
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not ready: ${out}`)), 15000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /READY ([\d ]+)\n/.exec(out);
      if (m) { clearTimeout(timer); resolve(m[1].trim().split(' ').map(Number)); }
    });
  });
  const idle = [];
  try {
    const pids = await ready;
    const ticks = () => pids.map((p) => {
      const f = fs.readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1].split(' ');
      return Number(f[11]) + Number(f[12]);
    });
    for (let i = 0; i < 200; i++) {
      const s = net.connect(port, '127.0.0.1');
      s.on('error', () => {});
      idle.push(s);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const before = ticks();
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const used = ticks().map((t, i) => t - before[i]);
    // A loop retrying accept on a full descriptor table spins at a whole CPU (100 ticks a
    // second); paused, a worker wakes ten times a second.
    assert.ok(used.every((t) => t < 30), `CPU ticks in 1 s while full: ${used}`);
    for (const s of idle) s.destroy();
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.match(await get(port), /^[12]$/);
  } finally {
    for (const s of idle) s.destroy();
    child.stdin.end();
    await new Promise((resolve) => { if (child.exitCode !== null) resolve(); else child.on('exit', resolve); });
  }
});
