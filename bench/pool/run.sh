#!/usr/bin/env bash
# Node pools: rcluster.Pool against piscina and workerpool, measured in the same run.
# Installs the anchors into bench/pool/node_modules (never into the rcluster package), builds
# the addon (release), then runs node_pools.js and loaded.js. Counts: TINY, CPU, LAT, MEM
# (defaults: the issue's figures; pass small ones on a shared machine); for loaded.js
# SECONDS_A_ROUND (3), INFLIGHT (32), ROUNDS (5).
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-audit --no-fund --silent </dev/null
(cd ../../bindings/node && node scripts/build.js)
timeout 900 node node_pools.js "${TINY:-50000}" "${CPU:-40}" "${LAT:-2000}" "${MEM:-1000000}"
# Under steady load (INFLIGHT tasks in flight, ROUNDS alternated rounds of SECONDS): tasks/s,
# latency percentiles and the primary's young-collection pauses, rcluster against piscina.
timeout 600 node loaded.js "${SECONDS_A_ROUND:-3}" "${INFLIGHT:-32}" "${ROUNDS:-5}"
