'use strict';
// Classic `cluster` programs, with only the require changed, behave as under `cluster`:
// each fixture runs under both modules and the results are compared.
const test = require('node:test');
const assert = require('assert');
const { spawnSync } = require('child_process');
const net = require('net');
const { runFixture, get, freePort } = require('./helpers');

async function httpRun(impl) {
  const port = await freePort();
  const seen = new Set();
  let workers = 0;
  const run = runFixture('classic_http.js', impl, [port], {
    onLine: async (line, child) => {
      if (!line.startsWith('READY')) return;
      workers = Number(line.split(' ')[1]);
      for (let i = 0; i < 8 * workers; i++) seen.add((await get(port)).split(' ')[0]);
      child.kill('SIGTERM');
    },
  });
  const { code, out } = await run;
  return { code, out, workers, seen };
}

/** What `socket` receives until `done(text)` says it is complete; rejects after `ms`. */
function receive(socket, done, ms = 5000) {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => finish(new Error(`no complete answer in ${ms} ms: ${JSON.stringify(text)}`)), ms);
    const onData = (d) => {
      text += d;
      if (done(text)) finish(null);
    };
    const onEnd = () => finish(new Error(`closed after ${JSON.stringify(text)}`));
    function finish(err) {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      if (err) reject(err);
      else resolve(text);
    }
    socket.on('data', onData);
    socket.on('end', onEnd);
  });
}

/**
 * Runs fixture `name` under `impl` (runFixture's `options` besides) until it prints READY:
 * its process and its run.
 */
async function startFixture(name, impl, args, options = {}) {
  let ready;
  const started = new Promise((resolve) => { ready = resolve; });
  const run = runFixture(name, impl, args, {
    ...options,
    onLine: (line, child) => { if (line === 'READY') ready(child); },
  });
  return { child: await started, run };
}

/**
 * classic_drain.js under `impl`: a kept-alive connection that answered once and an upgraded
 * one are open when the primary disconnects the worker. Returns the 'close' listeners the
 * answer reported, whether the kept-alive connection was closed, what the upgraded one echoed
 * a second after the drain began, and the program's end.
 */
async function drainRun(impl) {
  const port = await freePort();
  const { child, run } = await startFixture('classic_drain.js', impl, [port], { stdin: 'pipe' });
  const connect = () => new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.on('error', reject);
  });
  const kept = await connect();
  const keptClosed = new Promise((resolve) => kept.on('close', resolve));
  const answer = receive(kept, (t) => t.includes('\r\n\r\nok'));
  kept.write('GET / HTTP/1.1\r\nHost: t\r\n\r\n');
  const listeners = Number((/x-close-listeners: (\d+)/.exec(await answer) || [])[1]);
  const up = await connect();
  const switched = receive(up, (t) => t.includes('\r\n\r\n'));
  up.write('GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n');
  assert.match(await switched, /^HTTP\/1.1 101/);
  child.stdin.write('drain\n');
  const closed = await Promise.race([keptClosed.then(() => true), delay(3000).then(() => false)]);
  await delay(1000);
  const echo = receive(up, (t) => t.includes('ping'));
  up.write('ping');
  const echoed = await echo.catch((e) => e.message);
  const ended = new Promise((resolve) => up.on('end', resolve));
  up.write('bye');
  await Promise.race([ended, delay(3000)]);
  up.destroy();
  kept.destroy();
  const { code, out } = await run;
  return { listeners, closed, echoed, code, out };
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}


/**
 * Connects to `port` (the socket kept in `clients`) and resolves the first line it reads, or
 * how it ended without one.
 */
function firstLine(port, clients) {
  const s = net.connect(port, '127.0.0.1');
  clients.push(s);
  return new Promise((resolve) => {
    let text = '';
    s.on('data', (d) => {
      text += d;
      if (text.endsWith('\n')) resolve(text.trim());
    });
    s.on('end', () => resolve(`end ${JSON.stringify(text)}`));
    s.on('error', (e) => resolve(e.code));
    s.setTimeout(5000, () => resolve('no answer in 5 s'));
  });
}

/**
 * classic_server_options.js under `impl`: a client writes, ends its side and reads what the
 * worker answers, twice. Returns the answers and the program's end.
 */
async function serverOptionsRun(impl) {
  const port = await freePort();
  const { child, run } = await startFixture('classic_server_options.js', impl, [port]);
  const exchange = () => new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.end('hello'));
    let text = '';
    s.on('data', (d) => { text += d; });
    s.on('end', () => resolve(text));
    s.on('error', reject);
    s.setTimeout(5000, () => s.destroy(new Error(`no answer in 5 s: ${JSON.stringify(text)}`)));
  });
  // Two: rcluster builds a listener's first connection's socket one way, later ones another.
  const answers = [await exchange(), await exchange()];
  child.kill('SIGTERM');
  const { code, out } = await run;
  return { answers, code, out };
}

test('a worker\'s server keeps allowHalfOpen and pauseOnConnect for its connections, as under cluster', async () => {
  const node = await serverOptionsRun('cluster');
  const ours = await serverOptionsRun('rcluster');
  const want = 'read before resume 0; got hello; answered after end';
  assert.deepStrictEqual(node.answers, [want, want], node.out);
  assert.deepStrictEqual(ours.answers, [want, want], ours.out);
  assert.strictEqual(ours.code, node.code, ours.out);
});

/**
 * classic_server_accept.js under `impl` with maxConnections `max`: three clients connect one
 * after the other and stay; each reads what it got (the greeting, or the end of a refused
 * connection). Returns what they got, the server sockets' keep-alive timers (ss) and the
 * program's output.
 */
async function serverAcceptRun(impl, max) {
  const port = await freePort();
  const { child, run } = await startFixture('classic_server_accept.js', impl, [port, max]);
  const clients = [];
  const got = [];
  for (let i = 0; i < 3; i++) got.push(await firstLine(port, clients));
  const ss = spawnSync('ss', ['-tnoH', 'state', 'established', `( sport = :${port} )`], { encoding: 'utf8' });
  if (ss.error || ss.status !== 0) throw new Error(`ss (iproute2) could not list the sockets: ${ss.error || ss.stderr}`);
  const timers = (ss.stdout || '').split('\n').filter(Boolean).map((l) => (/timer:\((\w+)/.exec(l) || [, 'none'])[1]);
  for (const s of clients) s.destroy();
  child.kill('SIGTERM');
  const { code, out } = await run;
  return { got, timers: timers.sort(), code, out, lines: out.split('\n').filter((l) => /^(conn|drop) /.test(l)) };
}

test('a worker\'s server makes its connections as under cluster\'s SCHED_NONE: noDelay, keepAlive, highWaterMark, maxConnections and \'drop\'', async () => {
  const conn = (calls) => `conn hwm 1234/1234 noDelay true keepAlive true 30s setNoDelay calls ${calls}`;
  for (const max of [2, 0]) {
    const node = await serverAcceptRun('cluster', max);
    const ours = await serverAcceptRun('rcluster', max);
    // 2: the third is refused, with its addresses; 0: no limit (net's own reading).
    const want = max === 2
      ? { got: ['hello', 'hello', 'end ""'], timers: ['keepalive', 'keepalive'] }
      : { got: ['hello', 'hello', 'hello'], timers: ['keepalive', 'keepalive', 'keepalive'] };
    for (const r of [node, ours]) {
      assert.deepStrictEqual(r.got, want.got, r.out);
      assert.deepStrictEqual(r.timers, want.timers, `keep-alive timers of the served sockets\n${r.out}`);
      assert.strictEqual(r.code, 0, r.out);
    }
    const refused = max === 2 ? ['drop IPv4 127.0.0.1 local port true'] : [];
    // Node's own accept sets each connection's noDelay with a system call; rcluster's
    // connections inherit it from the listening socket.
    assert.deepStrictEqual(node.lines, [conn(0), conn(1), ...(max === 2 ? [] : [conn(2)]), ...refused], node.out);
    assert.deepStrictEqual(ours.lines, [conn(0), conn(0), ...(max === 2 ? [] : [conn(0)]), ...refused], ours.out);
  }
});

/**
 * classic_max_connections.js under `impl`: two clients connect and stay, which takes both
 * workers to their maxConnections (1); a third connects, and the first leaves 400 ms later.
 * Returns the greetings, how long the third waited for its own, and the program's output.
 */
/**
 * classic_max_connections.js under `impl` (`mode`: '' or 'handover', worker 2's maxConnections
 * `secondMax`): `before` clients connect one after the other, then one more, 400 ms before the
 * client greeted by worker 1 leaves. Returns the greetings in order, how long the last client
 * waited for its own, and the program's end.
 */
async function maxConnectionsRun(impl, mode = '', secondMax = 1) {
  const port = await freePort();
  const before = 2 + (secondMax - 1);
  const { child, run } = await startFixture('classic_max_connections.js', impl, [port, mode, secondMax]);
  const clients = [];
  const greetings = [];
  for (let i = 0; i < before; i++) greetings.push(await firstLine(port, clients));
  const asked = Date.now();
  const leaving = clients[greetings.indexOf('worker 1')];
  setTimeout(() => { if (leaving) leaving.destroy(); }, 400);
  greetings.push(await firstLine(port, clients));
  const waited = Date.now() - asked;
  for (const s of clients) s.destroy();
  child.kill('SIGTERM');
  const { code, out } = await run;
  return { greetings, waited, code, out };
}

const MAX_CONNECTIONS_RUNS = [['cluster', ''], ['rcluster', ''], ['rcluster', 'handover']];

test('under round-robin a worker at its maxConnections leaves the next connection to another, or until it has room, as under cluster', async () => {
  for (const [impl, mode] of MAX_CONNECTIONS_RUNS) {
    const r = await maxConnectionsRun(impl, mode);
    const why = `${impl} ${mode}: ${JSON.stringify(r)}`;
    assert.deepStrictEqual(r.greetings.slice(0, 2).sort(), ['worker 1', 'worker 2'], why);
    // Both workers full: the third waits, for worker 1, whose connection closed.
    assert.strictEqual(r.greetings[2], 'worker 1', why);
    assert.ok(r.waited >= 350, why);
    assert.ok(!r.out.includes('drop'), why);
    assert.strictEqual(r.code, 0, why);
  }
});

test('under round-robin a connection for a worker at its maxConnections goes to the worker with room, as under cluster', async () => {
  for (const [impl, mode] of MAX_CONNECTIONS_RUNS) {
    // Worker 2 takes two: the third connection is worker 1's turn, which is full.
    const r = await maxConnectionsRun(impl, mode, 2);
    const why = `${impl} ${mode}: ${JSON.stringify(r)}`;
    assert.deepStrictEqual(r.greetings.slice(0, 3).sort(), ['worker 1', 'worker 2', 'worker 2'], why);
    // Both full then: the fourth waits for worker 1.
    assert.strictEqual(r.greetings[3], 'worker 1', why);
    assert.ok(r.waited >= 350, why);
    assert.ok(!r.out.includes('drop'), why);
    assert.strictEqual(r.code, 0, why);
  }
});

test('an HTTP connection of a worker\'s listening server has no more listeners than under cluster', async () => {
  const node = await drainRun('cluster');
  const ours = await drainRun('rcluster');
  assert.ok(node.listeners >= 1, node.out);
  assert.strictEqual(ours.listeners, node.listeners, 'rcluster added a \'close\' listener to each connection');
});

for (const impl of ['cluster', 'rcluster']) {
  test(`${impl}: one worker per CPU serving HTTP on one port spreads requests over all workers`, async () => {
    const { code, out, workers, seen } = await httpRun(impl);
    assert.ok(workers >= 2, out);
    assert.ok(!out.includes('WRONG PORT'), out);
    assert.strictEqual(seen.size, workers, `answers from ${[...seen]}`);
    assert.strictEqual(code, 0, out);
  });

  test(`${impl}: a worker's listen on an address in use fails as a bind with EADDRINUSE, naming it once`, async () => {
    const holder = net.createServer();
    await new Promise((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const where = `127.0.0.1:${holder.address().port}`;
    try {
      const { code, out } = await runFixture('classic_in_use.js', impl, [holder.address().port]);
      const line = out.split('\n').find((l) => l.startsWith('ERROR ')) || '';
      assert.match(line, /^ERROR EADDRINUSE -98 bind bind EADDRINUSE[: ]/, out);
      assert.strictEqual(line.split(where).length - 1, 1, line);
      assert.strictEqual(code, 0, out);
    } finally {
      holder.close();
    }
  });

  test(`${impl}: a disconnected worker closes its idle kept-alive connection and leaves an upgraded one to the program`, async () => {
    const r = await drainRun(impl);
    assert.strictEqual(r.closed, true, 'the idle kept-alive connection stayed open');
    assert.strictEqual(r.echoed, 'ping', 'the upgraded connection was closed by the drain');
    assert.match(r.out, /^EXIT 0 null$/m, r.out);
    assert.strictEqual(r.code, 0, r.out);
  });

  test(`${impl}: worker.send broadcast is answered through process.send, with fork(env)`, async () => {
    const { code, out } = await runFixture('classic_broadcast.js', impl);
    const lines = out.trim().split('\n');
    assert.strictEqual(lines[0], '1:a:1:[1,{"x":"y"}] 2:b:2:[1,{"x":"y"}]', out);
    assert.deepStrictEqual(lines.slice(1).sort(), ['exit 1 0 null true', 'exit 2 0 null true'], out);
    assert.strictEqual(code, 0);
  });

  test(`${impl}: worker.kill and worker.process.kill end the worker by that signal`, async () => {
    const { code, out } = await runFixture('classic_kill.js', impl);
    assert.deepStrictEqual(out.trim().split('\n').sort(), [
      'exit 1 null SIGKILL',
      'exit 2 null SIGTERM',
      'process.kill true true',
    ], out);
    assert.strictEqual(code, 0);
  });

  test(`${impl}: bursts of messages both ways arrive in order and intact, callbacks run`, async () => {
    const { code, out } = await runFixture('classic_stream.js', impl);
    assert.deepStrictEqual(out.trim().split('\n'), [
      'worker: 3000 in order ok',
      'primary: 3000 in order ok, callbacks 30',
    ], out);
    assert.strictEqual(code, 0);
  });

  if (impl === 'rcluster') {
    test('rcluster: with advanced serialization both sides refuse a message over the limit naming the same limit', async () => {
      const { code, out } = await runFixture('advanced_limits.js', impl);
      // The limit counts the message body alone (its content type is in the frame header).
      const limit = 16 << 20;
      assert.deepStrictEqual(out.trim().split('\n'), [
        `primary: ERR_RCLUSTER_MESSAGE_TOO_LARGE limit ${limit}`,
        `worker: ERR_RCLUSTER_MESSAGE_TOO_LARGE limit ${limit}`,
      ], out);
      assert.strictEqual(code, 0);
    });

    test('rcluster: a message over the size limit throws at once; its neighbours arrive', async () => {
      const { code, out } = await runFixture('classic_limits.js', impl);
      assert.deepStrictEqual(out.trim().split('\n'), [
        'big: ERR_RCLUSTER_MESSAGE_TOO_LARGE true',
        'callback: null',
        'worker got: 1,2',
      ], out);
      assert.strictEqual(code, 0);
    });
  }

  test(`${impl}: a crashed worker is re-forked in 'exit', a disconnected one is not`, async () => {
    const { code, out } = await runFixture('classic_refork.js', impl);
    assert.deepStrictEqual(out.trim().split('\n'), [
      'online id=1',
      'exit id=1 code=7 signal=null after=false dead=true',
      'online id=2',
      'exit id=2 code=0 signal=null after=true dead=true',
    ], out);
    assert.strictEqual(code, 0, 'nothing keeps the primary alive after the last exit');
  });

  test(`${impl}: rolling restart by fork + 'listening' + disconnect() serves throughout`, async () => {
    const port = await freePort();
    const bodies = [];
    let failures = 0;
    let polling = true;
    let poller = null;
    const run = runFixture('classic_rolling.js', impl, [port], {
      stdin: 'pipe',
      onLine: async (line, child) => {
        if (line === 'READY') {
          poller = (async () => {
            while (polling) {
              try { bodies.push(await get(port)); } catch (e) { failures++; console.error(`request failed: ${e.message} after ${bodies.length}`); }
            }
          })();
          child.stdin.write('reload\n');
        } else if (line.startsWith('RELOADED')) {
          polling = false;
          // The request under way finishes before the workers are stopped.
          poller.then(() => child.stdin.end());
        }
      },
    });
    const { code, out } = await run;
    assert.match(out, /RELOADED 3,4/);
    // Node's own round-robin may fail a request handed to a worker that is closing its
    // server; rcluster's primary stops handing connections to it first.
    if (impl === 'rcluster') assert.strictEqual(failures, 0, `${failures} failed requests`);
    else test.diagnostic?.(`cluster: ${failures} failed requests`);
    assert.ok(bodies.includes('3') || bodies.includes('4'), `new workers served: ${new Set(bodies).size}`);
    assert.strictEqual(code, 0, out);
  });
}
