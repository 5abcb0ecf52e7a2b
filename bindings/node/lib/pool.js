'use strict';
// rcluster.Pool: a pool of worker processes that run the functions of one file, in piscina's
// shape. The core owns the queue, the choice of worker, timeouts, cancellation, crashes and
// recycling; this file turns tasks into v8-serialized payloads (lib/clone.js) and outcomes
// into Promises.
const os = require('os');
const path = require('path');
const clone = require('./clone');
const { fileURLToPath } = require('url');
const native = require('./native');
const { rclusterError, invalidOption } = require('./errors');

const { CONTENT } = require('./codec');
const { TaskTable } = require('./task_table');
const RUNTIME = path.join(__dirname, 'pool_worker.js');
const KNOWN = ['filename', 'workers', 'minThreads', 'maxThreads', 'concurrentTasksPerWorker', 'maxTasksAhead', 'maxQueue',
  'whenFull', 'taskTimeout', 'maxTasksPerWorker', 'maxWorkerMemoryMb', 'env', 'execArgv', 'cwd', 'killTimeout', 'maxMessage'];

function count(opts, name, min, max, fallback) {
  const v = opts[name];
  if (v === undefined) return fallback;
  if (v === Infinity && max === Infinity) return v;
  if (!Number.isInteger(v) || v < min || v > max) {
    throw invalidOption(`options.${name}`, v, `must be an integer ${min}..${max}`);
  }
  return v;
}

function millis(value, name) {
  if (value === undefined || value === null || value === 0 || value === Infinity) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw invalidOption(name, value, 'must be a positive number of milliseconds (0 or Infinity: none)');
  }
  return value;
}

function resolveFilename(f) {
  if (f instanceof URL || (typeof f === 'string' && f.startsWith('file:'))) return fileURLToPath(f);
  if (typeof f !== 'string' || f === '') throw invalidOption('options.filename', f, 'must be a path or a file: URL');
  return path.resolve(f);
}

function nativeOptions(opts) {
  if (opts === null || typeof opts !== 'object') throw invalidOption('options', opts, 'must be an object');
  const unknown = Object.keys(opts).filter((k) => !KNOWN.includes(k));
  if (unknown.length > 0) {
    throw invalidOption(`options.${unknown[0]}`, opts[unknown[0]], `unknown option; known: ${KNOWN.join(', ')}`);
  }
  const filename = resolveFilename(opts.filename);
  const workers = count(opts, 'workers', 1, 4096, undefined) ??
    count(opts, 'maxThreads', 1, 4096, undefined) ?? Math.max(1, (os.availableParallelism?.() ?? os.cpus().length));
  const env = Object.entries(Object.assign({}, opts.env || {}, { RCLUSTER_POOL_FILENAME: filename }))
    .map(([k, v]) => [k, String(v)]);
  const execArgv = opts.execArgv || [];
  if (!Array.isArray(execArgv) || execArgv.some((a) => typeof a !== 'string')) {
    throw invalidOption('options.execArgv', execArgv, 'must be an array of strings');
  }
  const whenFull = opts.whenFull === undefined ? 'reject' : opts.whenFull;
  if (whenFull !== 'reject' && whenFull !== 'wait') {
    throw invalidOption('options.whenFull', whenFull, "must be 'reject' or 'wait'");
  }
  const maxQueue = count(opts, 'maxQueue', 1, Infinity, Infinity);
  return {
    workers,
    argv: [process.execPath, ...execArgv, RUNTIME],
    env,
    cwd: opts.cwd,
    concurrentTasksPerWorker: count(opts, 'concurrentTasksPerWorker', 1, 4096, 1),
    maxTasksAhead: count(opts, 'maxTasksAhead', 0, 4096, undefined),
    // "Infinity" is bounded all the same: by a number of tasks no program holds in memory.
    maxQueue: maxQueue === Infinity ? 2 ** 31 : maxQueue,
    // "wait" is the JS side's: a submitter waits for room in a promise, never blocking the
    // JS thread (whose reading of outcomes makes the room).
    whenFull: 'reject',
    taskTimeout: millis(opts.taskTimeout, 'options.taskTimeout'),
    maxTasksPerWorker: count(opts, 'maxTasksPerWorker', 1, Number.MAX_SAFE_INTEGER, undefined),
    maxWorkerMemory: opts.maxWorkerMemoryMb === undefined ? undefined
      : count(opts, 'maxWorkerMemoryMb', 1, 2 ** 32, undefined) * 1024 * 1024,
    killTimeout: millis(opts.killTimeout, 'options.killTimeout'),
    maxMessage: count(opts, 'maxMessage', 1, 2 ** 30, undefined),
  };
}

function describe(value) {
  if (value === null) return 'null';
  if (typeof value === 'function') return `function ${value.name || '(anonymous)'}`;
  if (typeof value === 'object') return (value.constructor && value.constructor.name) || 'object';
  return typeof value;
}

/** The Error a task threw in its worker, rebuilt with its message, name, stack and code. */
function taskError(buffer) {
  let plain;
  try {
    plain = clone.deserialize(buffer);
  } catch {
    plain = { message: 'the task failed (its error could not be read)' };
  }
  const err = new Error(plain.message);
  if (plain.name && plain.name !== 'Error') {
    Object.defineProperty(err, 'name', { value: plain.name, configurable: true, writable: true });
  }
  if (plain.stack) err.stack = plain.stack;
  if (plain.code) err.code = plain.code;
  if (plain.thrown) err.thrown = plain.thrown;
  return err;
}

const CODES = {
  crashed: 'ERR_WORKER_CRASHED',
  timeout: 'ERR_TASK_TIMEOUT',
  shutdown: 'ERR_POOL_DESTROYED',
  no_workers: 'ERR_WORKER_INIT_FAILED',
  cancelled: 'ABORT_ERR',
};

function abortError(reason) {
  const err = new Error('The operation was aborted', { cause: reason });
  err.name = 'AbortError';
  err.code = 'ABORT_ERR';
  return err;
}

function failure(f, task) {
  if (f.reason === 'cancelled') return abortError(task.signal ? task.signal.reason : undefined);
  const err = rclusterError(CODES[f.reason] || 'ERR_RCLUSTER_POOL', f.message);
  if (f.exitCode !== undefined && f.exitCode !== null) err.exitCode = f.exitCode;
  if (f.signal !== undefined && f.signal !== null) {
    err.signal = Object.keys(os.constants.signals).find((k) => os.constants.signals[k] === f.signal) || f.signal;
  }
  return err;
}

class Pool {
  constructor(options) {
    const opts = nativeOptions(options);
    this._wait = options.whenFull === 'wait';
    this._native = new native.NativePool(opts);
    this._tasks = new TaskTable(); // id -> { resolve, reject, signal, onAbort, id }
    // Tasks not yet in the core's queue, oldest first: those of this tick, and with
    // whenFull: 'wait' those waiting for room.
    this._waiting = [];
    this._head = 0;
    this._admitBound = () => this._admit();
    this._destroyed = false;
    this._native.watch((items) => this._take(items));
    this._native.setRef(false);
  }

  /**
   * Runs a task: `data` goes to the worker file's function (`name`: one of its named exports)
   * as a structured clone; resolves with its value, rejects with the Error it threw, or with
   * `code` ERR_WORKER_CRASHED, ERR_TASK_TIMEOUT, ERR_QUEUE_FULL, ERR_POOL_DESTROYED, or an
   * AbortError when `signal` aborts.
   */
  run(data, options = {}) {
    const { name = '', signal, timeout, idempotent = false } = options || {};
    if (this._destroyed) {
      return Promise.reject(rclusterError('ERR_POOL_DESTROYED', 'the pool was destroyed'));
    }
    if (typeof name !== 'string') return Promise.reject(invalidOption('options.name', name, 'must be a string'));
    if (signal && signal.aborted) return Promise.reject(abortError(signal.reason));
    let payload;
    try {
      payload = clone.serialize(data);
    } catch (err) {
      const e = new TypeError(`the task's data cannot be serialized: ${describe(data)} (${err.message})`);
      e.code = 'ERR_TASK_DATA_NOT_SERIALIZABLE';
      return Promise.reject(e);
    }
    let timeoutMs;
    try {
      timeoutMs = millis(timeout, 'options.timeout') || 0;
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      const task = { resolve, reject, signal, onAbort: null, payload, name, timeoutMs, idempotent: !!idempotent, id: 0 };
      if (signal) {
        task.onAbort = () => this._abort(task);
        signal.addEventListener('abort', task.onAbort, { once: true });
      }
      // Tasks of one tick go to the core together (one call, one lock, one wake-up).
      this._waiting.push(task);
      if (this._waiting.length - this._head === 1) {
        if (this._tasks.size === 0) this._native.setRef(true);
        queueMicrotask(this._admitBound);
      }
    });
  }

  _abort(task) {
    const at = this._waiting.indexOf(task, this._head);
    if (at >= 0) {
      this._waiting.splice(at, 1);
      task.reject(abortError(task.signal.reason));
      return;
    }
    if (task.id !== 0) this._native.cancel(task.id);
  }

  _forget(task) {
    if (task.signal) task.signal.removeEventListener('abort', task.onAbort);
  }

  /**
   * Hands the tasks waiting on the JS side to the core, as many as its queue takes; when it is
   * full, the rest wait for room (whenFull: 'wait', retried as tasks end) or are rejected.
   */
  _admit() {
    const waiting = this._waiting;
    while (this._head < waiting.length) {
      // In slices, so that a long wait for room costs little per attempt.
      const batch = waiting.slice(this._head, this._head + 4096);
      let ids;
      try {
        ids = this._native.submitMany(batch.map((t) => t.payload), batch.map((t) => t.name),
          batch.map((t) => t.timeoutMs), batch.map((t) => t.idempotent), CONTENT.v8);
      } catch (err) {
        this._rejectWaiting(err);
        break;
      }
      for (let i = 0; i < ids.length; i++) {
        const task = batch[i];
        task.id = ids[i];
        task.payload = null;
        this._tasks.set(task.id, task);
      }
      this._head += ids.length;
      if (ids.length < batch.length) {
        if (!this._wait) this._rejectWaiting(rclusterError('ERR_QUEUE_FULL', "the pool's task queue is full (maxQueue)"));
        break;
      }
    }
    if (this._head === this._waiting.length) {
      this._waiting = [];
      this._head = 0;
    } else if (this._head > 4096 && this._head * 2 > this._waiting.length) {
      this._waiting = this._waiting.slice(this._head);
      this._head = 0;
    }
    this._idle();
  }

  _rejectWaiting(err) {
    const rest = this._waiting.slice(this._head);
    this._waiting = [];
    this._head = 0;
    for (const task of rest) {
      this._forget(task);
      task.reject(err);
    }
  }

  /** The pool keeps the process alive only while tasks are pending. */
  _idle() {
    if (this._tasks.size === 0 && this._waiting.length === this._head) this._native.setRef(false);
  }

  _take(items) {
    const all = items[0];
    let from = 0;
    for (let i = 1; i + 2 < items.length; i += 3) {
      const id = items[i];
      const status = items[i + 1];
      const extra = items[i + 2];
      let data = extra;
      if (status < 2) {
        data = all.subarray(from, extra);
        from = extra;
      }
      const task = this._tasks.get(id);
      if (task === undefined) continue;
      this._tasks.delete(id);
      this._forget(task);
      if (status === 0) {
        let value;
        try {
          value = clone.deserialize(data);
        } catch (err) {
          task.reject(err);
          continue;
        }
        task.resolve(value);
      } else if (status === 1) {
        task.reject(taskError(data));
      } else {
        task.reject(failure(data, task));
      }
    }
    if (this._waiting.length > this._head) this._admit();
    else this._idle();
  }

  /** Counters: queued, running, completed, failed (and by reason), wait and run times (ms). */
  stats() {
    return this._native.stats();
  }

  /** Tasks waiting in the queue. */
  get queueSize() {
    return this._native.stats().queued + this._waiting.length - this._head;
  }

  /**
   * Stops the pool: queued tasks reject with ERR_POOL_DESTROYED at once, running ones get up
   * to `killTimeout` to finish; resolves once every worker has exited.
   */
  async destroy() {
    if (this._destroyed) return;
    this._destroyed = true;
    this._rejectWaiting(rclusterError('ERR_POOL_DESTROYED', 'the pool was destroyed before the task ran'));
    await this._native.stop(true, 0);
    this._take(this._native.drain());
    this._native.unwatch();
  }
}

module.exports = { Pool };
