'use strict';
// Runs a program written for Node's `cluster` with require('cluster') answered by rcluster,
// and nothing else changed: `node with_rcluster.js PROGRAM.js ARGS...`. Workers re-run this
// same command line, so they load rcluster the same way.
const Module = require('module');
const path = require('path');

const rcluster = path.join(__dirname, '..', '..', 'bindings', 'node');
const load = Module._load;
Module._load = function loadWithRcluster(request, ...rest) {
  return load.call(this, request === 'cluster' ? rcluster : request, ...rest);
};
const program = path.resolve(process.argv[2]);
process.argv.splice(1, 2, program); // the program sees its usual argv
// Workers must re-run this wrapper, not the bare program: rcluster forks process.argv[1].
const cluster = require(rcluster);
// RCLUSTER_KERNEL_RR=0: round-robin by the primary's own accept, not by the kernel's turns.
// RCLUSTER_STRICT_TURNS=1: round-robin in strict turns, blind to how busy a worker is.
const kernel = process.env.RCLUSTER_KERNEL_RR === '0' ? { kernelRoundRobin: false } : {};
if (process.env.RCLUSTER_STRICT_TURNS === '1') kernel.strictTurns = true;
// RCLUSTER_MAX_INFLIGHT=N: with the primary accepting, at most N open connections per worker;
// the rest wait in the primary's one queue and go to the first worker that closes one.
if (process.env.RCLUSTER_MAX_INFLIGHT) kernel.maxInflight = Number(process.env.RCLUSTER_MAX_INFLIGHT);
if (cluster.isPrimary) cluster.setupPrimary({ exec: __filename, args: [program, ...process.argv.slice(2)], ...kernel });
require(program);
