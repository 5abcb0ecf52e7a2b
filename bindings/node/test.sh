#!/usr/bin/env bash
# Node binding tests: installs from the lockfile (which builds the addon from source with
# cargo), then runs the node:test suites. Needs node >= 18, npm and a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")"

command -v node >/dev/null || { echo "node is needed for the Node binding tests" >&2; exit 1; }
echo "node $(node --version), npm $(npm --version)"

# npm ci runs the package's install script, which is the cargo build.
CI=true npm ci --no-audit --no-fund </dev/null

# The types: index.d.ts against a file that uses every documented call, with the strictest
# settings, once checking @types/node and index.d.ts together and once without the lib check.
for lib in "" --skipLibCheck; do
    echo "tsc --strict ${lib:-(with lib check)}: test/types/usage.ts"
    ./node_modules/.bin/tsc -p test/types --strict $lib
done

# Bounded: a hung cluster fails the run instead of stalling it.
status=0
timeout 300 node --test --test-timeout=60000 --test-reporter=spec test/*.test.js </dev/null >test-output.log 2>&1 || status=$?
grep -E '^\s*(✔|✖)|^ℹ (tests|pass|fail|cancelled|duration)' test-output.log || cat test-output.log
if [[ $status -ne 0 ]]; then
    echo "node tests failed (exit $status); full output:" >&2
    cat test-output.log >&2
fi
rm -f test-output.log
exit "$status"
