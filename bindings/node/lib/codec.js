'use strict';
// Message encodings. Every message carries a tag byte (added by the native layer) so that the
// receiving side decodes it correctly whatever its own `serialization` setting is.
const v8 = require('v8');
const { invalidOption } = require('./errors');

const JSON_TAG = 0x4a; // 'J'
const V8_TAG = 0x56; // 'V'
const CONTROL_TAG = 0x43; // 'C'

function checkSerialization(value, name) {
  if (value === undefined || value === 'json' || value === 'advanced') return value || 'json';
  throw invalidOption(name, value, "expected 'json' or 'advanced'");
}

/** The JSON text of a message; throws when it has none (undefined, a function). */
function jsonText(message) {
  const text = JSON.stringify(message);
  if (text === undefined) {
    throw invalidOption('message', message, 'cannot be serialized as JSON');
  }
  return text;
}

/** [tag, data] for the native send functions. */
function encode(message, serialization) {
  if (serialization === 'advanced') return [V8_TAG, v8.serialize(message)];
  return [JSON_TAG, jsonText(message)];
}

/** Decodes a message event of the primary side ({ encoding, data }). */
function decodeEvent(ev) {
  switch (ev.encoding) {
    case 'json': return JSON.parse(ev.data);
    case 'v8': return v8.deserialize(ev.data);
    default: return ev.data; // raw bytes from a worker that does not use this binding
  }
}

/** How many events one `drain` call (and one watcher callback) takes at most. */
const BATCH = 4096;

/** True when a batch ended with `more`: it was full, and more may be waiting. */
function moreWaiting(items) {
  const last = items[items.length - 1];
  return last !== undefined && last.type === 'more';
}

/**
 * Hands `take` the items the watcher took (if any), then what `drain(BATCH)` still has, for
 * as long as `take` says more may be waiting (frames read ahead wait in memory, where no
 * readable descriptor announces them).
 */
function pump(items, take, drain) {
  if (items !== undefined && !take(items)) return;
  while (take(drain(BATCH)));
}

/** Calls `fn` with each message of a run of JSON texts joined by newlines. */
function eachJson(texts, fn) {
  for (const text of texts.split('\n')) fn(JSON.parse(text));
}

/**
 * Goes through the items of NativeSupervisor.drain: calls `onRun(id, pid, texts)` for each
 * run of JSON messages from one worker (their texts joined by newlines) and `onEvent(ev)`
 * for every other event. True when the batch was full and more may be waiting.
 */
function takeEvents(items, onRun, onEvent) {
  for (let i = 0; i < items.length; i++) {
    const item = items[i];
    if (typeof item === 'number') {
      onRun(item, items[i + 1], items[i + 2]);
      i += 2;
    } else {
      onEvent(item);
    }
  }
  return moreWaiting(items);
}

module.exports = {
  JSON_TAG, V8_TAG, CONTROL_TAG, BATCH, jsonText, encode, decodeEvent, moreWaiting, pump,
  eachJson, takeEvents, checkSerialization,
};
