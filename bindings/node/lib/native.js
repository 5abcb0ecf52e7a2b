'use strict';
// Loads the native addon, first found of:
//   1. rcluster.node beside package.json: built from source (a checkout, or the fallback
//      build of scripts/build.js when no prebuilt package fits this machine);
//   2. the prebuilt addon of this platform, from its package (napi-rs convention:
//      rcluster-<platform>-<arch>[-<libc>], an optionalDependency of rcluster that npm
//      installs only where its os/cpu/libc match).
const fs = require('fs');
const path = require('path');
const { platformTriple, prebuiltPackage } = require('./platform');

function load() {
  const local = path.join(__dirname, '..', 'rcluster.node');
  if (fs.existsSync(local)) return { native: require(local) };
  const pkg = prebuiltPackage();
  let error;
  try {
    return { native: require(pkg) };
  } catch (e) {
    error = e;
  }
  const err = new Error(
    `rcluster: no native addon for ${platformTriple()}: ${pkg} is not installed (${error.message}) ` +
    `and ${local} was not built. Reinstall rcluster with optional dependencies (not ` +
    '--omit=optional / --no-optional), or build from source with a Rust toolchain: ' +
    '`npm rebuild rcluster` (or `npm run build` in the rcluster package folder).');
  err.code = 'ERR_RCLUSTER_ADDON';
  throw err;
}

module.exports = load().native;
