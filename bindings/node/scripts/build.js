'use strict';
// Builds the native addon from source with cargo and puts it beside package.json as
// rcluster.node (which lib/native.js loads first).
//   node scripts/build.js              build (`npm run build`, `npm rebuild rcluster`)
//   node scripts/build.js --if-needed  the install script: nothing to do when the prebuilt
//                                      package of this platform is installed (the usual
//                                      case: no Rust toolchain needed), else build
// The sources are the repository's workspace in a checkout, or `rust/` in a packed tarball
// (a self-contained workspace of rcluster-core and the addon, written by scripts/vendor.js
// when the package is packed). RCLUSTER_BUILD_FROM_SOURCE=1 builds even when a prebuilt
// addon is installed; RCLUSTER_BUILD_PROFILE=debug builds a debug addon.
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const { platformTriple, prebuiltPackage } = require('../lib/platform');

const root = path.join(__dirname, '..');
const dest = path.join(root, 'rcluster.node');

if (process.argv.includes('--if-needed') && !process.env.RCLUSTER_BUILD_FROM_SOURCE) {
  let prebuilt = null;
  try {
    prebuilt = require.resolve(prebuiltPackage(), { paths: [root] });
  } catch {
    // Not installed: no prebuilt addon for this platform (or optional dependencies omitted).
  }
  if (prebuilt) process.exit(0);
  console.error(`rcluster: no prebuilt addon for ${platformTriple()}; building it from source with cargo`);
}

const vendored = path.join(root, 'rust', 'Cargo.toml');
const fromTarball = fs.existsSync(vendored);
const profile = process.env.RCLUSTER_BUILD_PROFILE === 'debug' ? 'debug' : 'release';
const args = ['build', '-p', 'rcluster-node', '--message-format=json-render-diagnostics'];
if (profile === 'release') args.push('--release');
if (fromTarball) args.push('--manifest-path', vendored);

const cargo = process.env.CARGO || 'cargo';
const run = spawnSync(cargo, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 256 << 20 });
if (run.error) {
  console.error(`rcluster: cannot run ${cargo} (${run.error.message}): building the addon from source ` +
    `needs a Rust toolchain (https://rustup.rs), since no prebuilt addon for ${platformTriple()} is installed`);
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
// Copied to a new file and renamed: a running process may have the old one mapped.
fs.copyFileSync(library, `${dest}.tmp`);
fs.renameSync(`${dest}.tmp`, dest);
// In an installed package the build tree is only weight (hundreds of MB): the addon is copied.
const ownTarget = path.join(root, 'rust', 'target');
if (fromTarball && !process.env.CARGO_TARGET_DIR && fs.existsSync(ownTarget)) {
  fs.rmSync(ownTarget, { recursive: true, force: true });
}
console.log(`rcluster: built ${path.relative(root, dest)} (${profile})`);
