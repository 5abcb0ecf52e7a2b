'use strict';

// Slots a table starts with, and keeps when no task is in flight (more are let go).
const MIN_SLOTS = 64;
const MAX_IDLE_SLOTS = 4096;

/**
 * A pool's tasks in flight by id, each in the slot of an array its id picks (the id modulo the
 * array's length, a power of two). With a Map, which with a task in and a task out all the
 * time takes a new table every few dozen tasks, each young collection of a busy pool's
 * primary copied about 1.4 MB (the tables, referred to from the old Map, and what they held)
 * and paused 3 ms (median), a pause every task in flight waits out (bench/RESULTS.md). Ids
 * come in order, so the tasks in flight mostly fall in slots of their own; the array doubles
 * when half full, and the rare task whose slot is taken by an older one that is still in
 * flight waits in a Map beside it (rather than the array growing with the distance between
 * them).
 */
class TaskTable {
  constructor() {
    this._slots = new Array(MIN_SLOTS).fill(null);
    this._others = null; // id -> task, for tasks whose slot was taken
    this.size = 0;
  }

  /** Adds `task` (its `id` set) to the table. */
  set(id, task) {
    if (this.size >= this._slots.length >> 1) this._resize(this._slots.length * 2);
    this._put(id, task);
    this.size++;
  }

  get(id) {
    const task = this._slots[id & (this._slots.length - 1)];
    if (task !== null && task.id === id) return task;
    return this._others === null ? undefined : this._others.get(id);
  }

  /** Takes the task `id` out; false if it is not in. */
  delete(id) {
    const i = id & (this._slots.length - 1);
    const task = this._slots[i];
    if (task !== null && task.id === id) {
      this._slots[i] = null;
    } else if (this._others === null || !this._others.delete(id)) {
      return false;
    }
    this.size--;
    if (this._others !== null && this._others.size === 0) this._others = null;
    if (this.size === 0 && this._slots.length > MAX_IDLE_SLOTS) this._slots = new Array(MIN_SLOTS).fill(null);
    return true;
  }

  _put(id, task) {
    const i = id & (this._slots.length - 1);
    if (this._slots[i] === null) this._slots[i] = task;
    else (this._others || (this._others = new Map())).set(id, task);
  }

  _resize(n) {
    const old = this._slots;
    const others = this._others;
    this._slots = new Array(n).fill(null);
    this._others = null;
    for (const task of old) if (task !== null) this._put(task.id, task);
    if (others !== null) for (const [id, task] of others) this._put(id, task);
  }
}

module.exports = { TaskTable, MIN_SLOTS, MAX_IDLE_SLOTS };
