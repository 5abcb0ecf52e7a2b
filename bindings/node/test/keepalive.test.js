'use strict';
// Keep-alive clients across rolling reloads: a draining worker finishes the request in hand,
// answers the next one with `Connection: close` and closes only connections that stay quiet,
// so clients that always have a request in flight (like wrk) never see a failed request.
const test = require('node:test');
const assert = require('assert');
const net = require('net');
const path = require('path');
const rcluster = require('..');
const { freePort, once, runFixture } = require('./helpers');

const WORKER = path.join(__dirname, 'fixtures', 'api_worker.js');
const CLIENTS = 50;
const RELOADS = 3;

/**
 * `CLIENTS` keep-alive clients on raw sockets, each sending its next request as soon as the
 * previous answer is complete, reconnecting only after `Connection: close` or an error.
 * Returns the tally and a stop function that resolves once every client has finished.
 */
function startClients(port) {
  const tally = { ok: 0, non2xx: 0, errors: 0, samples: [] };
  let stopping = false;
  const error = (what) => {
    tally.errors++;
    if (tally.samples.length < 10) tally.samples.push(what);
  };
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    clients.push(new Promise((resolve) => {
      const connect = () => {
        if (stopping) { resolve(); return; }
        const s = net.connect(port, '127.0.0.1');
        let buf = Buffer.alloc(0);
        let waiting = false; // a request is out, its answer not yet complete
        let failed = false;
        const send = () => { waiting = true; s.write('GET / HTTP/1.1\r\nHost: t\r\n\r\n'); };
        const fail = (what) => {
          if (failed) return;
          failed = true;
          error(what);
          s.destroy();
        };
        s.on('connect', send);
        s.on('data', (d) => {
          buf = Buffer.concat([buf, d]);
          const end = buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          const head = buf.subarray(0, end).toString('latin1');
          const len = Number((/\r\ncontent-length:\s*(\d+)/i.exec(head) || [])[1] || 0);
          if (buf.length < end + 4 + len) return;
          buf = buf.subarray(end + 4 + len);
          waiting = false;
          const status = Number(head.split(' ')[1]);
          if (status >= 200 && status < 300) tally.ok++;
          else tally.non2xx++;
          if (/\r\nconnection:\s*close/i.test(head) || stopping) s.end();
          else send();
        });
        s.on('error', (e) => fail(`${waiting ? 'read' : 'socket'}: ${e.code || e.message}`));
        s.on('close', () => {
          if (waiting) fail('closed before the answer');
          setImmediate(connect);
        });
        s.setTimeout(10000, () => fail('timeout'));
      };
      connect();
    }));
  }
  return { tally, stop: () => { stopping = true; return Promise.all(clients); } };
}

test('keep-alive clients of worker.serve(http.Server) see no error across three reloads', async () => {
  const port = await freePort();
  const c = rcluster.start({ workers: 2, exec: WORKER, args: [], execArgv: [], listen: `127.0.0.1:${port}` });
  try {
    let ready = 0;
    await once(c, 'ready', () => ++ready === 2);
    const exits = [];
    c.on('exit', (e) => exits.push(`${e.reason} code ${e.code} signal ${e.signal}`));
    const { tally, stop } = startClients(port);
    await new Promise((r) => setTimeout(r, 500));
    for (let i = 0; i < RELOADS; i++) {
      const before = tally.ok;
      await c.reload();
      // Requests keep flowing between reloads, so each reload happens under load.
      const until = Date.now() + 5000;
      while (tally.ok < before + 1000 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 300));
    }
    await stop();
    // Every replaced worker finished its drain and exited 0, before any SIGTERM or SIGKILL.
    assert.deepStrictEqual(exits, Array(2 * RELOADS).fill('requested code 0 signal null'));
    assert.ok(tally.ok > 1000, `only ${tally.ok} answers: the load did not run`);
    assert.deepStrictEqual(
      { errors: tally.errors, non2xx: tally.non2xx },
      { errors: 0, non2xx: 0 },
      `${tally.ok} answers; first errors: ${JSON.stringify(tally.samples)}`,
    );
  } finally {
    await c.stop({ timeout: 5000 });
  }
});

test('keep-alive clients of a classic cluster program see no error across three rolling restarts', async () => {
  // fork + 'listening' + disconnect() of the old worker, whose server listens through the
  // primary (server.listen in a worker): its drain must be as clean.
  const port = await freePort();
  let restarts = 0;
  let ready;
  const started = new Promise((resolve) => { ready = resolve; });
  const run = runFixture('classic_rolling.js', 'rcluster', [port], {
    stdin: 'pipe',
    timeout: 60000,
    onLine: (line, child) => {
      if (line === 'READY') ready(child);
      else if (line.startsWith('RELOADED')) restarts++;
    },
  });
  const child = await started;
  const client = startClients(port);
  const { tally } = client;
  await new Promise((r) => setTimeout(r, 500));
  for (let i = 0; i < RELOADS; i++) {
    const before = tally.ok;
    child.stdin.write('reload\n');
    const until = Date.now() + 20000;
    while (restarts <= i && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    assert.strictEqual(restarts, i + 1, 'the rolling restart did not finish');
    const more = Date.now() + 5000;
    while (tally.ok < before + 1000 && Date.now() < more) await new Promise((r) => setTimeout(r, 20));
  }
  await client.stop();
  child.stdin.end();
  const { code, out } = await run;
  assert.strictEqual(code, 0, out);
  assert.ok(tally.ok > 1000, `only ${tally.ok} answers: the load did not run`);
  assert.deepStrictEqual(
    { errors: tally.errors, non2xx: tally.non2xx },
    { errors: 0, non2xx: 0 },
    `${tally.ok} answers; first errors: ${JSON.stringify(tally.samples)}`,
  );
});
