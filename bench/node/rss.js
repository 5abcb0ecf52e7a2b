'use strict';
// Memory of a Node primary with 2 idle workers: `node rss.js cluster|rcluster`.
// Prints the primary's RSS before loading the module and with the workers online.
const path = require('path');

const impl = process.argv[2];
const name = impl === 'rcluster' ? path.join(__dirname, '..', '..', 'bindings', 'node') : 'cluster';
if (process.env.RSS_WORKER || require(name).isWorker) {
  setInterval(() => {}, 1000);
  require(name); // keeps the worker side linked (rcluster attaches on require)
} else {
  const before = process.memoryUsage().rss;
  const cluster = require(name);
  cluster.setupPrimary({ exec: __filename, args: [impl], env: undefined });
  const workers = [cluster.fork({ RSS_WORKER: '1' }), cluster.fork({ RSS_WORKER: '1' })];
  let online = 0;
  cluster.on('online', () => {
    if (++online < 2) return;
    setTimeout(() => {
      global.gc?.();
      const after = process.memoryUsage().rss;
      console.log(`rss: ${impl} primary before ${(before / 1048576).toFixed(1)} MB, with 2 workers ${(after / 1048576).toFixed(1)} MB, added ${((after - before) / 1048576).toFixed(1)} MB`);
      for (const w of workers) w.kill();
    }, 500);
  });
}
