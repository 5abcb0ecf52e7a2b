'use strict';
// A pool under steady load: INFLIGHT tasks in flight at all times for SECONDS, each echoing a
// small object (a task's usual shape), on rcluster.Pool and piscina in alternated rounds.
// Reports each round's tasks/s, the tasks' latency (p50 / p99 / p99.9, µs, submit to result)
// and the primary's young collections (count, median and longest pause, ms: a pause every task
// in flight waits out).
// Usage: node loaded.js [seconds] [inflight] [rounds]   (bench/pool/run.sh installs piscina)
const fs = require('fs');
const os = require('os');
const path = require('path');
const { PerformanceObserver, constants } = require('perf_hooks');
const { Pool } = require('../../bindings/node');

const SECONDS = +(process.argv[2] || 3);
const INFLIGHT = +(process.argv[3] || 32);
const ROUNDS = +(process.argv[4] || 3);
const WORKERS = 2;
const LAT_MAX = 1 << 21;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcluster-pool-loaded-'));
const TASKS = path.join(dir, 'tasks.js');
fs.writeFileSync(TASKS, 'module.exports = (x) => x;\n');

const POOLS = {
  rcluster: () => new Pool({ filename: TASKS, workers: WORKERS }),
  piscina: () => {
    const { Piscina } = require('piscina');
    return new Piscina({ filename: TASKS, minThreads: WORKERS, maxThreads: WORKERS });
  },
};

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s.length ? s[(s.length - 1) >> 1] : 0; };

async function round(name) {
  const pool = POOLS[name]();
  for (let i = 0; i < 2000; i += 100) {
    await Promise.all(Array.from({ length: 100 }, (_, k) => pool.run({ id: i + k, warm: true })));
  }
  const pauses = [];
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      if (e.detail && e.detail.kind === constants.NODE_PERFORMANCE_GC_MINOR) pauses.push(e.duration);
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  // Latencies in a typed array of a fixed size (a growing array would weigh on the very
  // collections measured here): the first LAT_MAX tasks' of the round.
  const lat = new Float64Array(LAT_MAX);
  let done = 0;
  const end = performance.now() + SECONDS * 1000;
  let seq = 0;
  async function lane() {
    while (performance.now() < end) {
      const id = seq++;
      const t = performance.now();
      await pool.run({ id, user: 'someone', tags: ['a', 'bc'], score: id / 7, ok: true });
      if (done < LAT_MAX) lat[done] = (performance.now() - t) * 1000;
      done++;
    }
  }
  const started = performance.now();
  await Promise.all(Array.from({ length: INFLIGHT }, lane));
  const took = (performance.now() - started) / 1000;
  obs.disconnect();
  await pool.destroy();
  const sorted = lat.subarray(0, Math.min(done, LAT_MAX)).sort();
  return {
    rate: done / took,
    p50: pct(sorted, 0.5),
    p99: pct(sorted, 0.99),
    p999: pct(sorted, 0.999),
    gcs: pauses.length,
    gcMedian: median(pauses),
    gcMax: pauses.length ? Math.max(...pauses) : 0,
  };
}

async function main() {
  console.log(`node ${process.version}, ${os.cpus().length} CPUs; ${WORKERS} workers, ${INFLIGHT} in flight, ${SECONDS} s a round`);
  const all = { rcluster: [], piscina: [] };
  const only = process.env.ONLY;
  for (let r = 1; r <= ROUNDS; r++) {
    const order = (r % 2 ? ['rcluster', 'piscina'] : ['piscina', 'rcluster']).filter((n) => !only || n === only);
    for (const name of order) {
      const x = await round(name);
      all[name].push(x);
      console.log(`round ${r} ${name.padEnd(9)} ${x.rate.toFixed(0).padStart(7)} tasks/s  ` +
        `p50/p99/p99.9 ${x.p50.toFixed(0)}/${x.p99.toFixed(0)}/${x.p999.toFixed(0)} µs  ` +
        `young GCs ${x.gcs}, pause median ${x.gcMedian.toFixed(2)} max ${x.gcMax.toFixed(2)} ms`);
    }
  }
  const m = (name, k) => median(all[name].map((x) => x[k]));
  console.log(`\nmedian of ${ROUNDS} rounds            tasks/s   p50 µs   p99 µs p99.9 µs  GC pause median ms`);
  for (const name of ['rcluster', 'piscina']) {
    console.log(`${name.padEnd(30)} ${m(name, 'rate').toFixed(0).padStart(8)} ${m(name, 'p50').toFixed(0).padStart(8)} ` +
      `${m(name, 'p99').toFixed(0).padStart(8)} ${m(name, 'p999').toFixed(0).padStart(8)} ${m(name, 'gcMedian').toFixed(2).padStart(10)}`);
  }
  const ratio = (k) => (m('rcluster', k) / m('piscina', k)).toFixed(3);
  console.log(`rcluster / piscina: tasks/s ${ratio('rate')}x, p99 ${ratio('p99')}x`);
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((e) => { console.error(e); process.exit(1); });
