'use strict';
// An embedded primary on its control socket: stats(), and the `rcluster` command acting on it
// from outside (ls, reload), as from a shell.
const test = require('node:test');
const assert = require('assert');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFile, spawn, spawnSync } = require('child_process');
const rcluster = require('..');
const { once } = require('./helpers');

const WORKER = path.join(__dirname, 'fixtures', 'api_worker.js');
const REPO = path.join(__dirname, '..', '..', '..');

/** The `rcluster` command of this checkout, built when missing (bounded). */
function rclusterBin() {
  const target = process.env.CARGO_TARGET_DIR || path.join(REPO, 'target');
  const bin = path.join(target, 'debug', 'rcluster');
  if (!fs.existsSync(bin)) {
    const r = spawnSync('cargo', ['build', '-q', '-p', 'rcluster'], { cwd: REPO, stdio: 'inherit', timeout: 600000 });
    assert.strictEqual(r.status, 0, 'cargo build -p rcluster failed');
  }
  return bin;
}

function run(bin, args, env) {
  return new Promise((resolve) => {
    execFile(bin, args, { env, timeout: 20000 }, (err, stdout, stderr) => {
      resolve({ code: err ? err.code : 0, out: stdout + stderr });
    });
  });
}

test('an embedded primary answers stats(), appears in rcluster ls and obeys rcluster reload', async () => {
  const bin = rclusterBin();
  const runtime = fs.mkdtempSync(path.join(os.tmpdir(), 'rcluster-node-ctl-'));
  // The core finds its socket folder through the process environment, as the command does.
  const saved = process.env.XDG_RUNTIME_DIR;
  process.env.XDG_RUNTIME_DIR = runtime;
  const name = `node-ctl-${process.pid}`;
  const c = rcluster.start({ workers: 2, exec: WORKER, args: [], execArgv: [], name, control: 'required' });
  try {
    let ready = 0;
    await once(c, 'ready', () => ++ready === 2);
    const st = await c.stats();
    assert.strictEqual(st.name, name);
    assert.strictEqual(st.pid, process.pid);
    assert.strictEqual(st.workers_desired, 2);
    assert.deepStrictEqual(st.workers.map((w) => [w.slot, w.state]), [[0, 'ready'], [1, 'ready']]);
    assert.ok(st.workers.every((w) => w.rss_bytes > 0 && w.pid > 0), JSON.stringify(st));
    const env = { ...process.env, XDG_RUNTIME_DIR: runtime };
    const ls = await run(bin, ['ls'], env);
    assert.strictEqual(ls.code, 0, ls.out);
    assert.match(ls.out, new RegExp(`${name}\\s+${process.pid}\\s+2/2`));
    const reload = await run(bin, ['reload', name], env);
    assert.strictEqual(reload.code, 0, reload.out);
    assert.match(reload.out, /generation 2 is running on every slot/);
    const after = await c.stats();
    assert.strictEqual(after.generation, 2);
    assert.ok(after.workers.every((w) => w.generation === 2), JSON.stringify(after));
  } finally {
    await c.stop({ timeout: 5000 });
    if (saved === undefined) delete process.env.XDG_RUNTIME_DIR;
    else process.env.XDG_RUNTIME_DIR = saved;
    fs.rmSync(runtime, { recursive: true, force: true });
  }
  await assert.rejects(c.stats(), { code: 'ERR_RCLUSTER_STOPPED' });
});

test('rcluster stop NAME stops an embedded primary: its workers exit and it emits stop', async () => {
  const bin = rclusterBin();
  const runtime = fs.mkdtempSync(path.join(os.tmpdir(), 'rcluster-node-ctl-'));
  const saved = process.env.XDG_RUNTIME_DIR;
  process.env.XDG_RUNTIME_DIR = runtime;
  const name = `node-stop-${process.pid}`;
  const c = rcluster.start({ workers: 1, exec: WORKER, args: [], execArgv: [], name, control: 'required' });
  try {
    await once(c, 'ready');
    const exits = [];
    c.on('exit', (e) => exits.push(e.reason));
    const stopped = once(c, 'stop');
    const r = await run(bin, ['stop', name], { ...process.env, XDG_RUNTIME_DIR: runtime });
    assert.strictEqual(r.code, 0, r.out);
    await stopped;
    assert.deepStrictEqual(exits, ['shutdown']);
  } finally {
    await c.stop({ timeout: 5000 });
    if (saved === undefined) delete process.env.XDG_RUNTIME_DIR;
    else process.env.XDG_RUNTIME_DIR = saved;
    fs.rmSync(runtime, { recursive: true, force: true });
  }
});

test('options.control and options.name are checked', () => {
  assert.throws(() => rcluster.start({ exec: WORKER, control: 'yes' }), { code: 'ERR_RCLUSTER_INVALID_OPTION' });
  assert.throws(() => rcluster.start({ exec: WORKER, name: '' }), { code: 'ERR_RCLUSTER_INVALID_OPTION' });
  // The cluster-compatible API's settings, named as such; nothing is changed by a refusal.
  assert.throws(() => rcluster.setupPrimary({ control: 'yes' }), /settings\.control/);
  assert.throws(() => rcluster.setupPrimary({ metrics: {} }), /settings\.metrics/);
  assert.strictEqual(rcluster.settings.control, undefined);
});

test('a cluster of the cluster-compatible API, named in setupPrimary, answers stats() and rcluster status', async () => {
  const bin = rclusterBin();
  const runtime = fs.mkdtempSync(path.join(os.tmpdir(), 'rcluster-node-ctl-'));
  const env = { ...process.env, XDG_RUNTIME_DIR: runtime };
  const name = `node-compat-${process.pid}`;
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'compat_named.js'), name], {
    env, stdio: ['pipe', 'pipe', 'inherit'],
  });
  let out = '';
  const seen = (text) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${text} in ${out}`)), 15000);
    const check = () => { if (out.includes(text)) { clearTimeout(timer); resolve(); } };
    child.stdout.on('data', (d) => { out += d; check(); });
    check();
  });
  try {
    await seen('READY');
    const st = await run(bin, ['status', name, '--json'], env);
    assert.strictEqual(st.code, 0, st.out);
    const status = JSON.parse(st.out);
    assert.strictEqual(status.name, name);
    assert.strictEqual(status.workers.length, 2);
    child.stdin.write('stats\n');
    await seen('STATS 2 ');
    assert.match(out, new RegExp(`STATS 2 ${name}`));
  } finally {
    child.stdin.end();
    await new Promise((resolve) => { if (child.exitCode !== null) resolve(); else child.on('exit', resolve); });
    fs.rmSync(runtime, { recursive: true, force: true });
  }
});
