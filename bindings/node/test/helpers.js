'use strict';
const { spawn } = require('child_process');
const http = require('http');
const net = require('net');
const path = require('path');

const RCLUSTER = path.join(__dirname, '..');
const IMPLS = { rcluster: RCLUSTER, cluster: 'cluster' };

/** Runs a fixture under one implementation; resolves { code, signal, out }. Bounded. */
function runFixture(name, impl, args = [], { timeout = 20000, onLine, stdin = 'ignore' } = {}) {
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', name), ...args.map(String)], {
    env: { ...process.env, CLUSTER_IMPL: IMPLS[impl] },
    stdio: [stdin, 'pipe', 'inherit'],
  });
  let out = '';
  let buf = '';
  child.stdout.on('data', (d) => {
    out += d;
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (onLine) onLine(line, child);
    }
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
  const done = new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out });
    });
  });
  done.child = child;
  return done;
}

function get(port, { close = true } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false, headers: close ? { Connection: 'close' } : {} }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error('timeout')));
  });
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** The next `event` of `emitter` whose arguments satisfy `pred`, within `ms`. */
function once(emitter, event, pred = () => true, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`no '${event}' within ${ms} ms`));
    }, ms);
    function on(...args) {
      if (!pred(...args)) return;
      clearTimeout(timer);
      emitter.off(event, on);
      resolve(args.length > 1 ? args : args[0]);
    }
    emitter.on(event, on);
  });
}

/**
 * Starts fixtures/api_worker.js under rcluster's API, listening on 127.0.0.1:`port`, with
 * `options` over 2 workers and no restarts; resolves the cluster once every worker is ready
 * (stopped again if they are not).
 */
async function startApiWorkers(port, options = {}) {
  const rcluster = require(RCLUSTER);
  const c = rcluster.start({
    workers: 2, exec: path.join(__dirname, 'fixtures', 'api_worker.js'), args: [], execArgv: [],
    listen: `127.0.0.1:${port}`, restart: 'never', ...options,
  });
  const workers = options.workers || 2;
  let ready = 0;
  try {
    await once(c, 'ready', () => ++ready === workers);
  } catch (e) {
    await c.stop();
    throw e;
  }
  return c;
}

module.exports = { RCLUSTER, runFixture, get, freePort, once, startApiWorkers };
