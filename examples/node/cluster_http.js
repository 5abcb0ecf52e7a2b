'use strict';
// A classic `cluster` program, unchanged except for the require: one worker per CPU serving
// HTTP, re-forked when it crashes.
//   cd examples/node && npm install && node cluster_http.js [port]
const cluster = require('rcluster'); // the only line that differs from a `cluster` program
const http = require('http');
const os = require('os');

const port = Number(process.argv[2]) || 8000;

if (cluster.isPrimary) {
  console.log(`primary ${process.pid} is running`);
  for (let i = 0; i < os.availableParallelism(); i++) cluster.fork();
  cluster.on('listening', (worker, address) => {
    console.log(`worker ${worker.id} (pid ${worker.process.pid}) listening on ${address.port}`);
  });
  cluster.on('exit', (worker, code, signal) => {
    console.log(`worker ${worker.process.pid} died (${signal || code})`);
    if (code !== 0 && !worker.exitedAfterDisconnect) cluster.fork();
  });
} else {
  http.createServer((req, res) => {
    res.end(`hello from worker ${cluster.worker.id} (pid ${process.pid})\n`);
  }).listen(port);
}
