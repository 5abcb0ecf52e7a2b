'use strict';
const os = require('os');

const names = new Map(Object.entries(os.constants.signals).map(([name, n]) => [n, name]));

/** 'SIGTERM' for 15; null when there was no signal. */
function signalName(n) {
  if (n === null || n === undefined) return null;
  return names.get(n) || `SIG${n}`;
}

// The signals a primary handles by default. What each means (stop, a second one: kill now,
// reload, one worker more or less) is decided by the core; these listeners only forward the
// signal number, like the `rcluster` command's signalfd loop.
const HANDLED = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGTTIN', 'SIGTTOU'];

// One set of process listeners for every running cluster that handles signals: a second
// cluster must not see the first one's listener as "the program's own".
const clusters = new Set();
const ours = new Map(); // signal name -> our listener

function deliver(name) {
  // A listener the program added after the cluster started takes over: ours steps aside.
  if (process.listenerCount(name) > 1) return;
  for (const c of [...clusters]) c._onSignal(name, os.constants.signals[name]);
}

/**
 * Starts forwarding the handled signals to `cluster`, for each signal the program has no
 * listener of its own for. Signal listeners do not keep the event loop alive (Node unrefs
 * them), so they never hold a finished program open.
 */
function listen(cluster) {
  clusters.add(cluster);
  for (const name of HANDLED) {
    if (ours.has(name) || process.listenerCount(name) > 0) continue;
    const fn = () => deliver(name);
    ours.set(name, fn);
    process.on(name, fn);
  }
}

/** Stops forwarding to `cluster`; the last cluster to go removes the listeners. */
function unlisten(cluster) {
  clusters.delete(cluster);
  if (clusters.size > 0) return;
  for (const [name, fn] of ours) process.removeListener(name, fn);
  ours.clear();
}

/** The signals rcluster's own listeners forward now (for tests and diagnostics). */
function installed() {
  return [...ours.keys()];
}

module.exports = { signalName, listen, unlisten, installed, HANDLED };
