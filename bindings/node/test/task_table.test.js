'use strict';
// The pool's table of tasks in flight (lib/task_table.js).
const test = require('node:test');
const assert = require('node:assert');
const { TaskTable, MIN_SLOTS, MAX_IDLE_SLOTS } = require('../lib/task_table');

const task = (id) => ({ id });

test('tasks are found by id until taken out, however many are in flight', () => {
  const t = new TaskTable();
  const n = 10000;
  for (let id = 1; id <= n; id++) t.set(id, task(id));
  assert.strictEqual(t.size, n);
  for (let id = 1; id <= n; id++) assert.strictEqual(t.get(id).id, id);
  assert.strictEqual(t.get(n + 1), undefined);
  assert.strictEqual(t.get(0), undefined);
  for (let id = 1; id <= n; id += 2) assert.strictEqual(t.delete(id), true);
  assert.strictEqual(t.delete(1), false, 'taken out twice');
  assert.strictEqual(t.delete(n + 5), false, 'never in');
  assert.strictEqual(t.size, n / 2);
  for (let id = 1; id <= n; id++) assert.strictEqual(t.get(id) === undefined, id % 2 === 1, `id ${id}`);
  for (let id = 2; id <= n; id += 2) t.delete(id);
  assert.strictEqual(t.size, 0);
  assert.strictEqual(t._slots.length, MIN_SLOTS, 'an empty table lets its slots go');
});

test('a task whose slot an older one holds waits beside it; the array does not grow with the distance', () => {
  const t = new TaskTable();
  t.set(1, task(1)); // stuck in flight
  // A million tasks pass one at a time; each meets the stuck one's slot now and then.
  for (let id = 2; id < 1_000_000; id++) {
    t.set(id, task(id));
    assert.strictEqual(t.get(id).id, id);
    assert.strictEqual(t.delete(id), true);
  }
  assert.strictEqual(t.get(1).id, 1);
  assert.strictEqual(t.size, 1);
  assert.ok(t._slots.length <= 2 * MIN_SLOTS, `${t._slots.length} slots`);
  assert.strictEqual(t._others, null, 'nothing waits beside it once taken out');
  // Both in at once: the second in the Map beside the array.
  const clash = 1 + t._slots.length;
  t.set(clash, task(clash));
  assert.strictEqual(t.get(clash).id, clash);
  assert.strictEqual(t.get(1).id, 1);
  assert.strictEqual(t.delete(1), true);
  assert.strictEqual(t.get(clash).id, clash, 'found after the older one left its slot');
  assert.strictEqual(t.delete(clash), true);
  assert.strictEqual(t.size, 0);
});

test('ids beyond 32 bits, and a table grown past its idle size shrinks when empty', () => {
  const t = new TaskTable();
  const base = 2 ** 40;
  for (let i = 0; i < 2 * MAX_IDLE_SLOTS; i++) t.set(base + i, task(base + i));
  assert.ok(t._slots.length > MAX_IDLE_SLOTS);
  for (let i = 0; i < 2 * MAX_IDLE_SLOTS; i++) assert.strictEqual(t.get(base + i).id, base + i);
  assert.strictEqual(t.get(base + 2 ** 32), undefined, 'the same low bits, another id');
  for (let i = 0; i < 2 * MAX_IDLE_SLOTS; i++) t.delete(base + i);
  assert.strictEqual(t._slots.length, MIN_SLOTS);
});
