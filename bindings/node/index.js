'use strict';
// require('rcluster'): rcluster's own API (start, worker) and a drop-in replacement for
// Node's `cluster` module (isPrimary, fork, workers, settings, events, ...).
const { EventEmitter } = require('events');
const child = require('./lib/child');

const rcluster = new EventEmitter();
const self = child.attach();

rcluster.isWorker = self !== null;
rcluster.isPrimary = !rcluster.isWorker;
rcluster.isMaster = rcluster.isPrimary;
rcluster.worker = self || undefined;
rcluster.SCHED_NONE = 1;
rcluster.SCHED_RR = 2;

if (self) {
  rcluster.workers = undefined;
  rcluster.schedulingPolicy = process.env.RCLUSTER_NODE_SCHED === 'none' ? 1 : 2;
  rcluster.settings = {};
} else {
  const { Hub } = require('./lib/cluster');
  const hub = new Hub(rcluster);
  Object.defineProperties(rcluster, {
    workers: { enumerable: true, get: () => hub.workers },
    settings: { enumerable: true, get: () => hub.settings },
    schedulingPolicy: {
      enumerable: true,
      get: () => hub.schedulingPolicy,
      set: (v) => { hub.schedulingPolicy = v; },
    },
  });
  rcluster.fork = (env) => hub.fork(env);
  rcluster.setupPrimary = (settings) => hub.setupPrimary(settings);
  rcluster.setupMaster = rcluster.setupPrimary;
  rcluster.disconnect = (callback) => hub.disconnect(callback);
  rcluster.stats = () => hub.stats();
}

/** Starts a cluster with rcluster's own API (see index.d.ts). */
rcluster.start = (options) => {
  const { start } = require('./lib/primary');
  return start(options);
};
rcluster.Cluster = require('./lib/primary').Cluster;
/** The number of workers start() runs when given none: one per CPU this process may use. */
rcluster.defaultWorkers = () => require('./lib/native').defaultWorkers();
/** A pool of worker processes that run the functions of one file (see index.d.ts). */
rcluster.Pool = require('./lib/pool').Pool;

module.exports = rcluster;
