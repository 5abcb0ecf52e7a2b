#!/usr/bin/env bash
# Node pools: rcluster.Pool against piscina and workerpool, measured in the same run.
# Installs the anchors into bench/pool/node_modules (never into the rcluster package), builds
# the addon (release), then runs node_pools.js. Counts: TINY, CPU, LAT, MEM (defaults: the
# issue's figures; pass small ones on a shared machine).
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-audit --no-fund --silent </dev/null
(cd ../../bindings/node && node scripts/build.js)
timeout 900 node node_pools.js "${TINY:-50000}" "${CPU:-40}" "${LAT:-2000}" "${MEM:-1000000}"
