'use strict';
// A pool of 8 worker processes sorting a million random numbers 100 times, all at once:
// Promise.all over pool.run(). This one file is both the program and the task file: the pool's
// workers require it, and only the program (require.main) runs the part at the bottom.
//   cd examples/node && npm install && node pool.js
const { Pool } = require('rcluster');

/** The task: sorts `count` random numbers and tells what came out. */
function sortRandom(count) {
  const numbers = new Float64Array(count);
  for (let i = 0; i < count; i++) numbers[i] = Math.random();
  numbers.sort();
  return { pid: process.pid, min: numbers[0], median: numbers[count >> 1], max: numbers[count - 1] };
}

module.exports = sortRandom;

if (require.main === module) {
  (async () => {
    const pool = new Pool({ filename: __filename, workers: 8 });
    const started = Date.now();
    try {
      const results = await Promise.all(Array.from({ length: 100 }, () => pool.run(1_000_000)));
      const pids = new Set(results.map((r) => r.pid));
      const medians = results.map((r) => r.median).sort();
      console.log(`100 sorts of 1,000,000 numbers on ${pids.size} workers in ${Date.now() - started} ms; ` +
        `median of medians ${medians[50].toFixed(4)}`);
      console.log(pool.stats());
    } finally {
      await pool.destroy();
    }
  })();
}
