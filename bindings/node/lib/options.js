'use strict';
// Checks and normalises the options of rcluster.start() into what the native layer takes.
// Only types are checked here (a string where a number belongs), naming the JS option;
// ranges and rules between options are the core's, whose errors the native layer reports
// with the JS option name too (send_queue_limit → options.sendQueueLimit).
const path = require('path');
const { invalidOption } = require('./errors');
const { checkSerialization } = require('./codec');

const DISPATCH = ['rr', 'round-robin', 'least-conn', 'least-connections', 'sticky', 'shared'];

function int(opts, name, prefix = 'options.') {
  const v = opts[name];
  if (v === undefined) return undefined;
  if (!Number.isInteger(v)) throw invalidOption(prefix + name, v, 'must be an integer');
  return v;
}

function num(opts, name, prefix = 'options.', what = 'a number') {
  const v = opts[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'number') throw invalidOption(prefix + name, v, `must be ${what}`);
  return v;
}

const ms = (opts, name, prefix = 'options.') => num(opts, name, prefix, 'a number of milliseconds');

const UNITS = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 };

/** A size in bytes: an integer, or a string with a unit as the CLI takes it ('512M'). */
function bytes(opts, name, prefix = 'options.') {
  const v = opts[name];
  if (v === undefined) return undefined;
  if (Number.isSafeInteger(v) && v >= 1) return v;
  const m = typeof v === 'string' ? /^([0-9]+)([KMG]?)B?$/i.exec(v.trim()) : null;
  const n = m ? Number(m[1]) * UNITS[m[2].toUpperCase()] : NaN;
  if (!(Number.isSafeInteger(n) && n >= 1)) {
    throw invalidOption(prefix + name, v, "must be a number of bytes >= 1, or a size such as '512M' (K, M, G)");
  }
  return n;
}

/** An address as the core takes it ('127.0.0.1:9100', ':9100', 'unix:/path'), or a port of 127.0.0.1. */
function address(opts, name, prefix = 'options.') {
  const v = opts[name];
  if (v === undefined) return undefined;
  if (Number.isInteger(v) && v >= 0 && v < 65536) return `127.0.0.1:${v}`;
  if (typeof v !== 'string') {
    throw invalidOption(prefix + name, v, "must be an address ('127.0.0.1:9100', ':9100', 'unix:/path') or a port number");
  }
  return v;
}

function bool(opts, name, prefix = 'options.') {
  const v = opts[name];
  if (v !== undefined && typeof v !== 'boolean') throw invalidOption(prefix + name, v, 'must be true or false');
  return v;
}

function oneOf(opts, name, values, prefix = 'options.') {
  const v = opts[name];
  if (v === undefined) return undefined;
  if (!values.includes(v)) {
    throw invalidOption(prefix + name, v, `expected one of ${values.map((x) => `'${x}'`).join(', ')}`);
  }
  return v;
}

// The option names start() knows, so that a misspelt one (`dispach`) is an error instead of
// being silently ignored (the CLI and the C API refuse unknown options too).
const KNOWN = {
  options: ['workers', 'exec', 'args', 'execArgv', 'program', 'env', 'cwd', 'readyOn', 'readyTimeout',
    'heartbeatTimeout', 'killTimeout', 'restart', 'maxMessage', 'sendQueueLimit', 'output', 'listen',
    'listeners', 'dispatch', 'maxInflight', 'handoffWindow', 'kernelRoundRobin', 'strictTurns', 'queueLimit',
    'queueTimeout', 'maxSurge', 'serialization', 'handleSignals', 'eventQueueLimit', 'ackTimeout',
    'name', 'control', 'maxMemory', 'maxRequests', 'maxRequestsJitter', 'metrics', 'drainDelay', 'readyMin'],
  restart: ['mode', 'backoffInitial', 'backoffMultiplier', 'backoffMax', 'jitter', 'minUptime',
    'maxRestarts', 'window', 'noRestartCodes'],
  listener: ['address', 'name', 'dispatch', 'share'],
};

/** Throws ERR_RCLUSTER_INVALID_OPTION naming every key of `obj` not in `known`. */
function rejectUnknown(obj, known, where) {
  const unknown = Object.keys(obj).filter((k) => !known.includes(k));
  if (unknown.length === 0) return;
  const names = unknown.map((k) => where + k).join(', ');
  throw invalidOption(names, obj[unknown[0]],
    `unknown option${unknown.length > 1 ? 's' : ''}; known: ${known.join(', ')}`);
}

function strings(value, name) {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.some((s) => typeof s !== 'string')) {
    throw invalidOption(name, value, 'must be an array of strings');
  }
  return value;
}

function listeners(opts) {
  const list = [];
  if (opts.listen !== undefined) {
    const addrs = Array.isArray(opts.listen) ? opts.listen : [opts.listen];
    // Unnamed listeners get the core's default name (listen0, listen1, ... by place).
    addrs.forEach((a) => list.push({ name: undefined, address: a }));
  }
  if (opts.listeners !== undefined) {
    if (!Array.isArray(opts.listeners)) {
      throw invalidOption('options.listeners', opts.listeners, 'must be an array of { address, name?, dispatch? }');
    }
    opts.listeners.forEach((l, i) => {
      if (l === null || typeof l !== 'object') {
        throw invalidOption(`options.listeners[${i}]`, l, 'must be an object { address, name?, dispatch? }');
      }
      rejectUnknown(l, KNOWN.listener, `options.listeners[${i}].`);
      list.push({ name: l.name, address: l.address, dispatch: l.dispatch, share: l.share });
    });
  }
  const dispatch = oneOf(opts, 'dispatch', DISPATCH) || 'rr';
  return list.map((l, i) => {
    let address = l.address;
    if (typeof address === 'number' && Number.isInteger(address) && address >= 0 && address < 65536) {
      address = `127.0.0.1:${address}`;
    }
    if (typeof address !== 'string' || address === '') {
      throw invalidOption(`options.listeners[${i}].address`, l.address,
        "expected 'HOST:PORT', '[IPv6]:PORT', ':PORT', 'unix:/path' or a port number");
    }
    if (l.name !== undefined && typeof l.name !== 'string') {
      throw invalidOption(`options.listeners[${i}].name`, l.name, 'must be a string');
    }
    const d = l.dispatch === undefined ? dispatch : l.dispatch;
    if (!DISPATCH.includes(d)) {
      throw invalidOption(`options.listeners[${i}].dispatch`, d, `expected one of ${DISPATCH.join(', ')}`);
    }
    if (l.share !== undefined && typeof l.share !== 'boolean') {
      throw invalidOption(`options.listeners[${i}].share`, l.share, 'must be true or false');
    }
    return { name: l.name, address, dispatch: d, share: l.share === true };
  });
}

function restart(opts) {
  let r = opts.restart;
  if (r === undefined) return {};
  if (typeof r === 'string') r = { mode: r };
  if (r === null || typeof r !== 'object') {
    throw invalidOption('options.restart', r, "expected 'always', 'on-failure', 'never' or an object");
  }
  const p = 'options.restart.';
  rejectUnknown(r, KNOWN.restart, p);
  const codes = r.noRestartCodes;
  if (codes !== undefined && (!Array.isArray(codes) || codes.some((c) => !Number.isInteger(c)))) {
    throw invalidOption(p + 'noRestartCodes', codes, 'must be an array of integer exit codes');
  }
  return {
    restart: oneOf(r, 'mode', ['always', 'on-failure', 'never'], p),
    backoffInitial: ms(r, 'backoffInitial', p),
    backoffMultiplier: num(r, 'backoffMultiplier', p),
    backoffMax: ms(r, 'backoffMax', p),
    jitter: num(r, 'jitter', p),
    minUptime: ms(r, 'minUptime', p),
    maxRestarts: int(r, 'maxRestarts', p),
    window: ms(r, 'window', p),
    noRestartCodes: codes,
  };
}

function envPairs(env, name) {
  if (env === undefined) return [];
  if (env === null || typeof env !== 'object') throw invalidOption(name, env, 'must be an object of strings');
  return Object.entries(env).map(([k, v]) => [k, String(v)]);
}

/**
 * The native options and the JS-side settings of rcluster.start(options).
 * `extraEnv` is added to the workers' environment (the binding's own variables).
 */
function normalize(opts = {}, extraEnv = {}) {
  if (opts === null || typeof opts !== 'object') {
    throw invalidOption('options', opts, 'must be an object');
  }
  rejectUnknown(opts, KNOWN.options, 'options.');
  // No count: the core's default, one worker per CPU this process may use.
  const workers = int(opts, 'workers');
  const exec = opts.exec === undefined ? process.argv[1] : opts.exec;
  if (typeof exec !== 'string' || exec === '') throw invalidOption('options.exec', exec, 'must be a path to a script');
  const execArgv = strings(opts.execArgv === undefined ? process.execArgv : opts.execArgv, 'options.execArgv');
  const args = strings(opts.args === undefined ? process.argv.slice(2) : opts.args, 'options.args');
  const program = opts.program === undefined ? process.execPath : opts.program;
  if (typeof program !== 'string') throw invalidOption('options.program', program, 'must be a path to an executable');
  if (opts.cwd !== undefined && typeof opts.cwd !== 'string') throw invalidOption('options.cwd', opts.cwd, 'must be a string');
  const serialization = checkSerialization(opts.serialization, 'options.serialization');
  const heartbeatTimeout = ms(opts, 'heartbeatTimeout');
  const env = envPairs(opts.env, 'options.env');
  const own = { ...extraEnv, RCLUSTER_NODE_SERIALIZATION: serialization };
  env.push(...Object.entries(own));
  const native = {
    workers,
    argv: [program, ...execArgv, path.resolve(opts.cwd || '.', exec), ...args],
    env,
    cwd: opts.cwd,
    readyOn: oneOf(opts, 'readyOn', ['spawn', 'hello', 'explicit']),
    readyTimeout: ms(opts, 'readyTimeout'),
    heartbeatTimeout,
    killTimeout: ms(opts, 'killTimeout'),
    ...restart(opts),
    maxMessage: int(opts, 'maxMessage'),
    sendQueueLimit: int(opts, 'sendQueueLimit'),
    eventQueueLimit: int(opts, 'eventQueueLimit'),
    output: oneOf(opts, 'output', ['inherit', 'prefix']),
    listeners: listeners(opts),
    maxInflight: int(opts, 'maxInflight'),
    handoffWindow: int(opts, 'handoffWindow'),
    kernelRoundRobin: bool(opts, 'kernelRoundRobin'),
    strictTurns: bool(opts, 'strictTurns'),
    queueLimit: int(opts, 'queueLimit'),
    queueTimeout: ms(opts, 'queueTimeout'),
    maxSurge: int(opts, 'maxSurge'),
    // null turns the bound off; unset keeps the core's default.
    ackTimeout: opts.ackTimeout === null ? undefined : ms(opts, 'ackTimeout'),
    noAckTimeout: opts.ackTimeout === null,
    maxMemory: bytes(opts, 'maxMemory'),
    maxRequests: int(opts, 'maxRequests'),
    maxRequestsJitter: int(opts, 'maxRequestsJitter'),
    metrics: address(opts, 'metrics'),
    drainDelay: ms(opts, 'drainDelay'),
    readyMin: int(opts, 'readyMin'),
  };
  Object.assign(native, control(opts, exec));
  if (opts.program !== undefined && opts.exec === undefined) {
    // A non-Node program: run it with `args` alone.
    native.argv = [program, ...args];
  }
  for (const k of Object.keys(native)) if (native[k] === undefined) delete native[k];
  const handleSignals = bool(opts, 'handleSignals') ?? true;
  return { native, serialization, handleSignals };
}

/**
 * The control socket options: `name` (default: the script's base name, without .js) and
 * `control` (true, false or 'required'; default false).
 */
function control(opts, exec, prefix = 'options.') {
  if (opts.name !== undefined && (typeof opts.name !== 'string' || opts.name === '')) {
    throw invalidOption(`${prefix}name`, opts.name, 'must be a non-empty string');
  }
  const c = opts.control;
  if (c !== undefined && c !== true && c !== false && c !== 'required') {
    throw invalidOption(`${prefix}control`, c, "must be true, false or 'required'");
  }
  const script = opts.program !== undefined && opts.exec === undefined
    ? undefined : path.basename(exec).replace(/\.[cm]?js$/, '');
  return {
    name: opts.name ?? script,
    control: c === undefined ? undefined : c === true ? 'on' : c === false ? 'off' : 'required',
  };
}

module.exports = { normalize, rejectUnknown, control, address };
