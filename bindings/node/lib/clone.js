'use strict';
// v8.serialize and v8.deserialize for the values tasks and messages usually are, without their
// cost to the garbage collector. Each call of v8's makes a C++-backed serializer object with a
// weak handle; at tens of thousands of tasks a second, the weak handles alone took about 4 ms
// of each young collection of a pool's primary, a pause every task in flight waits out
// (bench/RESULTS.md). These functions read and write the same format (V8's value
// serialization, as v8.serialize writes it) for primitives, strings, plain objects and dense
// arrays of them, and hand anything else to v8's own: what they write, v8.deserialize reads
// as the same value, and they read what v8.serialize writes.
const v8 = require('v8');

// V8's tags (src/objects/value-serializer.cc).
const T_PADDING = 0x00;
const T_UNDEFINED = 0x5f; // _
const T_NULL = 0x30; // 0
const T_TRUE = 0x54; // T
const T_FALSE = 0x46; // F
const T_INT32 = 0x49; // I
const T_UINT32 = 0x55; // U
const T_DOUBLE = 0x4e; // N
const T_ONE_BYTE = 0x22; // "
const T_TWO_BYTE = 0x63; // c
const T_UTF8 = 0x53; // S
const T_OBJECT = 0x6f; // o
const T_END_OBJECT = 0x7b; // {
const T_DENSE_ARRAY = 0x41; // A
const T_END_DENSE_ARRAY = 0x24; // $

// The header v8.serialize writes (its version, this Node's V8's).
const HEADER = v8.serialize(null).subarray(0, -1);
// Nesting beyond this goes to v8's own (which keeps its own limits).
const MAX_DEPTH = 64;
// Values of more objects than this go to v8's own: each object is looked for among those
// before it (identity), and for a large value v8's cost per call is small beside its size.
const MAX_OBJECTS = 256;
// Arrays longer than this go to v8's own, for the same reason.
const MAX_ELEMENTS = 4096;
const NOT_LATIN1 = /[^\u0000-\u00ff]/;
// Array-index-like property names: V8 writes them as numbers.
const INDEX = /^(?:0|[1-9][0-9]*)$/;

/** Thrown inside the fast path for a value it does not write or read; never escapes. */
const OTHER = Symbol('rcluster.clone.other');

let out = Buffer.allocUnsafe(4096);
let at = 0;
const seen = [];
// A getter that serializes (a task that submits another) gets v8's own: one value at a time
// is written here.
let writing = false;

function room(n) {
  if (at + n <= out.length) return;
  let size = out.length * 2;
  while (size < at + n) size *= 2;
  const bigger = Buffer.allocUnsafe(size);
  out.copy(bigger, 0, 0, at);
  out = bigger;
}

function varint(n) {
  room(10);
  while (n >= 0x80) {
    out[at++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  out[at++] = n;
}

function writeNumber(n) {
  if ((n | 0) === n && !Object.is(n, -0)) {
    room(1);
    out[at++] = T_INT32;
    varint(((n << 1) ^ (n >> 31)) >>> 0);
    return;
  }
  room(9);
  out[at++] = T_DOUBLE;
  out.writeDoubleLE(n, at);
  at += 8;
}

function writeString(s) {
  if (!NOT_LATIN1.test(s)) {
    room(1);
    out[at++] = T_ONE_BYTE;
    varint(s.length);
    room(s.length);
    at += out.write(s, at, s.length, 'latin1');
    return;
  }
  const bytes = s.length * 2;
  // V8 aligns a two-byte string's characters: a padding byte when they would start at an odd
  // offset (the tag and the length before them).
  let lengthBytes = 1;
  for (let n = bytes; n >= 0x80; n = Math.floor(n / 0x80)) lengthBytes++;
  room(2);
  if ((at + 1 + lengthBytes) & 1) out[at++] = T_PADDING;
  out[at++] = T_TWO_BYTE;
  varint(bytes);
  room(bytes);
  at += out.write(s, at, bytes, 'utf16le');
}

function writeValue(v, depth) {
  switch (typeof v) {
    case 'number': writeNumber(v); return;
    case 'string': writeString(v); return;
    case 'boolean': room(1); out[at++] = v ? T_TRUE : T_FALSE; return;
    case 'undefined': room(1); out[at++] = T_UNDEFINED; return;
    case 'object': break;
    default: throw OTHER; // bigint, symbol, function: v8's own answers (or throws)
  }
  if (v === null) {
    room(1);
    out[at++] = T_NULL;
    return;
  }
  // An object met twice is written once and referred to after (identity kept): v8's own.
  if (depth >= MAX_DEPTH || seen.length >= MAX_OBJECTS || seen.includes(v)) throw OTHER;
  seen.push(v);
  const proto = Object.getPrototypeOf(v);
  if (proto === Object.prototype) {
    const keys = Object.keys(v);
    room(1);
    out[at++] = T_OBJECT;
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i];
      if (INDEX.test(key)) throw OTHER;
      writeString(key);
      writeValue(v[key], depth + 1);
    }
    room(1);
    out[at++] = T_END_OBJECT;
    varint(keys.length);
  } else if (proto === Array.prototype && Array.isArray(v)) {
    const n = v.length;
    // Holes and properties besides the elements: v8's own.
    if (n > MAX_ELEMENTS || Object.keys(v).length !== n) throw OTHER;
    room(1);
    out[at++] = T_DENSE_ARRAY;
    varint(n);
    for (let i = 0; i < n; i++) writeValue(v[i], depth + 1);
    room(1);
    out[at++] = T_END_DENSE_ARRAY;
    varint(0);
    varint(n);
  } else {
    throw OTHER; // Map, Set, Date, Buffer, typed arrays, class instances, Error, ...
  }
}

/**
 * What v8.serialize(value) gives, read by v8.deserialize as the same value. (A getter of a
 * value that goes to v8's own after all runs twice.)
 */
function serialize(value) {
  if (writing) return v8.serialize(value);
  writing = true;
  at = 0;
  try {
    room(HEADER.length);
    at += HEADER.copy(out, at);
    writeValue(value, 0);
  } catch (e) {
    if (e !== OTHER) throw e; // a getter that threw throws as under v8.serialize
    return v8.serialize(value);
  } finally {
    seen.length = 0;
    writing = false;
  }
  const result = Buffer.allocUnsafe(at);
  out.copy(result, 0, 0, at);
  if (out.length > 1 << 20) out = Buffer.allocUnsafe(4096);
  return result;
}

let src = null;
let pos = 0;

function byte() {
  if (pos >= src.length) throw OTHER;
  return src[pos++];
}

function readVarint() {
  let n = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    const b = byte();
    n += (b & 0x7f) * scale;
    if (b < 0x80) return n;
    scale *= 0x80;
  }
  throw OTHER;
}

function readBytes(n) {
  if (n > src.length - pos) throw OTHER;
  const start = pos;
  pos += n;
  return start;
}

function readValue(depth) {
  if (depth >= MAX_DEPTH) throw OTHER;
  let tag = byte();
  while (tag === T_PADDING) tag = byte();
  switch (tag) {
    case T_UNDEFINED: return undefined;
    case T_NULL: return null;
    case T_TRUE: return true;
    case T_FALSE: return false;
    case T_INT32: {
      const z = readVarint();
      if (z > 0xffffffff) throw OTHER;
      return (z >>> 1) ^ -(z & 1);
    }
    case T_UINT32: {
      const n = readVarint();
      if (n > 0xffffffff) throw OTHER;
      return n;
    }
    case T_DOUBLE: {
      const start = readBytes(8);
      return src.readDoubleLE(start);
    }
    case T_ONE_BYTE: {
      const n = readVarint();
      const start = readBytes(n);
      return src.toString('latin1', start, start + n);
    }
    case T_TWO_BYTE: {
      const n = readVarint();
      if (n & 1) throw OTHER;
      const start = readBytes(n);
      return src.toString('utf16le', start, start + n);
    }
    case T_UTF8: {
      const n = readVarint();
      const start = readBytes(n);
      return src.toString('utf8', start, start + n);
    }
    case T_OBJECT: {
      const o = {};
      let count = 0;
      for (;;) {
        if (pos < src.length && src[pos] === T_END_OBJECT) {
          pos++;
          if (readVarint() !== count) throw OTHER;
          return o;
        }
        const key = readValue(depth + 1);
        if (typeof key !== 'string' || INDEX.test(key) || key === '__proto__') throw OTHER;
        o[key] = readValue(depth + 1);
        count++;
      }
    }
    case T_DENSE_ARRAY: {
      const n = readVarint();
      if (n > src.length - pos) throw OTHER; // each element takes a byte at least
      const a = new Array(n);
      for (let i = 0; i < n; i++) a[i] = readValue(depth + 1);
      if (byte() !== T_END_DENSE_ARRAY || readVarint() !== 0 || readVarint() !== n) throw OTHER;
      return a;
    }
    default: throw OTHER; // back-references, holes, Map, Set, Date, host objects, ...
  }
}

/** What v8.deserialize(buffer) gives. */
function deserialize(buffer) {
  if (!Buffer.isBuffer(buffer)) return v8.deserialize(buffer);
  src = buffer;
  pos = 0;
  try {
    if (buffer.length < HEADER.length || buffer.compare(HEADER, 0, HEADER.length, 0, HEADER.length) !== 0) {
      throw OTHER;
    }
    pos = HEADER.length;
    return readValue(0);
  } catch (e) {
    if (e !== OTHER) throw e;
    return v8.deserialize(buffer);
  } finally {
    src = null;
  }
}

module.exports = { serialize, deserialize };
