'use strict';
// The `cluster`-compatible primary: fork(), workers, settings, and the events of Node's
// cluster module, on one core supervisor.
//
// Each fork() adds one slot to the supervisor (restart policy 'never', as `cluster` restarts
// nothing by itself), so a worker's id is its slot + 1 and ids are never reused, as in Node.
const { EventEmitter } = require('events');
const os = require('os');
const path = require('path');
const native = require('./native');
const codec = require('./codec');
const { Outbox } = require('./outbox');
const { spinAfterSend } = require('./spin');
const { signalName } = require('./signals');
const { rclusterError, invalidOption } = require('./errors');
const options = require('./options');

const SCHED_NONE = 1;
const SCHED_RR = 2;
const SPAWN_TIMEOUT_MS = 10000;

class ProcessInfo extends EventEmitter {
  // `signal` sends a signal to the worker through the core (see Worker), which records it so
  // that the exit is reported as asked for, and never signals a pid it has already reaped.
  constructor(signal) {
    super();
    this._signal = signal;
    this.pid = undefined;
    this.exitCode = null;
    this.signalCode = null;
    this.connected = true;
    this.killed = false;
  }

  kill(signal = 'SIGTERM') {
    if (this.pid === undefined || this.exitCode !== null || this.signalCode !== null) return false;
    try {
      const number = typeof signal === 'number' ? signal : os.constants.signals[signal];
      if (number === undefined) return false;
      this._signal(number);
      this.killed = true;
      return true;
    } catch {
      return false;
    }
  }
}

/** A worker as the primary sees it (Node's cluster Worker). */
class Worker extends EventEmitter {
  constructor(hub, slot) {
    super();
    this._hub = hub;
    this._slot = slot;
    this.id = slot + 1;
    this.process = new ProcessInfo((signal) => hub._native.kill(slot, signal));
    this.state = 'none';
    this.exitedAfterDisconnect = undefined;
    this._disconnectSaid = false;
    const native = hub._native;
    this._outbox = new Outbox((joined) => native.sendJson(slot, joined), native.maxMessage, (err) => {
      // A batch sent after send() returned failed: the worker died meanwhile (its 'exit'
      // follows), or its queue is full. Reported where someone listens, else raised.
      if (this.listenerCount('error') > 0) this.emit('error', err);
      else if (err.code !== 'ERR_RCLUSTER_NO_SUCH_WORKER') throw err;
    });
  }

  send(message, handle, options, callback) {
    callback = [handle, options, callback].find((a) => typeof a === 'function');
    try {
      if (!this.isConnected()) throw rclusterError('ERR_IPC_CHANNEL_CLOSED', 'Channel closed');
      const contentType = codec.contentTypeOf(options);
      if (contentType === undefined && this._hub.settings.serialization === 'json') {
        this._outbox.push(codec.jsonText(message), callback);
        return true;
      }
      this._outbox.flush();
      const [type, data] = codec.encode(message, this._hub.settings.serialization, contentType);
      this._hub._native.send(this._slot, type, data);
      spinAfterSend();
    } catch (e) {
      if (callback) { process.nextTick(callback, e); return false; }
      throw e;
    }
    if (callback) process.nextTick(callback, null);
    return true;
  }

  disconnect() {
    this.exitedAfterDisconnect = true;
    if (this.isConnected()) {
      this.state = 'disconnecting';
      try {
        this._outbox.flush();
        this._hub._native.send(this._slot, codec.CONTENT.binding, JSON.stringify({ act: 'disconnect' }));
      } catch { /* it is exiting already */ }
    }
    return this;
  }

  destroy(signal) {
    return this.kill(signal);
  }

  kill(signal = 'SIGTERM') {
    this.exitedAfterDisconnect = true;
    try { this._outbox.flush(); } catch { /* it is being killed */ }
    this.process.kill(signal);
  }

  isConnected() {
    return this.state !== 'dead' && this.state !== 'disconnected' && this.state !== 'disconnecting';
  }

  isDead() {
    return this.state === 'dead';
  }
}

/** The primary half of the module object (`this` is the module's EventEmitter). */
class Hub {
  constructor(emitter) {
    this._emitter = emitter;
    this._native = null;
    this._bySlot = new Map();
    this._backlog = [];
    const onRun = (id, pid, texts) => {
      const worker = this._bySlot.get(id);
      if (!worker) return;
      codec.eachJson(texts, (message) => {
        worker.emit('message', message, undefined);
        emitter.emit('message', worker, message, undefined);
      });
    };
    this._take = (items) => codec.takeEvents(items, onRun, (ev) => this._dispatch(ev));
    this.workers = {};
    this.settings = {};
    this.schedulingPolicy = process.env.NODE_CLUSTER_SCHED_POLICY === 'none' ? SCHED_NONE : SCHED_RR;
  }

  setupPrimary(settings = {}) {
    if (settings === null || typeof settings !== 'object') {
      throw invalidOption('settings', settings, 'must be an object');
    }
    const s = {
      args: process.argv.slice(2),
      exec: process.argv[1],
      execArgv: process.execArgv,
      silent: false,
      ...this.settings,
      ...settings,
    };
    s.serialization = codec.checkSerialization(s.serialization, 'settings.serialization');
    if (typeof s.exec !== 'string') throw invalidOption('settings.exec', s.exec, 'must be a path to a script');
    if (!Array.isArray(s.args)) throw invalidOption('settings.args', s.args, 'must be an array of strings');
    if (!Array.isArray(s.execArgv)) throw invalidOption('settings.execArgv', s.execArgv, 'must be an array of strings');
    if (s.kernelRoundRobin !== undefined && typeof s.kernelRoundRobin !== 'boolean') {
      throw invalidOption('settings.kernelRoundRobin', s.kernelRoundRobin, 'must be true or false');
    }
    if (s.strictTurns !== undefined && typeof s.strictTurns !== 'boolean') {
      throw invalidOption('settings.strictTurns', s.strictTurns, 'must be true or false');
    }
    // rcluster's own: the control socket (`rcluster status NAME` from a shell) and metrics.
    options.control(s, s.exec, 'settings.');
    options.address(s, 'metrics', 'settings.');
    this.settings = s;
    process.nextTick(() => this._emitter.emit('setup', s));
  }

  _start() {
    const s = this.settings;
    // How the workers' server.listen() is served. SCHED_NONE, and SCHED_RR unless strict
    // turns or the primary accepting were asked for: one socket every worker accepts from,
    // one connection a turn, the shares kept level (with SCHED_RR, the next connection left
    // to an idle worker whose turn it is). A connection is bound to a worker only when that
    // worker takes it, so none waits behind a busy worker (a GC pause, a long request) while
    // another is free. Otherwise the kernel's turns (as root) or the primary's.
    const rr = this.schedulingPolicy !== SCHED_NONE;
    const turns = rr && (s.strictTurns === true || s.kernelRoundRobin === false);
    const env = [
      ['RCLUSTER_NODE_COMPAT', '1'],
      ['RCLUSTER_NODE_SCHED', rr ? 'rr' : 'none'],
      ['RCLUSTER_NODE_DISPATCH', turns ? 'rr' : 'shared'],
      ['RCLUSTER_NODE_SERIALIZATION', s.serialization],
    ];
    const opts = {
      workers: 1,
      argv: [process.execPath, ...s.execArgv, path.resolve(s.cwd || '.', s.exec), ...s.args],
      env,
      cwd: s.cwd,
      restart: 'never',
      readyOn: 'hello',
      listeners: [],
    };
    if (s.heartbeatTimeout !== undefined) opts.heartbeatTimeout = s.heartbeatTimeout;
    if (s.killTimeout !== undefined) opts.killTimeout = s.killTimeout;
    if (s.kernelRoundRobin !== undefined) opts.kernelRoundRobin = s.kernelRoundRobin;
    if (s.strictTurns !== undefined) opts.strictTurns = s.strictTurns;
    Object.assign(opts, options.control(s, s.exec, 'settings.'));
    if (opts.control === undefined) delete opts.control;
    if (s.metrics !== undefined) opts.metrics = options.address(s, 'metrics', 'settings.');
    this._native = new native.NativeSupervisor(opts);
    this._native.watch((items) => this._pump(items));
  }

  /**
   * The status object of `rcluster status --json` (docs/control.md), as `start()`'s
   * `stats()`: a Promise, read off the JS thread. Before the first fork, the status of no
   * cluster is an error.
   */
  stats() {
    if (!this._native) {
      return Promise.reject(rclusterError('ERR_RCLUSTER_STOPPED', 'no worker was forked yet: the cluster is not running'));
    }
    return this._native.statusJson().then(JSON.parse, (e) => {
      throw rclusterError('ERR_RCLUSTER_STOPPED', e.message);
    });
  }

  fork(env) {
    if (env !== undefined && (env === null || typeof env !== 'object')) {
      throw invalidOption('env', env, 'must be an object');
    }
    if (!this.settings.serialization) this.setupPrimary();
    // The core counts the slots: fork() adds the next one, as SIGTTIN does.
    let slot = 0;
    if (this._native) {
      const [before, after] = this._native.scaleBy(1);
      if (after === before) {
        throw rclusterError('ERR_RCLUSTER_INVALID_OPTION', `cannot fork: already at the maximum of ${after} workers`);
      }
      slot = before;
    } else {
      this._start();
    }
    const worker = new Worker(this, slot);
    this._bySlot.set(slot, worker);
    this.workers[worker.id] = worker;
    // Node's fork() spawns synchronously, and programs read worker.process.pid right away:
    // wait for this slot's spawn (a millisecond or two); other events wait in the backlog.
    const deadline = Date.now() + SPAWN_TIMEOUT_MS;
    while (worker.process.pid === undefined && Date.now() < deadline) {
      const ev = this._native.nextEvent(deadline - Date.now());
      if (!ev) break;
      if (ev.type === 'spawn' && ev.id === slot) worker.process.pid = ev.pid;
      else this._backlog.push(ev);
    }
    const vars = {};
    for (const [k, v] of Object.entries(env || {})) vars[k] = String(v);
    try {
      this._native.send(slot, codec.CONTENT.binding, JSON.stringify({ act: 'init', env: vars }));
    } catch { /* it died at once: its exit event follows */ }
    this._native.setRef(true);
    if (this._backlog.length) setImmediate(() => this._pump());
    process.nextTick(() => {
      this._emitter.emit('fork', worker);
    });
    return worker;
  }

  disconnect(callback) {
    const live = Object.values(this.workers);
    if (live.length === 0) {
      if (callback) process.nextTick(callback);
      return;
    }
    let left = live.length;
    for (const w of live) {
      w.once('exit', () => { if (--left === 0 && callback) callback(); });
      w.disconnect();
    }
  }

  /** Handles the backlog, then `items` (what the watcher took), then whatever waits still. */
  _pump(items) {
    // The backlog is older than anything the watcher took: it goes first.
    const backlog = this._backlog;
    this._backlog = [];
    for (const ev of backlog) this._dispatch(ev);
    codec.pump(items, this._take, (max) => this._native.drain(max));
  }

  _dispatch(ev) {
    const worker = this._bySlot.get(ev.id);
    if (!worker) return;
    const cluster = this._emitter;
    switch (ev.type) {
      case 'online':
        worker.state = 'online';
        worker.emit('online');
        cluster.emit('online', worker);
        break;
      case 'message':
        if (ev.encoding === 'binding') return this._control(worker, codec.bindingMessage(ev.data) || {});
        {
          const message = codec.decodeEvent(ev);
          worker.emit('message', message, undefined);
          cluster.emit('message', worker, message, undefined);
        }
        break;
      case 'exit':
        this._exit(worker, ev);
        break;
      default:
        break;
    }
  }

  _control(worker, c) {
    if (c.act === 'listening') {
      worker.state = 'listening';
      worker.emit('listening', c.address);
      this._emitter.emit('listening', worker, c.address);
    } else if (c.act === 'exitedAfterDisconnect') {
      worker.exitedAfterDisconnect = true;
    }
  }

  _exit(worker, ev) {
    const cluster = this._emitter;
    const code = ev.code ?? null;
    const signal = signalName(ev.signal);
    worker.process.exitCode = code;
    worker.process.signalCode = signal;
    worker.process.connected = false;
    worker.state = 'dead';
    if (!worker._disconnectSaid) {
      worker._disconnectSaid = true;
      worker.emit('disconnect');
      cluster.emit('disconnect', worker);
    }
    delete this.workers[worker.id];
    this._bySlot.delete(worker._slot);
    if (worker.exitedAfterDisconnect === undefined) worker.exitedAfterDisconnect = false;
    worker.process.emit('exit', code, signal);
    worker.emit('exit', code, signal);
    cluster.emit('exit', worker, code, signal);
    // Nothing to watch over: let the process end when the program is done.
    if (this._bySlot.size === 0) this._native.setRef(false);
  }
}

module.exports = { Hub, Worker, SCHED_NONE, SCHED_RR };
