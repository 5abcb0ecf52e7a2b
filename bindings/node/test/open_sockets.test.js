'use strict';
// The open connections a worker follows for a drain: slots used again, nothing kept once
// closed, and the array let go when a crowd has left.
const test = require('node:test');
const assert = require('assert');
const { OpenSockets, MAX_IDLE_SLOTS } = require('../lib/open_sockets');

const sockets = (n) => Array.from({ length: n }, (_, i) => ({ id: i }));

test('open sockets: what is added is there until deleted, and iterates in slot order', () => {
  const open = new OpenSockets();
  const [a, b, c] = sockets(3);
  open.add(a);
  open.add(b);
  open.add(c);
  assert.deepStrictEqual([...open], [a, b, c]);
  open.delete(b);
  assert.strictEqual(open.has(b), false);
  assert.deepStrictEqual([...open], [a, c]);
  // A socket deleted twice, or one never added, changes nothing.
  open.delete(b);
  open.delete({ id: 'stranger' });
  assert.deepStrictEqual([...open], [a, c]);
  assert.strictEqual(open.has({ id: 'stranger' }), false);
});

test('open sockets: a free slot is used again, so the array grows only to the most open at once', () => {
  const open = new OpenSockets();
  const live = [];
  for (let round = 0; round < 200; round++) {
    // 1 to 40 open, as a busy worker's connections come and go.
    const n = 1 + ((round * 7919) % 40);
    for (const s of sockets(n)) {
      open.add(s);
      live.push(s);
    }
    while (live.length > (round % 3)) open.delete(live.shift());
  }
  assert.ok(open._slots.length <= 42, `slots grew to ${open._slots.length}`);
  const listed = [...open];
  assert.strictEqual(listed.length, live.length);
  for (const s of live) assert.ok(open.has(s) && listed.includes(s));
});

test('open sockets: a deleted socket is no longer held', () => {
  const open = new OpenSockets();
  const [a, b] = sockets(2);
  open.add(a);
  open.add(b);
  open.delete(a);
  assert.ok(!open._slots.includes(a), 'the closed socket is still in a slot');
  // Its slot goes to the next one; the old socket does not come back with it.
  const [c] = sockets(1);
  open.add(c);
  assert.strictEqual(open.has(a), false);
  const listed = [...open];
  assert.ok(listed.length === 2 && listed.includes(b) && listed.includes(c));
});

test('open sockets: once a crowd has left, the array is let go', () => {
  const open = new OpenSockets();
  const crowd = sockets(MAX_IDLE_SLOTS + 10);
  for (const s of crowd) open.add(s);
  for (const s of crowd.slice(1)) open.delete(s);
  assert.strictEqual(open._slots.length, MAX_IDLE_SLOTS + 10, 'let go while one is still open');
  open.delete(crowd[0]);
  assert.strictEqual(open._slots.length, 0);
  assert.deepStrictEqual([...open], []);
  // It works as before afterwards.
  const [a] = sockets(1);
  open.add(a);
  assert.deepStrictEqual([...open], [a]);
  // A small server keeps its slots (nothing to let go).
  open.delete(a);
  assert.strictEqual(open._slots.length, 1);
});
