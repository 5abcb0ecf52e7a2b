//! Writes `include/rcluster.h` from the `rcluster-ffi` crate, or with `--check` fails when the
//! committed header differs from what would be written (the C tests run the check).
//!
//! Usage (from the repository root): `ffi/header.sh [--check]`.
//!
//! The version macros come from the crate version as Cargo reports it, so they cannot drift
//! from `rcluster_version()`.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

fn fail(msg: &str) -> ! {
    eprintln!("rcluster-header: {msg}");
    exit(1)
}

/// The version of rcluster-ffi, from `cargo pkgid` (which resolves `version.workspace`).
fn ffi_version(root: &Path) -> (String, [u32; 3]) {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["pkgid", "-p", "rcluster-ffi"])
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo pkgid: {e}")));
    if !out.status.success() {
        fail(&format!(
            "cargo pkgid failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = id
        .rsplit(['@', '#'])
        .next()
        .unwrap_or_else(|| fail(&format!("no version in {id:?}")))
        .to_string();
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<u32> = core.split('.').filter_map(|p| p.parse().ok()).collect();
    let [major, minor, patch] = parts[..] else {
        fail(&format!("version {version:?} is not MAJOR.MINOR.PATCH"));
    };
    (version, [major, minor, patch])
}

fn generate(root: &Path) -> String {
    let ffi = root.join("ffi");
    let config = cbindgen::Config::from_file(ffi.join("cbindgen.toml"))
        .unwrap_or_else(|e| fail(&format!("reading ffi/cbindgen.toml: {e}")));
    let (version, [major, minor, patch]) = ffi_version(root);
    let macros = format!(
        "\n/** The version of rcluster this header declares; `rcluster_version()` gives the \
         library's. */\n\
         #define RCLUSTER_VERSION \"{version}\"\n\
         #define RCLUSTER_VERSION_MAJOR {major}\n\
         #define RCLUSTER_VERSION_MINOR {minor}\n\
         #define RCLUSTER_VERSION_PATCH {patch}\n"
    );
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_crate(&ffi)
        .with_after_include(macros)
        .generate()
        .unwrap_or_else(|e| fail(&format!("cbindgen: {e}")));
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).unwrap_or_else(|_| fail("cbindgen wrote something that is not UTF-8"))
}

fn main() {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => fail(&format!("unknown argument {other:?}; usage: [--check]")),
    };
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join("include/rcluster.h");
    let fresh = generate(&root);
    if check {
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != fresh {
            fail("include/rcluster.h is stale: run ffi/header.sh and commit the result");
        }
        println!("include/rcluster.h is up to date");
        return;
    }
    std::fs::create_dir_all(root.join("include"))
        .unwrap_or_else(|e| fail(&format!("creating include/: {e}")));
    std::fs::write(&path, fresh).unwrap_or_else(|e| fail(&format!("writing {path:?}: {e}")));
    println!("wrote include/rcluster.h");
}
