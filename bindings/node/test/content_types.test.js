'use strict';
// Content types across languages: a worker written in C (against include/rcluster.h and the
// built librcluster) and a Node primary understand each other's messages of every type.
const test = require('node:test');
const assert = require('assert');
const { execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const rcluster = require('..');
const { once } = require('./helpers');

const REPO = path.join(__dirname, '..', '..', '..');

/** Builds librcluster (a no-op when fresh) and the C worker fixture; returns its path. */
function buildCWorker() {
  execFileSync('cargo', ['build', '-p', 'rcluster-ffi', '--quiet'], { cwd: REPO, stdio: 'inherit' });
  const target = process.env.CARGO_TARGET_DIR || path.join(REPO, 'target');
  const lib = path.join(target, 'debug');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rcluster-content-'));
  const out = path.join(dir, 'content_worker');
  execFileSync('gcc', ['-std=c11', '-Wall', '-Wextra', '-Werror', '-I', path.join(REPO, 'include'),
    '-o', out, path.join(__dirname, 'fixtures', 'content_worker.c'),
    `-L${lib}`, '-lrcluster', `-Wl,-rpath,${lib}`, '-lpthread'], { stdio: 'inherit' });
  return out;
}

/** Collects the primary's messages until `stop` says the last one came (bounded). */
function collect(c, stop, ms = 10000) {
  const got = [];
  return once(c, 'message', (m) => { got.push(m); return stop(m); }, ms).then(() => got);
}

const isDone = (m) => Buffer.isBuffer(m) && m.toString() === 'done';

test('a C worker\'s messages of every content type reach a Node primary as sent, and every type Node sends comes back', async () => {
  const program = buildCWorker();
  const c = rcluster.start({ workers: 1, program, args: [], readyOn: 'explicit' });
  try {
    const got = await collect(c, isDone);
    // Raw bytes that start like the tags Node once put in front of its messages stay raw;
    // binding messages Node does not know are not user messages.
    assert.deepStrictEqual(got, [
      Buffer.from('J{"a":1}'),
      Buffer.from([0x56, 0xff, 0x0f]),
      Buffer.from('C{"act":"listening"}'),
      'héllo ✓',
      { n: [1, 2] },
      { x: 1 },
      Buffer.from('done'),
    ]);

    // Node → C → Node: the C worker echoes type and bytes.
    const sent = [
      [Buffer.from('J{"b":2}'), 'raw'],
      [Buffer.from([0x43, 0, 0xff]), 'raw'],
      ['text ✓', 'text'],
      [{ k: 'v', list: [1, 'two'] }, 'json'],
      [{ y: [1], big: 10n }, 'v8'],
      [Buffer.alloc(0), 'raw'],
    ];
    const back = collect(c, (m) => Buffer.isBuffer(m) && m.length === 0);
    for (const [message, contentType] of sent) c.send(0, message, { contentType });
    assert.deepStrictEqual(await back, sent.map(([m]) => m));
  } finally {
    await c.stop({ timeout: 5000 });
  }
});
