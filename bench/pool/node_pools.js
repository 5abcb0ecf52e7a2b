'use strict';
// rcluster.Pool against piscina (worker threads) and workerpool (child processes), in one run:
//   tiny tasks submitted all at once, CPU-bound tasks on 2 workers against 1, the latency of
//   one task on an idle pool, and the primary's RSS while many tasks pass through a small queue.
// Usage: node node_pools.js [tinyTasks] [cpuTasks] [latencyRuns] [memTasks]
// The anchors come from this folder's node_modules (bench/pool/run.sh installs them).
const fs = require('fs');
const os = require('os');
const path = require('path');
const { Pool } = require('../../bindings/node');

const MEMORY_ONLY = process.argv[2] === '--memory';
if (MEMORY_ONLY) process.argv.splice(2, 1, '0');
const TINY = +(process.argv[2] || 50000);
const CPU = +(process.argv[3] || 40);
const LAT = +(process.argv[4] || 2000);
const MEM = +(process.argv[5] || 1000000);
const WORKERS = 2;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcluster-pool-bench-'));
const TASKS = path.join(dir, 'tasks.js');
// The CPU task: about 20 ms of arithmetic, the same in every pool.
fs.writeFileSync(TASKS, `
module.exports = (x) => x;
module.exports.echo = (x) => x;
module.exports.cpu = (n) => { let s = 0; for (let i = 0; i < n; i++) s = (s + i * i) % 1000003; return s; };
`);
fs.writeFileSync(path.join(dir, 'wp_worker.js'),
  `const workerpool = require(${JSON.stringify(require.resolve('workerpool'))});\n` +
  `const t = require(${JSON.stringify(TASKS)});\nworkerpool.worker({ echo: t.echo, cpu: t.cpu });\n`);
const CPU_N = 4_000_000;

const now = () => Number(process.hrtime.bigint()) / 1e6;

/** The pools, each as { start(workers), run(name, arg), stop() }. */
const POOLS = {
  rcluster: (extra = {}) => ({
    start(w) { this.p = new Pool({ filename: TASKS, workers: w, ...extra }); },
    run(name, arg) { return this.p.run(arg, { name }); },
    stop() { return this.p.destroy(); },
  }),
  piscina: () => ({
    start(w) {
      const { Piscina } = require('piscina');
      this.p = new Piscina({ filename: TASKS, minThreads: w, maxThreads: w });
    },
    run(name, arg) { return this.p.run(arg, { name }); },
    stop() { return this.p.destroy(); },
  }),
  workerpool: () => ({
    start(w) {
      const wp = require('workerpool');
      this.p = wp.pool(path.join(dir, 'wp_worker.js'), { minWorkers: w, maxWorkers: w, workerType: 'process' });
    },
    run(name, arg) { return this.p.exec(name, [arg]); },
    stop() { return this.p.terminate(true); },
  }),
};

async function warm(pool, w) {
  await Promise.all(Array.from({ length: 200 * w }, (_, i) => pool.run('echo', i)));
}

async function tiny(make) {
  const pool = make();
  pool.start(WORKERS);
  await warm(pool, WORKERS);
  const t = now();
  await Promise.all(Array.from({ length: TINY }, (_, i) => pool.run('echo', i)));
  const rate = TINY / ((now() - t) / 1000);
  await pool.stop();
  return rate;
}

async function cpu(make, w) {
  const pool = make();
  pool.start(w);
  await warm(pool, w);
  const t = now();
  await Promise.all(Array.from({ length: CPU }, () => pool.run('cpu', CPU_N)));
  const ms = now() - t;
  await pool.stop();
  return ms;
}

async function latency(make) {
  const pool = make();
  pool.start(WORKERS);
  await warm(pool, WORKERS);
  const us = [];
  for (let i = 0; i < LAT; i++) {
    const t = now();
    await pool.run('echo', i);
    us.push((now() - t) * 1000);
  }
  await pool.stop();
  us.sort((a, b) => a - b);
  return [us[Math.floor(LAT * 0.5)], us[Math.floor(LAT * 0.99)]];
}

function rssMb() {
  return process.memoryUsage().rss / (1 << 20);
}

/** MEM tasks through a queue of 1,000 (whenFull: 'wait'), submitted 10,000 at a time. */
async function memory() {
  const pool = new Pool({ filename: TASKS, workers: WORKERS, maxQueue: 1000, whenFull: 'wait' });
  await warm({ run: (n, a) => pool.run(a, { name: n }) }, WORKERS);
  const start = rssMb();
  // The heaps grow to their working size first; "flat" is about what follows.
  let warmed = start;
  let max = start;
  const t = now();
  for (let done = 0; done < MEM; done += 10000) {
    const n = Math.min(10000, MEM - done);
    await Promise.all(Array.from({ length: n }, (_, i) => pool.run(i, { name: 'echo' })));
    if (done < MEM / 10) warmed = rssMb();
    else max = Math.max(max, rssMb());
  }
  const rate = MEM / ((now() - t) / 1000);
  const s = pool.stats();
  await pool.destroy();
  return { start, warmed, max, end: rssMb(), rate, completed: s.completed };
}

const fmt = (x) => Math.round(x).toLocaleString('en-US');

async function memoryOnly() {
  const m = await memory();
  console.log(`rcluster primary RSS MB: start ${m.start.toFixed(1)}, after the first 10% ${m.warmed.toFixed(1)}, ` +
    `max after that ${m.max.toFixed(1)}, end ${m.end.toFixed(1)}; ` +
    `${fmt(m.completed)} completed at ${fmt(m.rate)} tasks/s`);
}

(async () => {
  if (MEMORY_ONLY) {
    await memoryOnly();
    fs.rmSync(dir, { recursive: true });
    return;
  }
  console.log(`node ${process.version}, ${os.cpus().length} CPUs, load ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  console.log(`\n-- tiny tasks (echo), ${fmt(TINY)} submitted at once, ${WORKERS} workers: tasks/s`);
  const rates = {};
  rates.piscina = await tiny(POOLS.piscina);
  console.log(`piscina (threads)              ${fmt(rates.piscina)}`);
  rates.workerpool = await tiny(POOLS.workerpool);
  console.log(`workerpool (processes)         ${fmt(rates.workerpool)}`);
  rates.rcluster = await tiny(() => POOLS.rcluster());
  console.log(`rcluster (processes)           ${fmt(rates.rcluster)}   ` +
    `${(rates.rcluster / rates.piscina).toFixed(2)}x piscina, ${(rates.rcluster / rates.workerpool).toFixed(2)}x workerpool`);
  rates.batched = await tiny(() => POOLS.rcluster({ concurrentTasksPerWorker: 32 }));
  console.log(`rcluster, 32 tasks per worker  ${fmt(rates.batched)}   ` +
    `${(rates.batched / rates.piscina).toFixed(2)}x piscina, ${(rates.batched / rates.workerpool).toFixed(2)}x workerpool`);

  console.log(`\n-- CPU-bound: ${CPU} tasks of ~${CPU_N / 1e6}M steps: ms with 1 and 2 workers`);
  for (const name of ['rcluster', 'piscina', 'workerpool']) {
    const make = name === 'rcluster' ? () => POOLS.rcluster() : POOLS[name];
    const one = await cpu(make, 1);
    const two = await cpu(make, 2);
    console.log(`${name.padEnd(30)} ${fmt(one)} / ${fmt(two)}   speed-up ${(one / two).toFixed(2)}x`);
  }

  console.log(`\n-- latency of one task on an idle pool (${fmt(LAT)} in turn): p50 / p99 µs`);
  for (const name of ['rcluster', 'piscina', 'workerpool']) {
    const make = name === 'rcluster' ? () => POOLS.rcluster() : POOLS[name];
    const [p50, p99] = await latency(make);
    console.log(`${name.padEnd(30)} ${fmt(p50)} / ${fmt(p99)}`);
  }

  console.log(`\n-- memory: ${fmt(MEM)} tasks through maxQueue 1,000 (whenFull: 'wait'), 10,000 submitted at a time`);
  // In a process of its own, so that what the other pools left behind does not count.
  const child = require('child_process').spawnSync(process.execPath, [__filename, '--memory', '0', '0', String(MEM)],
    { stdio: ['ignore', 'inherit', 'inherit'], timeout: 600000 });
  if (child.status !== 0) console.log(`memory run failed: ${child.status ?? child.signal}`);
  fs.rmSync(dir, { recursive: true });
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
