'use strict';
// After a message leaves, the event loop looks for its answer without sleeping, for a short
// while: an answer that comes within that time is read without waking this thread, which on
// a virtual machine costs most of a round trip (bench/RESULTS.md: the Node round trip's p50
// went from about 67 to 14 us). A pending immediate makes libuv poll without blocking; it
// runs once per turn, so a loop with other work does that work meanwhile. The core's own
// blocking wait does the same (`next_event`, 50 us).

// Short: both ends of a round trip spin, and on a machine with two cores a longer spin (60 us)
// left the other threads (the supervisor's, V8's) less room, and the p99 grew.
const SPIN_NS = 30_000n;

let until = 0n;
let spinning = false;

function tick() {
  if (process.hrtime.bigint() < until) setImmediate(tick);
  else spinning = false;
}

/** Keeps the event loop from sleeping for SPIN_NS from now. */
function spinAfterSend() {
  until = process.hrtime.bigint() + SPIN_NS;
  if (!spinning) {
    spinning = true;
    setImmediate(tick);
  }
}

module.exports = { spinAfterSend, SPIN_NS };
