//! The core's modules form layers, and each uses only the layers below it, so no two modules
//! import each other (directly or around a circle). This test reads every `crate::` path in
//! `src/` and fails on one that points to the same or a higher layer, or to something that is
//! not a module (the crate root's re-exports hide where a thing lives).
//!
//! Inside `primary/`, the loop's methods are split over files that use each other (`impl
//! Primary` in each); the parts they are built from come in layers of their own (see
//! `PRIMARY_PARTS`), so that, for example, the reader never uses the link it reads.

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
    ("pool", 7),
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

/// The files of `primary/`, lowest first: a file may use only files of a lower rank (files of
/// one rank may use each other: the loop's `impl Primary` is split over the files of rank 4,
/// the handle's `impl Supervisor` over those of rank 5). A name that `primary/mod.rs` defines
/// or re-exports (`Primary`, `Waiting`, ...) counts as `mod`.
const PRIMARY_PARTS: &[(&str, u32)] = &[
    ("reader", 0),
    ("workers", 0),
    ("output/pipe", 0),
    ("metrics/systemd", 0),
    ("metrics/http", 0),
    ("metrics/process", 0),
    ("status", 0),
    ("control/logs", 0),
    ("control/path", 0),
    ("control/request", 1),
    ("link", 1),
    ("host_read", 2),
    ("process", 2),
    ("shared", 3),
    ("mod", 4),
    ("closing", 4),
    ("handoff", 4),
    ("ipc", 4),
    ("lifecycle", 4),
    ("metrics", 4),
    ("metrics/render", 4),
    ("recycle", 4),
    ("output", 4),
    ("reload", 4),
    ("steered", 4),
    ("shares", 4),
    ("stats", 4),
    ("control", 4),
    ("control/mod", 4),
    ("control/client", 4),
    ("control/serve", 4),
    ("tests", 6),
    ("supervisor", 5),
    ("signals", 5),
];

fn part_rank(part: &str) -> Option<u32> {
    PRIMARY_PARTS
        .iter()
        .find(|(p, _)| *p == part)
        .map(|&(_, r)| r)
}

/// The files of `primary/` that `text` uses: `crate::primary::x`, `super::x` and
/// `super::{x, y}` paths; a name that is not a file of the folder is `mod`'s.
fn primary_targets(text: &str, own: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let resolve = |first: String, rest: &str| -> String {
        if first == "output" && rest.starts_with("::pipe") {
            "output/pipe".to_string()
        } else if first == "control" && rest.starts_with("::logs") {
            "control/logs".to_string()
        } else if part_rank(&first).is_some() {
            first
        } else {
            "mod".to_string()
        }
    };
    for line in text.lines() {
        let code = line.trim_start();
        // A file's unit tests (`mod tests { use super::*; ... }`) may use anything.
        if code.starts_with("mod tests {") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        for prefix in ["crate::primary::", "super::"] {
            // `super::` in a file directly inside `primary/` is `primary`; deeper, it is not.
            if prefix == "super::" && own.contains('/') && !own.ends_with("/mod") {
                continue;
            }
            let mut rest = code;
            while let Some(at) = rest.find(prefix) {
                let before = &rest[..at];
                rest = &rest[at + prefix.len()..];
                if before.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                if let Some(group) = rest.strip_prefix('{') {
                    let end = group.find('}').unwrap_or(group.len());
                    for item in group[..end].split(',') {
                        let item = item.trim();
                        let first = ident(item);
                        if !first.is_empty() {
                            out.push(resolve(first.clone(), &item[first.len()..]));
                        }
                    }
                } else {
                    let first = ident(rest);
                    out.push(resolve(first.clone(), &rest[first.len()..]));
                }
            }
        }
    }
    out
}

/// Every use inside `primary/` that breaks its parts' layering, as "file:line: message".
fn primary_violations(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files {
        let Some(part) = path.strip_prefix("primary/") else {
            continue;
        };
        let part = part.trim_end_matches(".rs");
        let part = match part {
            "output/mod" => "output",
            "metrics/mod" => "metrics",
            part => part,
        };
        let Some(own) = part_rank(part) else {
            found.push(format!("{path}: `{part}` has no rank in PRIMARY_PARTS"));
            continue;
        };
        // In `mod.rs`, `use x::...` names a child file too.
        let mut uses = primary_targets(text, part);
        if part == "mod" {
            for line in text.lines() {
                let code = line.trim_start();
                let code = code.strip_prefix("pub(crate) ").unwrap_or(code);
                if let Some(rest) = code.strip_prefix("use ") {
                    let first: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if part_rank(&first).is_some() {
                        uses.push(first);
                    }
                }
            }
        }
        for target in uses {
            let Some(r) = part_rank(&target) else {
                continue;
            };
            if target != part && r > own {
                found.push(format!(
                    "{path}: `{part}` (rank {own}) uses `{target}` (rank {r}): only lower ranks may be used"
                ));
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
fn the_parts_of_the_primary_use_only_lower_parts() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src.join("primary"), &mut paths);
    let files: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            (rel, fs::read_to_string(p).unwrap())
        })
        .collect();
    assert!(files.len() > 15, "found only {} files", files.len());
    let found = primary_violations(&files);
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

#[test]
fn a_part_of_the_primary_using_a_higher_one_is_found() {
    let files = vec![
        (
            "primary/reader.rs".to_string(),
            "use crate::primary::link::{Link, Waker};".to_string(),
        ),
        (
            "primary/process.rs".to_string(),
            "use crate::primary::Waiting;\nuse crate::primary::output::pipe::PrefixPipe;"
                .to_string(),
        ),
        (
            "primary/link.rs".to_string(),
            "use super::{reader::Reader, supervisor::Shared};".to_string(),
        ),
    ];
    let found = primary_violations(&files);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].starts_with("primary/reader.rs: `reader` (rank 0) uses `link`"));
    assert!(found[1].starts_with("primary/process.rs: `process` (rank 2) uses `mod`"));
    assert!(found[2].starts_with("primary/link.rs: `link` (rank 1) uses `supervisor`"));
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
