'use strict';
// The program a pool's workers run: `node pool_worker.js`, with the task file in
// RCLUSTER_POOL_FILENAME. It loads the file (a function, or named functions, sync or async),
// says ready, and runs the tasks the primary sends, answering with v8-serialized values
// (lib/clone.js).
// It runs at most RCLUSTER_TASK_CONCURRENCY at once, in the order they came; the others wait
// here (the primary sends a few ahead, so that the next one starts without a round trip).
// An answer held counts as a running task until it is written: the primary starts the
// deadline of a task that waited here when the answer before it arrives (docs/protocol.md 5.8).
// A task cancelled while it waits here is dropped, never run nor answered.
// A file that fails to load is reported to the primary, and the worker exits with code 3,
// which the pool does not restart.
const clone = require('./clone');
const path = require('path');
const { pathToFileURL } = require('url');
const native = require('./native');
const { CONTENT } = require('./codec');
const BOOT_FAILED_EXIT = 3;
// A task that waited here longer than this (ms) while others ran starts only after the link
// was read again: a cancel of it that arrived meanwhile drops it (docs/protocol.md 5.8).
const LOOK_AFTER_MS = 1;

const link = native.attachWorker();
if (!link) {
  console.error('rcluster: pool_worker.js runs only as a worker of an rcluster.Pool');
  process.exit(2);
}
// The link is taken: a `require('rcluster')` in the task file must not try to take it again.
delete process.env.RCLUSTER_IPC_FD;

const filename = process.env.RCLUSTER_POOL_FILENAME;
// A primary that does not say lets every task run at once.
const CONCURRENCY = +process.env.RCLUSTER_TASK_CONCURRENCY || Infinity;

async function load() {
  try {
    return require(filename);
  } catch (err) {
    if (err && err.code === 'ERR_REQUIRE_ESM') return import(pathToFileURL(filename).href);
    throw err;
  }
}

function describe(value) {
  if (value === null) return 'null';
  if (typeof value === 'function') return `function ${value.name || '(anonymous)'}`;
  if (typeof value === 'object') return (value.constructor && value.constructor.name) || 'object';
  if (typeof value === 'symbol') return 'symbol';
  return typeof value;
}

/** The error a task threw, as the primary rebuilds it. */
function errorPayload(err) {
  const e = err instanceof Error ? err : null;
  const plain = {
    message: e ? e.message : String(err),
    stack: e ? e.stack : undefined,
    name: e ? e.name : 'Error',
    code: e && typeof e.code === 'string' ? e.code : undefined,
    thrown: e ? undefined : describe(err),
  };
  return clone.serialize(plain);
}

let ids = [];
let oks = [];
let payloads = [];
let scheduled = false;

function flush() {
  if (ids.length === 0) return;
  const [i, o, p] = [ids, oks, payloads];
  ids = [];
  oks = [];
  payloads = [];
  try {
    link.answerMany(i, o, p, CONTENT.v8);
  } catch {
    process.exit(0); // The primary is gone.
  }
}

/** Tasks that came and did not start yet, in order, and how many run now. */
const waiting = [];
let running = 0;
/** When the link was last read (performance.now()). */
let lookedAt = 0;
let fns = null;

function answer(id, ok, payload) {
  running--;
  ids.push(id);
  oks.push(ok);
  payloads.push(payload);
  // Answers of the tasks that settle in one turn go out together, after the turn; then the
  // tasks waiting for their room start.
  if (!scheduled) {
    scheduled = true;
    setImmediate(turn);
  }
}

function turn() {
  scheduled = false;
  flush();
  pump();
  flush();
}

/**
 * Starts waiting tasks while fewer than CONCURRENCY run. An answer not yet written counts as
 * a running task to the primary, so the answers held go out first when they would make
 * CONCURRENCY.
 */
function pump() {
  while (running < CONCURRENCY && waiting.length > 0) {
    if (performance.now() - lookedAt >= LOOK_AFTER_MS) {
      look();
      if (waiting.length === 0) break;
    }
    if (running + ids.length >= CONCURRENCY) flush();
    running++;
    run(fns, waiting.shift());
  }
}

/** Reads the link now and takes what came, cancels among it. */
function look() {
  let items;
  try {
    items = link.poll(4096);
    while (onItems(items)) items = link.drain(4096);
  } catch {
    process.exit(0); // The primary is gone.
  }
  lookedAt = performance.now();
}

function settle(id, value) {
  let payload;
  try {
    payload = clone.serialize(value);
  } catch (err) {
    const e = new TypeError(`the task's result cannot be serialized: ${describe(value)} (${err.message})`);
    e.code = 'ERR_TASK_RESULT_NOT_SERIALIZABLE';
    answer(id, false, errorPayload(e));
    return;
  }
  answer(id, true, payload);
}

function run(fns, item) {
  const id = item.id;
  let fn = item.name ? fns.named[item.name] : fns.main;
  if (typeof fn !== 'function') {
    const what = item.name ? `no function named ${JSON.stringify(item.name)}` : 'no default function';
    const e = new TypeError(`${filename} exports ${what}`);
    e.code = 'ERR_TASK_NOT_FOUND';
    answer(id, false, errorPayload(e));
    return;
  }
  let data;
  try {
    data = decode(item);
  } catch (err) {
    answer(id, false, errorPayload(err));
    return;
  }
  let result;
  try {
    result = fn(data);
  } catch (err) {
    answer(id, false, errorPayload(err));
    return;
  }
  if (result && typeof result.then === 'function') {
    result.then((v) => settle(id, v), (err) => answer(id, false, errorPayload(err)));
  } else {
    settle(id, result);
  }
}

/** A task's payload as its content type says (docs/protocol.md 5.8). */
function decode(item) {
  switch (item.content) {
    case CONTENT.v8: return clone.deserialize(item.data);
    case CONTENT.json: return JSON.parse(item.data.toString('utf8'));
    case CONTENT.raw: return item.data;
    default: {
      const e = new TypeError(`a task payload of content type ${item.content} cannot be read by a Node worker`);
      e.code = 'ERR_TASK_CONTENT_TYPE';
      throw e;
    }
  }
}

function functions(mod) {
  const named = mod && (typeof mod === 'object' || typeof mod === 'function') ? mod : {};
  let main = null;
  if (typeof mod === 'function') main = mod;
  else if (named.default && typeof named.default === 'function') main = named.default;
  else if (named.default && typeof named.default.default === 'function') main = named.default.default;
  const all = Object.assign({}, named.default && typeof named.default === 'object' ? named.default : {}, named);
  return { main, named: all };
}

function onItems(items) {
  for (const item of items) {
    if (typeof item !== 'object' || item === null || Buffer.isBuffer(item)) continue;
    if (item.type === 'task') waiting.push(item);
    else if (item.type === 'cancel') {
      // Cancelled while it waited here: it never starts, and is never answered. One that
      // started (or ended) is not waiting any more, and the cancel means nothing to it.
      const at = waiting.findIndex((t) => t.id === item.id);
      if (at >= 0) waiting.splice(at, 1);
    }
    else if (item.type === 'disconnect' || item.type === 'gone') {
      // Tasks that reached this worker before the disconnect were in this batch or earlier.
      flush();
      setImmediate(() => process.exit(0));
    }
  }
  return items.length > 0 && items[items.length - 1].type === 'more';
}

load().then((mod) => {
  fns = functions(mod);
  if (!fns.main && Object.keys(fns.named).length === 0) {
    throw new TypeError(`${path.basename(filename)} exports no function`);
  }
  link.ready();
  link.watch((items) => {
    lookedAt = performance.now();
    // A batch that stopped short leaves more waiting in memory, where the descriptor does
    // not tell: take them at once.
    while (onItems(items)) items = link.drain(4096);
    pump();
    // The answer of the last synchronous task, now; those of asynchronous ones go after the
    // turn in which they settle.
    flush();
  });
}).catch((err) => {
  const why = err && err.stack ? err.stack : String(err);
  try {
    link.bootFailed(`${filename}: ${why}`);
  } catch {
    // The primary is gone; nothing to tell.
  }
  process.exit(BOOT_FAILED_EXIT);
});
