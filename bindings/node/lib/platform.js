'use strict';
// Names of the prebuilt addon packages (napi-rs convention): rcluster-<platform>-<arch>[-<libc>].

/** The suffix of this machine's prebuilt package, e.g. 'linux-x64-gnu'. */
function platformTriple() {
  let triple = `${process.platform}-${process.arch}`;
  if (process.platform === 'linux') {
    // glibcVersionRuntime is only reported by a node linked against glibc.
    const header = process.report && process.report.getReport().header;
    triple += header && header.glibcVersionRuntime ? '-gnu' : '-musl';
  }
  return triple;
}

/** The package holding this machine's prebuilt addon. */
function prebuiltPackage() {
  return `rcluster-${platformTriple()}`;
}

module.exports = { platformTriple, prebuiltPackage };
