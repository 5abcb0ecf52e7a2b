//! The core's modules form layers, and each uses only the layers below it, so no two modules
//! import each other (directly or around a circle). This test reads every `crate::` path in
//! `src/` and fails on one that points to the same or a higher layer, or to something that is
//! not a module (the crate root's re-exports hide where a thing lives).
//!
//! Inside one folder, files may use each other freely (`primary/` splits the loop's methods
//! over files); the rule is between folders and top-level files.

use std::fs;
use std::path::{Path, PathBuf};

/// Lowest first. A module may use modules of a lower rank only; `primary` and `worker` share a
/// rank, so neither may use the other.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("sys", 1),
    ("wire", 2),
    ("config", 3),
    ("policy", 4),
    ("events", 5),
    ("primary", 6),
    ("worker", 6),
    ("fuzzing", 7),
];

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, r)| r)
}

/// The first path segment after each `crate::` in `line` (each item of `crate::{a, b}`).
fn targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = &rest[..at];
        rest = &rest[at + "crate::".len()..];
        // `rcluster_core::` or another crate's path ending in "crate::" is not this crate.
        if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let item = item.trim();
                let seg: String = item
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !seg.is_empty() {
                    out.push(seg);
                }
            }
        } else {
            let seg: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(seg);
        }
    }
    out
}

/// Every use of a module that breaks the layering, as "file:line: message".
fn violations(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files {
        let module = path
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" {
            continue;
        }
        let Some(own) = rank(&module) else {
            found.push(format!("{path}: module `{module}` has no layer in LAYERS"));
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for target in targets(code) {
                if target == module {
                    continue;
                }
                match rank(&target) {
                    None => found.push(format!(
                        "{path}:{}: `crate::{target}` is not a module of a layer (use its module's path)",
                        n + 1
                    )),
                    Some(r) if r >= own => found.push(format!(
                        "{path}:{}: `{module}` (layer {own}) uses `{target}` (layer {r}): only lower layers may be used",
                        n + 1
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    assert!(
        paths.len() > 20,
        "found only {} files in {src:?}",
        paths.len()
    );
    let files: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            (rel, fs::read_to_string(p).unwrap())
        })
        .collect();
    let found = violations(&files);
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

#[test]
fn an_import_circle_is_found() {
    let files = vec![
        (
            "sys/mod.rs".to_string(),
            "use crate::primary::link::Link;".to_string(),
        ),
        (
            "primary/link.rs".to_string(),
            "use crate::sys::{self, Epoll};".to_string(),
        ),
        (
            "worker/mod.rs".to_string(),
            "use crate::{error::Result, primary::supervisor::Supervisor};".to_string(),
        ),
        (
            "policy/mod.rs".to_string(),
            "// a comment about crate::primary is not a use\nlet x = crate::Supervisor::start;"
                .to_string(),
        ),
    ];
    let found = violations(&files);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].starts_with("sys/mod.rs:1: `sys` (layer 1) uses `primary`"));
    assert!(found[1].starts_with("worker/mod.rs:1: `worker` (layer 6) uses `primary`"));
    assert!(found[2].starts_with("policy/mod.rs:2: `crate::Supervisor` is not a module"));
}
