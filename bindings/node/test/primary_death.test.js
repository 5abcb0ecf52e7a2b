'use strict';
// A Node primary killed with SIGKILL leaves nothing behind: every process of every worker's
// group is gone within a second (the core's sentinel kills the groups), and where the cluster
// has a cgroup of its own, so are descendants that left the group with setsid.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('fs');
const path = require('path');
const { spawn } = require('child_process');

const MARK_VAR = 'RCLUSTER_TEST_MARK';

/** [state, ppid, pgrp, session] of a process, or null when it is gone. */
function stat(pid) {
  try {
    const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' ').slice(0, 4);
  } catch {
    return null;
  }
}

const running = (pid) => { const s = stat(pid); return s !== null && s[0] !== 'Z'; };

/** Running processes whose environment carries the mark. */
function marked(mark) {
  const needle = `${MARK_VAR}=${mark}`;
  return fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number).filter((pid) => {
    if (pid === process.pid || !running(pid)) return false;
    try {
      return fs.readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').includes(needle);
    } catch {
      return false;
    }
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test('a SIGKILLed Node primary takes every process of its workers groups with it within a second', async () => {
  const mark = `node-${process.pid}-${Date.now()}`;
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'death_primary.js')], {
    env: { ...process.env, [MARK_VAR]: mark },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  try {
    const line = await new Promise((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
        if (out.includes('\n')) resolve(out.split('\n')[0]);
      });
      const timer = setTimeout(() => reject(new Error(`no pids within 10 s: ${out}`)), 10000);
      child.stdout.on('data', () => { if (out.includes('\n')) clearTimeout(timer); });
    });
    const workers = line.trim().split(' ').map(Number);
    assert.strictEqual(workers.length, 2, line);
    // Each worker's group: the worker and its child; plus one setsid grandchild each.
    const inGroups = () => marked(mark).filter((p) => workers.includes(Number((stat(p) || [])[2])));
    const escaped = () => marked(mark).filter((p) => {
      const s = stat(p);
      return s && Number(s[3]) === p && !workers.includes(p);
    });
    for (let i = 0; i < 1000 && (inGroups().length < 4 || escaped().length < 2); i++) await sleep(10);
    const group = inGroups();
    assert.strictEqual(group.length, 4, `groups: ${group}`);
    const cgroup = fs.readFileSync(`/proc/${workers[0]}/cgroup`, 'utf8').includes('/rcluster.');

    child.kill('SIGKILL');
    const killedAt = process.hrtime.bigint();
    await exited;
    while (group.some(running) && process.hrtime.bigint() - killedAt < 5_000_000_000n) await sleep(5);
    const tookMs = Number(process.hrtime.bigint() - killedAt) / 1e6;
    const left = group.filter(running);
    assert.deepStrictEqual(left, [], `group members outlived the primary: ${left}`);
    assert.ok(tookMs < 1000, `the groups took ${tookMs} ms to die`);
    console.log(`# node: worker groups gone ${tookMs.toFixed(1)} ms after SIGKILL of the primary`);
    if (cgroup) {
      while (marked(mark).length > 0 && process.hrtime.bigint() - killedAt < 1_000_000_000n) await sleep(5);
      assert.deepStrictEqual(marked(mark), [], 'setsid descendants outlived the primary and its cgroup');
    }
  } finally {
    for (const pid of marked(mark)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    child.kill('SIGKILL');
  }
});
