'use strict';
// A Node primary for a Python worker: node primary.js PYTHON WORKER_SCRIPT MODE
// Prints one JSON line per message it gets (see describe.js): first the worker's own messages
// up to the raw "done", then the echoes of one message of each type it sends.
const path = require('path');
const rcluster = require(path.join(__dirname, '..', '..', '..', 'node'));
const { describe } = require('./describe');

const [python, script, mode] = process.argv.slice(2);
const c = rcluster.start({ workers: 1, program: python, args: [script, mode], handleSignals: false });
const timer = setTimeout(() => { console.log('timeout'); process.exit(1); }, 20000);
const sends = [
  [Buffer.from('J{"b":2}'), 'raw'],
  ['text \u2713', 'text'],
  [{ k: 'v', list: [1, 'two'] }, 'json'],
  [{ y: [1] }, 'v8'],
  [Buffer.alloc(0), 'raw'],
];
let phase = 'worker';
c.on('message', (m) => {
  console.log(JSON.stringify(describe(m)));
  if (phase === 'worker' && Buffer.isBuffer(m) && m.toString() === 'done') {
    phase = 'echo';
    console.log('--');
    for (const [message, contentType] of sends) c.send(0, message, { contentType });
  } else if (phase === 'echo' && Buffer.isBuffer(m) && m.length === 0) {
    clearTimeout(timer);
    c.stop({ timeout: 5000 }).then(() => process.exit(0));
  }
});
