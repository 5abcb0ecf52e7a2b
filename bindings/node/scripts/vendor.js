'use strict';
// Writes rust/: a self-contained cargo workspace of the addon and rcluster-core, so that a
// packed tarball builds from source outside the repository (scripts/build.js uses it when no
// prebuilt addon fits). Run by `npm pack` (prepack); `node scripts/vendor.js --clean`
// (postpack) removes it. Outside a checkout (a tarball already holding rust/) it does nothing.
const fs = require('fs');
const path = require('path');

const pkg = path.join(__dirname, '..');
const repo = path.join(pkg, '..', '..');
const out = path.join(pkg, 'rust');

if (process.argv.includes('--clean')) {
  if (fs.existsSync(path.join(repo, 'Cargo.toml'))) fs.rmSync(out, { recursive: true, force: true });
  process.exit(0);
}
if (!fs.existsSync(path.join(repo, 'Cargo.toml')) || !fs.existsSync(path.join(repo, 'core'))) {
  if (fs.existsSync(path.join(out, 'Cargo.toml'))) process.exit(0);
  console.error('rcluster: neither the repository nor rust/ is here: cannot pack the sources');
  process.exit(1);
}

fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });
const copy = (from, to) => fs.cpSync(from, path.join(out, to), { recursive: true });

// The workspace manifest: the repository's, with only the two members this build needs
// (workspace inheritance of the members' manifests keeps working).
let manifest = fs.readFileSync(path.join(repo, 'Cargo.toml'), 'utf8');
manifest = manifest
  .replace(/^members = \[.*\]$/m, 'members = ["core", "node"]')
  .replace(/^default-members = \[.*\]\n/m, '');
fs.writeFileSync(path.join(out, 'Cargo.toml'),
  '# Written by scripts/vendor.js from the repository\'s Cargo.toml when the package was packed.\n' + manifest);
// The repository's lock file pins every dependency; cargo drops the entries this workspace
// does not use.
copy(path.join(repo, 'Cargo.lock'), 'Cargo.lock');
copy(path.join(repo, 'core', 'Cargo.toml'), 'core/Cargo.toml');
copy(path.join(repo, 'core', 'src'), 'core/src');
copy(path.join(pkg, 'Cargo.toml'), 'node/Cargo.toml');
copy(path.join(pkg, 'build.rs'), 'node/build.rs');
copy(path.join(pkg, 'src'), 'node/src');
