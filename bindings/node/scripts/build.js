'use strict';
// Builds the native addon from source with cargo (no prebuilt binaries) and puts it beside
// package.json as rcluster.node. Runs on `npm install` / `npm ci` and `npm run build`.
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const profile = process.env.RCLUSTER_BUILD_PROFILE === 'debug' ? 'debug' : 'release';
const args = ['build', '-p', 'rcluster-node', '--message-format=json-render-diagnostics'];
if (profile === 'release') args.push('--release');

const cargo = process.env.CARGO || 'cargo';
const run = spawnSync(cargo, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 256 << 20 });
if (run.error) {
  console.error(`rcluster: cannot run ${cargo} (${run.error.message}); a Rust toolchain is needed to build the addon`);
  process.exit(1);
}
if (run.status !== 0) {
  console.error(`rcluster: cargo build failed (exit ${run.status})`);
  process.exit(run.status || 1);
}
// The artifact's path comes from cargo itself, wherever the target directory is.
let library = null;
for (const line of run.stdout.toString().split('\n')) {
  if (!line.startsWith('{')) continue;
  const msg = JSON.parse(line);
  if (msg.reason === 'compiler-artifact' && msg.target && msg.target.name === 'rcluster_node') {
    library = msg.filenames.find((f) => f.endsWith('.so') || f.endsWith('.dylib'));
  }
}
if (!library) {
  console.error('rcluster: cargo did not report the rcluster_node library');
  process.exit(1);
}
const dest = path.join(root, 'rcluster.node');
// Copied to a new file and renamed: a running process may have the old one mapped.
fs.copyFileSync(library, `${dest}.tmp`);
fs.renameSync(`${dest}.tmp`, dest);
console.log(`rcluster: built ${path.relative(root, dest)} (${profile})`);
