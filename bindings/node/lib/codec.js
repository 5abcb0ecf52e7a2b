'use strict';
// Message content types. The type of every message travels in its frame header (see
// docs/protocol.md, "Content types"), so that the receiving side, whatever its language or
// its own `serialization` setting, decodes it as it was meant; the body is the message alone.
const clone = require('./clone');
const { invalidOption } = require('./errors');

/** The protocol's content type numbers (what the native send functions take). */
const CONTENT = Object.freeze({ raw: 0, text: 1, json: 2, v8: 3, binding: 4, pickle: 5 });

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

/** The bytes of a `raw` message: a Buffer, any ArrayBuffer view, or a string (its UTF-8). */
function rawBytes(message) {
  if (Buffer.isBuffer(message) || typeof message === 'string') return message;
  if (ArrayBuffer.isView(message)) return Buffer.from(message.buffer, message.byteOffset, message.byteLength);
  throw invalidOption('message', message, "cannot be sent as contentType 'raw' (a Buffer, a typed array or a string)");
}

/**
 * [content type number, data] for the native send functions. Without `contentType` (the
 * `cluster` way) the setting decides: JSON, or v8 for 'advanced'. `contentType` ('raw',
 * 'text', 'json', 'v8') chooses for one message, e.g. for a peer written in another language.
 */
function encode(message, serialization, contentType) {
  switch (contentType === undefined ? (serialization === 'advanced' ? 'v8' : 'json') : contentType) {
    case 'json': return [CONTENT.json, jsonText(message)];
    case 'v8': return [CONTENT.v8, clone.serialize(message)];
    case 'raw': return [CONTENT.raw, rawBytes(message)];
    case 'text':
      if (typeof message !== 'string') throw invalidOption('message', message, "must be a string for contentType 'text'");
      return [CONTENT.text, message];
    default:
      throw invalidOption('options.contentType', contentType, "expected 'raw', 'text', 'json' or 'v8'");
  }
}

/** The content type an options object of `send` asks for (undefined: the setting's). */
function contentTypeOf(options) {
  return options !== null && typeof options === 'object' ? options.contentType : undefined;
}

/**
 * Decodes a user message ({ encoding: its content type, data }): raw → Buffer, text → string,
 * json → the parsed value, v8 → the deserialized value. `binding` messages are not user
 * messages: callers handle them (`bindingMessage`) before.
 */
function decodeEvent(ev) {
  switch (ev.encoding) {
    case 'json': return JSON.parse(ev.data);
    case 'v8': return clone.deserialize(ev.data);
    default: return ev.data; // raw: a Buffer; text: a string
  }
}

/**
 * The object of a `binding` message (Node's bookkeeping: JSON with an `act`), or null for one
 * this binding cannot read: another binding's, which is ignored, as the protocol says.
 */
function bindingMessage(data) {
  try {
    const c = JSON.parse(data);
    return c !== null && typeof c === 'object' && typeof c.act === 'string' ? c : null;
  } catch {
    return null;
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
  CONTENT, BATCH, jsonText, encode, contentTypeOf, decodeEvent, bindingMessage, moreWaiting, pump,
  eachJson, takeEvents, checkSerialization,
};
