'use strict';
// Signals to a Node primary written as the README shows: SIGTERM under load, a second
// SIGTERM, SIGHUP, SIGTTIN/SIGTTOU, a program's own listener, handleSignals: false.
const test = require('node:test');
const assert = require('assert');
const http = require('http');
const { runFixture, freePort } = require('./helpers');

/** Runs the README primary; resolves once it printed READY. `lines` collects its stdout. */
async function startReadme(port, { delay = 0, extra = {}, env = {} } = {}) {
  const lines = [];
  let onReady;
  const ready = new Promise((resolve) => { onReady = resolve; });
  Object.assign(process.env, env);
  const run = runFixture('readme_primary.js', 'rcluster', [`127.0.0.1:${port}`, delay, JSON.stringify(extra)], {
    timeout: 25000,
    onLine: (line) => { lines.push(line); if (line === 'READY') onReady(); },
  });
  for (const k of Object.keys(env)) delete process.env[k];
  const timer = setTimeout(() => onReady(), 15000);
  await Promise.race([ready, run]);
  clearTimeout(timer);
  assert.ok(lines.includes('READY'), `the primary did not get ready: ${lines.join(' | ')}`);
  return { run, lines, child: run.child };
}

/** One request on a connection of its own: 'ok', 'refused' or 'failed' (with the error). */
function request(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false, headers: { Connection: 'close' } }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve(body === 'hi\n' ? 'ok' : `failed: body ${JSON.stringify(body)}`));
      res.on('error', (e) => resolve(`failed: ${e.code || e.message}`));
    });
    req.on('error', (e) => resolve(e.code === 'ECONNREFUSED' ? 'refused' : `failed: ${e.code || e.message}`));
    req.setTimeout(10000, () => req.destroy(new Error('timeout')));
  });
}

/**
 * `clients` loops of requests, each on its own connection, until `until` resolves (bounded
 * by a request count and time too). Counts the outcomes; a failure is counted apart when the
 * request began before `mark()` (in flight at the signal) or after it.
 */
function load(port, clients, until) {
  const stats = { ok: 0, refused: 0, failedInFlight: [], failedAfter: [], inflight: 0, atMark: null };
  let done = false;
  let marked = false;
  until.then(() => { done = true; });
  const deadline = Date.now() + 20000;
  const loop = async () => {
    for (let i = 0; i < 100000 && !done && Date.now() < deadline; i++) {
      const before = !marked;
      stats.inflight++;
      const r = await request(port);
      stats.inflight--;
      if (r === 'ok') stats.ok++;
      else if (r === 'refused') { stats.refused++; await new Promise((res) => setTimeout(res, 5)); }
      else (before ? stats.failedInFlight : stats.failedAfter).push(r);
    }
  };
  const all = Promise.all(Array.from({ length: clients }, loop));
  return { stats, all, mark: () => { marked = true; stats.atMark = stats.inflight; } };
}

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

test('README primary on SIGTERM under load exits 0 after draining, with no accepted request failed', async () => {
  const port = await freePort();
  const { run, child, lines } = await startReadme(port, { delay: 100 });
  const l = load(port, 16, run);
  await sleep(800);
  const okBefore = l.stats.ok;
  l.mark();
  child.kill('SIGTERM');
  const { code, signal } = await run;
  await l.all;
  const s = l.stats;
  console.log(`node SIGTERM: in flight ${s.atMark}, ok ${s.ok}, failed in flight ${s.failedInFlight.length}, ` +
    `failed after the signal ${s.failedAfter.length}, refused ${s.refused}`);
  assert.ok(okBefore > 0, 'the load got answers before the signal');
  assert.ok(s.atMark > 0, 'requests were in flight at the signal');
  assert.strictEqual(signal, null, `killed by ${signal}: ${lines.join(' | ')}`);
  assert.strictEqual(code, 0);
  assert.ok(lines.some((x) => x.startsWith('SIGNAL') && x.includes('"action":"stop"')));
  assert.ok(lines.includes('STOPPED listeners=0'), 'our listeners are removed on stop');
  // Every request in flight at the signal was answered: the workers drained.
  assert.deepStrictEqual(s.failedInFlight, []);
  // A connection the kernel accepted after the signal must not be reset either (refused is
  // fine): this needs the core's stop to close its listeners before the drain.
  assert.deepStrictEqual(s.failedAfter, []);
});

test('a second SIGTERM kills the workers at once', async () => {
  const port = await freePort();
  // Requests that take 20 s keep a graceful stop (kill timeout 20 s) going for that long.
  const { run, child, lines } = await startReadme(port, { delay: 20000, extra: { killTimeout: 20000 } });
  const pending = [request(port), request(port)];
  await sleep(300);
  const t0 = Date.now();
  child.kill('SIGTERM');
  await sleep(300);
  child.kill('SIGTERM');
  const { code } = await run;
  assert.strictEqual(code, 0);
  assert.ok(Date.now() - t0 < 8000, `took ${Date.now() - t0} ms`);
  assert.ok(lines.some((x) => x.includes('"action":"kill"')), lines.join(' | '));
  await Promise.all(pending);
});

test('SIGHUP reloads and SIGTTIN/SIGTTOU scale by one', async () => {
  const port = await freePort();
  const { run, child, lines } = await startReadme(port);
  const waitLine = async (pred, what) => {
    for (let i = 0; i < 200 && !lines.some(pred); i++) await sleep(50);
    assert.ok(lines.some(pred), `no ${what}: ${lines.join(' | ')}`);
  };
  child.kill('SIGHUP');
  await waitLine((x) => x === 'RELOAD done 2', 'reload to generation 2');
  child.kill('SIGTTIN');
  await waitLine((x) => x === 'SCALED 3', 'scale to 3');
  child.kill('SIGTTOU');
  await waitLine((x) => x === 'SCALED 2', 'scale back to 2');
  assert.strictEqual(await request(port), 'ok');
  child.kill('SIGTERM');
  const { code } = await run;
  assert.strictEqual(code, 0);
});

test('Ctrl-C (SIGINT) stops the README primary gracefully: an in-flight request is answered, exit 0', async () => {
  const port = await freePort();
  const { run, child, lines } = await startReadme(port, { delay: 300 });
  const answer = request(port);
  await sleep(100);
  child.kill('SIGINT');
  const { code, signal } = await run;
  assert.strictEqual(signal, null);
  assert.strictEqual(code, 0);
  assert.strictEqual(await answer, 'ok');
  assert.ok(lines.some((x) => x.includes('"signal":"SIGINT","action":"stop"')), lines.join(' | '));
});

test("a program's own SIGTERM listener keeps it: rcluster adds none for that signal", async () => {
  const port = await freePort();
  const { run, child, lines } = await startReadme(port, { env: { OWN_SIGTERM: '1' } });
  // The fixture adds its own listener after start: rcluster's steps aside at delivery.
  child.kill('SIGTERM');
  const { code } = await run;
  assert.strictEqual(code, 0);
  assert.ok(lines.includes('OWN SIGTERM') && lines.includes('OWN STOPPED'), lines.join(' | '));
  assert.ok(!lines.some((x) => x.startsWith('SIGNAL')), lines.join(' | '));
});

test('handleSignals: false installs nothing: SIGTERM ends the process as before', async () => {
  const port = await freePort();
  const { run, child, lines } = await startReadme(port, { extra: { handleSignals: false } });
  assert.ok(lines.includes('LISTENING []'), lines.join(' | '));
  child.kill('SIGTERM');
  const { signal } = await run;
  assert.strictEqual(signal, 'SIGTERM');
});

test('in-process: listeners are added only for signals without one, and removed on stop', async () => {
  const rcluster = require('..');
  const signals = require('../lib/signals');
  const path = require('path');
  const own = () => {};
  process.on('SIGHUP', own);
  try {
    const c = rcluster.start({ workers: 1, exec: path.join(__dirname, 'fixtures', 'api_worker.js'), args: [], execArgv: [] });
    assert.deepStrictEqual(signals.installed().sort(), ['SIGINT', 'SIGTERM', 'SIGTTIN', 'SIGTTOU']);
    assert.strictEqual(process.listenerCount('SIGHUP'), 1);
    await c.stop({ timeout: 5000 });
    assert.deepStrictEqual(signals.installed(), []);
    for (const s of ['SIGINT', 'SIGTERM', 'SIGTTIN', 'SIGTTOU']) assert.strictEqual(process.listenerCount(s), 0, s);
  } finally {
    process.removeListener('SIGHUP', own);
  }
});
