'use strict';
// lib/clone.js against v8's own: what it writes, v8.deserialize reads as the same value (and
// byte for byte as v8.serialize writes it where V8 keeps the value as written); what v8.serialize
// writes, it reads as v8.deserialize does; anything else goes to v8's own, errors included.
const test = require('node:test');
const assert = require('node:assert');
const util = require('util');
const v8 = require('v8');
const clone = require('../lib/clone');

const same = (v) => v8.deserialize(v8.serialize(v));

function check(v, why = '') {
  const expected = same(v);
  const ours = clone.serialize(v);
  assert.deepStrictEqual(v8.deserialize(ours), expected, `v8 reads ours ${why}`);
  assert.deepStrictEqual(clone.deserialize(ours), expected, `we read ours ${why}`);
  assert.deepStrictEqual(clone.deserialize(v8.serialize(v)), expected, `we read v8's ${why}`);
}

// Values V8 keeps as written (Smis, one- and two-byte literals, fast objects, packed arrays).
const LITERALS = [
  undefined, null, true, false, 0, 1, -1, 63, 64, -65, 1000, 2 ** 20, -(2 ** 20), 0.5, -0, NaN,
  Infinity, -Infinity, 1e300, 2 ** 31, -(2 ** 31) - 1, 2 ** 53, '', 'a', 'hello', 'é café ÿ',
  'x'.repeat(200), 'ü'.repeat(300), '€', 'a€b', '😀', 'tab\tnew\nline', { a: 1 }, { a: 'x', b: [1, 2, 3], c: { d: null } },
  [], [1, 'two', true, null, undefined], [[1, 2], [3, [4, [5]]]], {},
  { nested: { deeper: { deepest: ['é', '€', 1.5, -0] } } },
];

test('what it writes is what v8.serialize writes, and both read it as the same value', () => {
  for (const v of LITERALS) {
    check(v, JSON.stringify(v));
  }
  // Byte for byte where V8 keeps the value as written (integers as small integers, ...).
  for (const v of [null, true, 7, -300, 'hello', 'é', '€uro', 'a€', { a: 1, b: 'x' }, ['x', 2, { y: [] }]]) {
    assert.deepStrictEqual(clone.serialize(v), v8.serialize(v), JSON.stringify(v));
  }
  // Two-byte strings at each alignment: the padding byte V8 puts before them.
  for (let n = 0; n < 4; n++) {
    const v = ['a'.repeat(n), '€'.repeat(n + 1), { ['k'.repeat(n)]: '€' }];
    assert.deepStrictEqual(clone.serialize(v), v8.serialize(v), `alignment ${n}`);
    check(v);
  }
  // Lengths around a varint's byte boundaries.
  for (const n of [63, 64, 127, 128, 129, 4096, 4097, 16383, 16384]) {
    check('a'.repeat(n), `one-byte ${n}`);
    check('€'.repeat(n), `two-byte ${n}`);
    check(new Array(n).fill(1), `array ${n}`);
  }
});

test('it writes and reads those values itself, without v8\'s serializer objects', (t) => {
  const calls = { serialize: 0, deserialize: 0 };
  for (const name of ['serialize', 'deserialize']) {
    const own = v8[name];
    t.mock.method(v8, name, (...args) => { calls[name]++; return own(...args); });
  }
  const written = LITERALS.map((v) => clone.serialize(v));
  for (const b of written) clone.deserialize(b);
  assert.deepStrictEqual(calls, { serialize: 0, deserialize: 0 });
  clone.serialize(new Map());
  clone.deserialize(Buffer.from([0xff, 0x0f, 0x3b, 0x3a, 0x00])); // an empty Map
  assert.deepStrictEqual(calls, { serialize: 1, deserialize: 1 });
});

test('what it does not write itself goes to v8\'s own, and reads back the same', () => {
  const shared = { s: 1 };
  const cyclic = { name: 'c' };
  cyclic.self = cyclic;
  class Point { constructor() { this.x = 1; } }
  const holey = [1, , 3]; // eslint-disable-line no-sparse-arrays
  const extra = [1, 2];
  extra.note = 'n';
  const deep = [];
  let at = deep;
  for (let i = 0; i < 100; i++) { const next = []; at.push(next); at = next; }
  const many = Array.from({ length: 300 }, (_, i) => ({ i }));
  const odd = [
    10n, new Date(5), /re/g, new Map([[1, 2]]), new Set([1]), Buffer.from('hi'), new Uint8Array([1, 2]),
    new Float64Array([1.5]), new ArrayBuffer(3), new Error('boom'), [shared, shared], cyclic, new Point(),
    Object.create(null), holey, extra, deep, many, { 1: 'index key' }, { a: { 0: 'x' } }, new Boolean(true),
    new String('s'), new Number(1),
  ];
  for (const v of odd) {
    const ours = clone.serialize(v);
    assert.deepStrictEqual(ours, v8.serialize(v), String(v && v.constructor && v.constructor.name));
    assert.deepStrictEqual(clone.deserialize(ours), same(v));
  }
  // Identity survives: the shared object is one object after.
  const [a, b] = clone.deserialize(clone.serialize([shared, shared]));
  assert.strictEqual(a, b);
  const c = clone.deserialize(clone.serialize(cyclic));
  assert.strictEqual(c.self, c);
});

test('what v8.serialize cannot write throws as it does; a getter that throws throws', () => {
  for (const v of [() => 1, Symbol('s'), { f() {} }, [1, () => 2]]) {
    let expected;
    try { v8.serialize(v); } catch (e) { expected = e; }
    assert.ok(expected, 'v8.serialize throws');
    assert.throws(() => clone.serialize(v), (e) => e.constructor === expected.constructor && e.message === expected.message);
  }
  const boom = new Error('getter');
  const v = { get x() { throw boom; } };
  assert.throws(() => clone.serialize(v), (e) => e === boom);
  // The next call is not disturbed.
  check({ after: 'throw' });
});

test('a getter that serializes while its value is written gets a value of its own', () => {
  const inner = { deep: ['inner', 1] };
  let innerBytes = null;
  const v = { a: 1, get b() { innerBytes = clone.serialize(inner); return 'b'; }, c: 'é' };
  const bytes = clone.serialize(v);
  assert.deepStrictEqual(v8.deserialize(bytes), { a: 1, b: 'b', c: 'é' });
  assert.deepStrictEqual(v8.deserialize(innerBytes), inner);
});

/** A small deterministic generator (xorshift), so that a failure is the same every run. */
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 0x100000000;
  };
}

function randomValue(r, depth) {
  const pick = Math.floor(r() * (depth > 3 ? 8 : 11));
  switch (pick) {
    case 0: return null;
    case 1: return undefined;
    case 2: return r() < 0.5;
    case 3: return Math.floor((r() - 0.5) * 2 ** (1 + Math.floor(r() * 40)));
    case 4: return (r() - 0.5) * 10 ** Math.floor(r() * 20 - 10);
    case 5: return String.fromCharCode(...Array.from({ length: Math.floor(r() * 12) }, () => Math.floor(r() * 256)));
    case 6: return String.fromCharCode(...Array.from({ length: Math.floor(r() * 12) }, () => Math.floor(r() * 0x10000)));
    case 7: return [-0, NaN, Infinity, 2 ** 31 - 1, -(2 ** 31)][Math.floor(r() * 5)];
    case 8: return Array.from({ length: Math.floor(r() * 5) }, () => randomValue(r, depth + 1));
    case 9: {
      const o = {};
      const n = Math.floor(r() * 5);
      for (let i = 0; i < n; i++) o[`k${Math.floor(r() * 100)}${r() < 0.2 ? '€' : ''}`] = randomValue(r, depth + 1);
      return o;
    }
    default: return [new Date(Math.floor(r() * 1e12)), new Map([[r(), r()]]), 5n][Math.floor(r() * 3)];
  }
}

test('random values: both read what either writes as the same value', () => {
  const r = rng(20261206);
  for (let i = 0; i < 3000; i++) check(randomValue(r, 0), `value ${i}`);
});

test('damaged input: it reads what v8.deserialize reads, and fails where it fails', () => {
  const r = rng(7);
  for (let i = 0; i < 3000; i++) {
    const bytes = Buffer.from(v8.serialize(randomValue(r, 0)));
    const what = Math.floor(r() * 3);
    let damaged;
    if (what === 0) damaged = bytes.subarray(0, Math.floor(r() * bytes.length)); // cut short
    else if (what === 1) { damaged = bytes; damaged[Math.floor(r() * bytes.length)] = Math.floor(r() * 256); } // a byte changed
    else damaged = Buffer.concat([bytes, Buffer.from([Math.floor(r() * 256)])]); // a byte more
    let expected;
    let failed = null;
    try { expected = v8.deserialize(damaged); } catch (e) { failed = e; }
    const input = `input ${damaged.toString('hex')}`;
    if (failed) {
      assert.throws(() => clone.deserialize(damaged), input);
    } else {
      // (An invalid Date is not deep-equal to itself: compared as v8 writes them.)
      const ours = clone.deserialize(damaged);
      assert.ok(util.isDeepStrictEqual(ours, expected) || v8.serialize(ours).equals(v8.serialize(expected)), input);
    }
  }
});
