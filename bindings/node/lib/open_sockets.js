'use strict';

const kSlot = Symbol('rcluster.slot');
// Slots an OpenSockets keeps when no connection is open (more are let go).
const MAX_IDLE_SLOTS = 1024;

/**
 * The open connections of a server, in slots of an array that are used again once free. With
 * a Set, which grows and shrinks with the connections, each young collection of a busy HTTP
 * worker copied three to four times as much and paused twice as long, a pause that every
 * request in hand waits out (bench/RESULTS.md): the tables a Set outgrows, once old, keep the
 * connections they held reachable until the next full collection. The array only grows, to the
 * most connections open at once, and is let go when nothing is open past MAX_IDLE_SLOTS.
 */
class OpenSockets {
  constructor() {
    this._slots = [];
    this._free = []; // indices of free slots (small integers: nothing for a collection to follow)
  }

  add(socket) {
    const i = this._free.length > 0 ? this._free.pop() : this._slots.length;
    this._slots[i] = socket;
    socket[kSlot] = i;
  }

  delete(socket) {
    const i = socket[kSlot];
    if (i === undefined || this._slots[i] !== socket) return;
    this._slots[i] = null;
    this._free.push(i);
    if (this._free.length === this._slots.length && this._slots.length > MAX_IDLE_SLOTS) {
      this._slots = [];
      this._free = [];
    }
  }

  has(socket) {
    const i = socket[kSlot];
    return i !== undefined && this._slots[i] === socket;
  }

  * [Symbol.iterator]() {
    for (const socket of this._slots) if (socket !== null) yield socket;
  }
}

module.exports = { OpenSockets, MAX_IDLE_SLOTS };
