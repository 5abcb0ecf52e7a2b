#!/usr/bin/env bash
# Regenerates include/rcluster.h from ffi/ with cbindgen (as a library: nothing is installed
# globally), or with --check fails when the committed header is stale.
# Usage: ffi/header.sh [--check]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Its own workspace and lock file (ffi/header/), built into the main target directory.
CARGO_TARGET_DIR="$repo/target/header" exec cargo run --quiet --release --locked \
    --manifest-path "$repo/ffi/header/Cargo.toml" -- "$@"
