'use strict';
// JSON messages sent in one turn of the event loop leave together: one native call and one
// write (or one wake-up of the supervisor) for the lot, instead of one each. The texts travel
// joined by newlines, which JSON.stringify never writes. Whatever else goes to the same peer
// (a binding message, `ready`, `disconnect`) flushes the box first, so order holds.
const { rclusterError } = require('./errors');
const { spinAfterSend } = require('./spin');

// A full box is sent at once, so that a long synchronous loop of sends neither holds an
// unbounded batch nor waits for its end.
const MAX_BATCH = 512;

class Outbox {
  /**
   * @param write   (joined) => void: sends the texts; throws a native error when it cannot.
   * @param limit   the largest message in bytes.
   * @param onError (err) => void: a batch flushed after the sending call returned failed
   *                for messages that had no callback.
   */
  constructor(write, limit, onError) {
    this._write = write;
    this._limit = limit;
    this._onError = onError;
    this._texts = [];
    this._callbacks = [];
    this._scheduled = false;
    this._flushLater = () => {
      this._scheduled = false;
      this.flush(false);
    };
  }

  /** Queues one JSON text. Throws at once when it is too large, or when the box was full and
   * could not be sent (the messages of that batch are then lost, as the error says). */
  push(text, callback) {
    // UTF-8 takes at most 3 bytes per UTF-16 unit: measure only texts that may be too large.
    if (text.length * 3 > this._limit) {
      const size = Buffer.byteLength(text);
      if (size > this._limit) {
        throw rclusterError('ERR_RCLUSTER_MESSAGE_TOO_LARGE',
          `message too large: ${size} bytes, the limit is ${this._limit} bytes`);
      }
    }
    this._texts.push(text);
    this._callbacks.push(callback);
    if (this._texts.length >= MAX_BATCH) {
      this.flush(true);
    } else if (!this._scheduled) {
      this._scheduled = true;
      queueMicrotask(this._flushLater);
    }
  }

  /** Sends what is queued. `rethrow`: the caller is a sending call, which throws the error. */
  flush(rethrow = true) {
    const texts = this._texts;
    if (texts.length === 0) return;
    const callbacks = this._callbacks;
    this._texts = [];
    this._callbacks = [];
    let error = null;
    try {
      this._write(texts.length === 1 ? texts[0] : texts.join('\n'));
      spinAfterSend();
    } catch (e) {
      error = e;
    }
    let unanswered = false;
    for (const cb of callbacks) {
      if (cb) process.nextTick(cb, error);
      else unanswered = true;
    }
    if (error && unanswered) {
      if (rethrow) throw error;
      this._onError(error);
    }
  }
}

module.exports = { Outbox };
