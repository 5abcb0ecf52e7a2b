'use strict';
// rcluster's own API: the primary binds 127.0.0.1:8000 and hands each connection to the next
// worker; workers serve it with a plain http.Server. Restarts on failure, reloads on SIGHUP.
//   cd examples/node && npm install && node api_http.js
const rcluster = require('rcluster');
const http = require('http');

if (rcluster.isPrimary) {
  const cluster = rcluster.start({ workers: 2, listen: '127.0.0.1:8000', restart: 'on-failure', heartbeatTimeout: 5000 });
  cluster.on('ready', ({ id, pid }) => console.log(`worker ${id} (pid ${pid}) ready`));
  cluster.on('exit', (e) => console.log(`worker ${e.id} exited: ${e.reason}`));
  cluster.on('message', (msg, from) => console.log(`worker ${from.id} says`, msg));
  process.on('SIGHUP', () => cluster.reload().then(({ generation }) => console.log(`now generation ${generation}`)));
  process.on('SIGINT', () => cluster.stop());
} else {
  const { worker } = rcluster;
  worker.serve(http.createServer((req, res) => res.end(`hello from worker ${worker.id}\n`)));
  worker.send({ started: worker.generation });
}
