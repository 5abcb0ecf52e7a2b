'use strict';
// Round-robin as a Node program sees it. With cluster.SCHED_RR (the default) the workers take
// one connection a turn from one socket, an idle worker whose turn it is first; with strict
// turns, and for the listeners of start() served by worker.serve(), the kernel turns (as
// root): each worker accepts from a socket of its own, one after the other, and the primary
// serves what waits for a worker that died or closed.
const test = require('node:test');
const assert = require('assert');
const net = require('net');
const { runFixture, get, freePort, once, startApiWorkers } = require('./helpers');

const root = process.getuid() === 0;
const why = 'loading the kernel round-robin program needs CAP_BPF (root)';

/** Runs fixtures/turns.js and `script(send, port)` once it is READY; resolves its result. */
async function withTurns(script, args = []) {
  const port = await freePort();
  const lines = [];
  const waiters = [];
  let result;
  let failed;
  const run = runFixture('turns.js', 'rcluster', [port, ...args], {
    stdin: 'pipe',
    onLine: async (line, child) => {
      lines.push(line);
      for (const w of waiters.splice(0)) w();
      if (line !== 'READY') return;
      const until = async (prefix) => {
        for (let i = 0; i < 100 && !lines.some((l) => l.startsWith(prefix)); i++) {
          await new Promise((resolve) => { waiters.push(resolve); setTimeout(resolve, 100); });
        }
      };
      const send = async (cmd, answer) => { child.stdin.write(`${cmd}\n`); await until(answer); };
      try { result = await script(send, port); } catch (e) { failed = e; }
      child.stdin.end();
    },
  });
  const { out } = await run;
  if (failed) throw failed;
  return { result, out };
}

test('rcluster: in strict turns connections go to the workers one after the other', { skip: !root && why }, async () => {
  const { result, out } = await withTurns(async (send, port) => {
    const by = [];
    for (let i = 0; i < 12; i++) by.push(await get(port));
    return by;
  }, ['strict']);
  for (let i = 1; i < result.length; i++) assert.notStrictEqual(result[i], result[i - 1], `${result} ${out}`);
});

test('rcluster: connections one at a time are shared by both workers', async () => {
  const { result, out } = await withTurns(async (send, port) => {
    const by = [];
    for (let i = 0; i < 20; i++) by.push(await get(port));
    return by;
  });
  // Not strictly one after the other: a worker may close the last connection just after the
  // client has its answer and connects again, and then looks busier than the other.
  const one = result.filter((w) => w === '1').length;
  assert.ok(one >= 5 && one <= 15, `answered by ${result} ${out}`);
});

test('rcluster: requests one after the other, each after a pause, go to the workers in turn', async () => {
  const { result, out } = await withTurns((send, port) => pausedRequests(port));
  // The worker whose turn it is takes it. The first two may go to whichever looks first, and
  // a worker that was slow to wake takes the next itself (whoever looks first takes them for
  // 20 ms then): three pairs in a row at most. Whoever looks first alone gave 4 to 12.
  assert.ok(repeats(result) <= 3, `answered by ${result} ${out}`);
});

test('rcluster: a worker that replaces one killed with connections in hand takes its turns', async () => {
  const { result, out } = await withTurns(async (send, port) => {
    // Keep-alive connections held open until worker 1 holds one (it counts it in hand).
    const held = [];
    for (let i = 0; i < 6 && !held.some((h) => h.by === '1'); i++) held.push(await holdOpen(port));
    if (!held.some((h) => h.by === '1')) throw new Error(`worker 1 took none of ${held.map((h) => h.by)}`);
    await send('kill 1', 'EXIT 1');
    await send('fork', 'FORKED 3');
    for (const h of held) h.socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    return pausedRequests(port);
  });
  // Worker 3 starts with nothing in hand, not with what worker 1 held when it died: it is
  // seen idle and takes its turns (see the test above for the three pairs).
  assert.ok(repeats(result) <= 3 && result.includes('3'), `answered by ${result} ${out}`);
});

/**
 * 40 requests one after the other, 50 ms apart: both workers are idle and have closed their
 * connections before the next one comes. Resolves the worker that answered each.
 */
async function pausedRequests(port) {
  const by = [];
  for (let i = 0; i < 40; i++) {
    by.push(await get(port));
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return by;
}

/** How many answers came from the same worker as the one before. */
function repeats(by) {
  return by.filter((w, i) => i > 0 && w === by[i - 1]).length;
}

/** A keep-alive connection that had one answer and stays open: `{ socket, by }`. */
function holdOpen(port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    let text = '';
    socket.on('data', (d) => {
      text += d;
      const m = /\r\n\r\n(\d+)$/.exec(text);
      if (m) resolve({ socket, by: m[1] });
    });
    socket.on('error', reject);
    socket.setTimeout(5000, () => socket.destroy(new Error('timeout')));
  });
}

/**
 * 8 clients connect one after the other, each 50 ms after the last has its answer or `wait` ms
 * have passed (an answer from a busy worker waits until it is no longer busy). Resolves the
 * answers.
 */
async function oneAfterTheOther(port, wait) {
  const pending = [];
  for (let i = 0; i < 8; i++) {
    const answer = get(port);
    pending.push(answer);
    await Promise.race([answer, new Promise((resolve) => setTimeout(resolve, wait))]);
    // The other worker closes its end just after the answer (and counts it done then).
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return Promise.all(pending);
}

/** Worker 1's event loop is busy for 3 s meanwhile (see oneAfterTheOther). */
async function whileWorkerOneIsBusy(send, port) {
  await send('busy 1', 'SPINNING 1');
  return oneAfterTheOther(port, 250);
}

test('rcluster: a connection whose turn falls on a busy worker goes to the idle one', async () => {
  const { result, out } = await withTurns(whileWorkerOneIsBusy);
  // Worker 1 takes none while its loop is busy: they wait in the one socket for worker 2.
  assert.ok(result.filter((w) => w === '1').length <= 1, `answered by ${result} ${out}`);
});

test('rcluster: kept-alive clients arriving while a worker hangs are all served by the other, at once', async () => {
  const { result, out } = await withTurns(async (send, port) => {
    await send('busy 1', 'SPINNING 1'); // worker 1's loop is stuck for 3 s, with none in hand
    const started = Date.now();
    const sockets = [];
    const answers = await Promise.all(Array.from({ length: 30 }, () => new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => s.write('GET / HTTP/1.1\r\nHost: t\r\n\r\n'));
      sockets.push(s);
      let text = '';
      s.on('data', (d) => {
        text += d;
        const end = text.indexOf('\r\n\r\n');
        if (end >= 0 && text.length > end + 4) resolve(text.slice(end + 4));
      });
      s.on('error', reject);
    })));
    const took = Date.now() - started;
    for (const s of sockets) s.destroy();
    return { answers, took };
  });
  // Worker 2 holds them all open, 30 beyond worker 1's none: it leaves the next to worker 1
  // for 2 ms at most, then takes, and waits for it no more for a while. Nothing waits for the
  // hung worker's 3 s.
  assert.deepStrictEqual(result.answers, Array(30).fill('2'), out);
  assert.ok(result.took < 1500, `the last answer came after ${result.took} ms`);
});

test('rcluster: in strict turns a busy worker gets its turns all the same', { skip: !root && why }, async () => {
  const { result, out } = await withTurns(whileWorkerOneIsBusy, ['strict']);
  assert.strictEqual(result.filter((w) => w === '1').length, 4, `answered by ${result} ${out}`);
});

test('rcluster: requests waiting for a blocked worker that is killed are served by the other', async () => {
  const { result, out } = await withTurns(async (send, port) => {
    await send('block 1', 'BLOCKED 1');
    await new Promise((resolve) => setTimeout(resolve, 200)); // the loop is stuck now
    // Half of them wait in worker 1's socket: nothing accepts them there.
    const pending = Array.from({ length: 6 }, () => get(port));
    await new Promise((resolve) => setTimeout(resolve, 300));
    await send('kill 1', 'EXIT 1');
    return Promise.all(pending);
  });
  assert.deepStrictEqual(result, ['2', '2', '2', '2', '2', '2'], out);
});

test('rcluster: a worker that closes its server gets no more connections', async () => {
  const { result, out } = await withTurns(async (send, port) => {
    await send('close 1', 'CLOSED 1');
    const by = [];
    for (let i = 0; i < 8; i++) by.push(await get(port));
    return by;
  });
  assert.deepStrictEqual(result, Array(8).fill('2'), out);
});

test("rcluster API: a listener of the configuration takes turns too, and a killed worker's waiting requests go to the other", { skip: !root && why }, async () => {
  const port = await freePort();
  const c = await startApiWorkers(port, { strictTurns: true });
  try {
    // Ready comes with the hello; each worker asks for its socket right after, in serve().
    await new Promise((resolve) => setTimeout(resolve, 300));
    const by = [];
    for (let i = 0; i < 10; i++) by.push((await get(port)).split(' ')[0]);
    for (let i = 1; i < by.length; i++) assert.notStrictEqual(by[i], by[i - 1], `strict turns: ${by}`);

    c.send(1, { cmd: 'block', ms: 3000 });
    await new Promise((resolve) => setTimeout(resolve, 200));
    const pending = Array.from({ length: 6 }, () => get(port));
    await new Promise((resolve) => setTimeout(resolve, 300));
    process.kill(c.workers().find((w) => w.id === 1).pid, 'SIGKILL');
    const answers = (await Promise.all(pending)).map((b) => b.split(' ')[0]);
    assert.deepStrictEqual(answers, ['0', '0', '0', '0', '0', '0']);
  } finally {
    await c.stop();
  }
});

test('rcluster API: closing a served server leaves the turns, and what waits in its own socket is served', { skip: !root && why }, async () => {
  const port = await freePort();
  const c = await startApiWorkers(port, { strictTurns: true });
  try {
    await new Promise((resolve) => setTimeout(resolve, 300)); // serve() asks for its socket
    // Worker 1 is stuck when its server is told to close: its turns keep filling its socket
    // until it runs again.
    c.send(1, { cmd: 'block', ms: 1000 });
    c.send(1, { cmd: 'close' });
    await new Promise((resolve) => setTimeout(resolve, 200));
    const pending = Array.from({ length: 4 }, () => get(port).catch((e) => `failed: ${e.code || e.message}`));
    await once(c, 'message', (m) => m.closed === 1);
    // Those in worker 1's socket are taken by worker 1 as it empties it, or by the primary
    // once worker 1 left the turns (and given to worker 0): either way, answered.
    const answers = await Promise.all(pending);
    assert.ok(answers.every((a) => a === '0 1' || a === '1 1'), answers.join(', '));
    const after = [];
    for (let i = 0; i < 6; i++) after.push((await get(port)).split(' ')[0]);
    assert.deepStrictEqual(after, Array(6).fill('0'));
  } finally {
    await c.stop();
  }
});

test('rcluster API: in the kernel\'s turns a connection whose turn falls on a busy worker goes to the idle one', { skip: !root && why }, async () => {
  const port = await freePort();
  const c = await startApiWorkers(port);
  try {
    await new Promise((resolve) => setTimeout(resolve, 300)); // serve() asks for its socket
    c.send(0, { cmd: 'block', ms: 2000 });
    await new Promise((resolve) => setTimeout(resolve, 100));
    const by = (await oneAfterTheOther(port, 200)).map((a) => a.split(' ')[0]);
    // The first whose turn falls on worker 0 waits in its socket; from then on worker 0 has
    // one in hand and worker 1, which answered its last, none: worker 0 is passed over.
    assert.ok(by.filter((w) => w === '0').length <= 1, `answered by ${by}`);
  } finally {
    await c.stop();
  }
});

test('rcluster API: at a stop, connections waiting in a busy worker\'s own socket are served, not reset', { skip: !root && why }, async () => {
  const port = await freePort();
  const c = await startApiWorkers(port, { workers: 1 });
  let stopped;
  try {
    await new Promise((resolve) => setTimeout(resolve, 300)); // serve() asks for its socket
    assert.strictEqual(await get(port), '0 1');
    c.send(0, { cmd: 'block', ms: 1500 });
    await new Promise((resolve) => setTimeout(resolve, 200));
    // Something for the worker's link before the clients come: when its loop runs again it
    // reads the link (and the stop) before it looks at its listening socket.
    c.send(0, { cmd: 'echo', data: 1 });
    await new Promise((resolve) => setTimeout(resolve, 100));
    // These wait in the worker's socket: the kernel accepted them, the worker's loop is stuck.
    const pending = Array.from({ length: 4 }, () => get(port).catch((e) => `failed: ${e.code || e.message}`));
    await new Promise((resolve) => setTimeout(resolve, 300));
    stopped = c.stop();
    assert.deepStrictEqual(await Promise.all(pending), ['0 1', '0 1', '0 1', '0 1']);
  } finally {
    await (stopped || c.stop());
  }
});
