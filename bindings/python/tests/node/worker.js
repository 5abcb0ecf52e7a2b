'use strict';
// A Node worker for a Python primary: sends one message of each content type, then the raw
// "done"; answers every message with what it made of it (describe.js), as JSON.
const path = require('path');
const rcluster = require(path.join(__dirname, '..', '..', '..', 'node'));
const { describe } = require('./describe');

const me = rcluster.worker;
if (!me) {
  console.error('worker.js: not started by an rcluster primary');
  process.exit(2);
}
me.send(Buffer.from('J{"a":1}'), undefined, { contentType: 'raw' });
me.send('h\u00e9llo \u2713', undefined, { contentType: 'text' });
me.send({ n: [1, 2] });
me.send({ x: 1 }, undefined, { contentType: 'v8' });
me.send(Buffer.from('done'), undefined, { contentType: 'raw' });
me.on('message', (m) => me.send(describe(m)));
