'use strict';
// Loads the addon built from source by `npm install` (scripts/build.js puts it beside
// package.json). A missing file means the build did not run; say how to run it.
const path = require('path');

const file = path.join(__dirname, '..', 'rcluster.node');
let native;
try {
  native = require(file);
} catch (e) {
  const err = new Error(
    `rcluster: cannot load the native addon ${file} (${e.message}); ` +
    'build it with `npm install` (or `npm run build`) in the rcluster package folder');
  err.code = 'ERR_RCLUSTER_ADDON';
  throw err;
}
module.exports = native;
