'use strict';
// rcluster's own primary API: rcluster.start(options) returns a Cluster.
const { EventEmitter } = require('events');
const native = require('./native');
const { normalize } = require('./options');
const codec = require('./codec');
const { spinAfterSend } = require('./spin');
const signals = require('./signals');

const { signalName } = signals;
const { rclusterError } = require('./errors');

function wrapNative(fn) {
  try {
    return fn();
  } catch (e) {
    // Native errors carry their code already; keep the JS stack of the caller.
    Error.captureStackTrace(e, wrapNative);
    throw e;
  }
}

class Cluster extends EventEmitter {
  constructor(options) {
    super();
    const { native: opts, serialization, handleSignals } = normalize(options);
    this._serialization = serialization;
    this._native = wrapNative(() => new native.NativeSupervisor(opts));
    this._reloads = new Map(); // generation -> { resolve, reject }
    this._stopping = null;
    const onRun = (id, pid, texts) => {
      codec.eachJson(texts, (message) => this.emit('message', message, { id, pid }));
    };
    this._take = (items) => codec.takeEvents(items, onRun, (ev) => this._dispatch(ev));
    // The watcher is ref'd: a running cluster keeps the process alive, as a server does,
    // until stop() (or every slot has given up).
    this._native.watch((items) => this._pump(items));
    // SIGTERM (systemd, Docker, Kubernetes) and Ctrl-C stop the cluster gracefully instead
    // of ending the process, whose workers would then die with every request in flight.
    this._handlesSignals = handleSignals;
    if (handleSignals) signals.listen(this);
  }

  /** A signal forwarded by lib/signals.js: the core says what it means. */
  _onSignal(name, signo) {
    let act;
    try {
      act = this._native.onSignal(signo);
    } catch (e) {
      this.emit('signal', { signal: name, action: 'refused', reason: e.message });
      return;
    }
    const ev = { signal: name, action: act.action };
    if (act.killTimeout !== undefined && act.killTimeout !== null) ev.killTimeout = act.killTimeout;
    if (act.generation !== undefined && act.generation !== null) ev.generation = act.generation;
    if (act.workers !== undefined && act.workers !== null) ev.workers = act.workers;
    if (act.reason !== undefined && act.reason !== null) ev.reason = act.reason;
    this.emit('signal', ev);
    // The core has begun the stop; this settles it on the JS side (the watcher, 'stop').
    if (act.action === 'stop') this.stop({ timeout: act.killTimeout }).catch(() => {});
  }

  /** Handles `items` (what the watcher took, if any), then whatever waits still. */
  _pump(items) {
    codec.pump(items, this._take, (max) => this._native.drain(max));
    // A stop begun outside this program (`rcluster stop NAME` on the control socket) is
    // settled here as one begun by stop(): the watcher goes, 'stop' is emitted.
    if (!this._stopping && this._native.isStopped()) this.stop().catch(() => {});
  }

  _dispatch(ev) {
    const who = { id: ev.id, pid: ev.pid };
    switch (ev.type) {
      case 'spawn': return this.emit('spawn', { ...who, generation: ev.generation });
      case 'online': return this.emit('online', who);
      case 'ready': return this.emit('ready', who);
      case 'message': return this._message(ev, who);
      case 'exit':
        return this.emit('exit', {
          ...who, generation: ev.generation, code: ev.code ?? null,
          signal: signalName(ev.signal), reason: ev.reason,
        });
      case 'restarting': return this.emit('restarting', { id: ev.id, delay: ev.delay, attempt: ev.attempt });
      case 'gave-up': return this.emit('gave-up', { id: ev.id, restarts: ev.restarts, window: ev.window });
      case 'all-down':
        this._native.setRef(false);
        return this.emit('all-down');
      case 'spawn-failed': return this.emit('spawn-failed', { id: ev.id, error: ev.error });
      case 'protocol-error': return this.emit('protocol-error', { ...who, error: ev.error });
      case 'scaled': return this.emit('scaled', { workers: ev.workers });
      case 'accept-paused': return this.emit('accept-paused', { listener: ev.listener, error: ev.error });
      case 'output-dropped': return this.emit('output-dropped', { id: ev.id, lines: ev.lines, bytes: ev.bytes });
      case 'warning': return this.emit('warning', { error: ev.error });
      case 'recycling': return this.emit('recycling', { ...who, reason: ev.reason });
      case 'reload-started': return this.emit('reload', { phase: 'started', generation: ev.generation });
      case 'reload-done': return this._reloadEnded(ev, 'done');
      case 'reload-failed': return this._reloadEnded(ev, 'failed');
      default: return undefined;
    }
  }

  _message(ev, who) {
    if (ev.encoding === 'binding') {
      const c = codec.bindingMessage(ev.data);
      if (c && c.act === 'listening') this.emit('listening', { ...who, address: c.address });
      return;
    }
    this.emit('message', codec.decodeEvent(ev), who);
  }

  _reloadEnded(ev, phase) {
    this.emit('reload', { phase, generation: ev.generation, reason: ev.reason });
    const waiter = this._reloads.get(ev.generation);
    if (!waiter) return;
    this._reloads.delete(ev.generation);
    if (phase === 'done') waiter.resolve({ generation: ev.generation });
    else waiter.reject(rclusterError('ERR_RCLUSTER_RELOAD_FAILED', `reload to generation ${ev.generation} failed: ${ev.reason}`));
  }

  /**
   * Sends a message to worker `id`; `options.contentType` ('raw', 'text', 'json', 'v8') sets
   * its content type instead of `serialization`. Throws ERR_RCLUSTER_QUEUE_FULL when it is not
   * reading.
   */
  send(id, message, options) {
    const [type, data] = codec.encode(message, this._serialization, codec.contentTypeOf(options));
    wrapNative(() => this._native.send(id, type, data));
    spinAfterSend();
    return true;
  }

  /** Sends a message to every live worker (`options` as for send); returns how many got it. */
  broadcast(message, options) {
    const [type, data] = codec.encode(message, this._serialization, codec.contentTypeOf(options));
    const sent = wrapNative(() => this._native.broadcast(type, data));
    spinAfterSend();
    return sent;
  }

  /** Every worker process (and every slot with none running), as of now. */
  workers() {
    return wrapNative(() => this._native.snapshot()).map((w) => ({
      id: w.id, pid: w.pid, generation: w.generation, state: w.state, uptime: w.uptime,
      restarts: w.restarts,
      lastExit: w.lastExitReason === undefined ? null : {
        code: w.lastExitCode ?? null, signal: signalName(w.lastExitSignal), reason: w.lastExitReason,
      },
    }));
  }

  snapshot() {
    return this.workers();
  }

  /**
   * The status object of `rcluster status --json` (docs/control.md): a Promise, read off the
   * JS thread.
   */
  stats() {
    return this._native.statusJson().then(JSON.parse, (e) => {
      throw rclusterError('ERR_RCLUSTER_STOPPED', e.message);
    });
  }

  /**
   * Addresses bound by the primary: [{ name, address }] (a port 0 resolved). Not named
   * `listeners`: that is EventEmitter's listeners(eventName), which must keep working.
   */
  get listenerAddresses() {
    return this._native.listeners().map(([name, address]) => ({ name, address }));
  }

  /** Rolling reload; resolves with { generation } once every slot runs it. */
  reload() {
    return new Promise((resolve, reject) => {
      const generation = wrapNative(() => this._native.reload());
      this._reloads.set(generation, { resolve, reject });
    });
  }

  scale(workers) {
    // The range is the core's; only a number can reach it.
    if (!Number.isInteger(workers)) {
      throw rclusterError('ERR_RCLUSTER_INVALID_OPTION', `invalid option workers = ${workers}: must be an integer`);
    }
    wrapNative(() => this._native.scale(workers));
  }

  /** Stops worker `id` gracefully and starts it again. */
  restart(id) {
    wrapNative(() => this._native.restartWorker(id));
  }

  /** Stops every worker (SIGKILL after `timeout` ms); resolves once all are reaped. */
  stop({ timeout = 10000 } = {}) {
    if (!this._stopping) {
      this._stopping = this._native.stop(timeout).then(() => {
        this._pump();
        this._native.unwatch();
        if (this._handlesSignals) signals.unlisten(this);
        for (const [generation, w] of this._reloads) {
          w.reject(rclusterError('ERR_RCLUSTER_STOPPED', `reload to generation ${generation} ended: the cluster stopped`));
        }
        this._reloads.clear();
        this.emit('stop');
      });
    }
    return this._stopping;
  }
}

function start(options) {
  return new Cluster(options);
}

module.exports = { Cluster, start };
