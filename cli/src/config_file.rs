//! `rcluster run --config FILE`: a TOML file whose keys are the long flags of `run` (with `-`
//! or `_`), turned into those flags ahead of the command line's own, which therefore win.
//! Each value is checked here, so that an error names the key and its line in the file.

use std::ffi::OsString;

use clap::ValueEnum;
use toml::Value;

use crate::args::{self, Control, Ready, Restart};

/// How a key's value is checked and passed on.
#[derive(Clone, Copy)]
enum Kind {
    Count,
    Duration,
    /// A duration that may be 0.
    Delay,
    Flag,
    Text,
    Restart,
    Ready,
    Control,
    /// Repeatable: one value or a list.
    Many,
    Codes,
    Env,
    Command,
}

const KEYS: &[(&str, Kind)] = &[
    ("workers", Kind::Count),
    ("restart", Kind::Restart),
    ("kill-timeout", Kind::Duration),
    ("ready", Kind::Ready),
    ("ready-timeout", Kind::Duration),
    ("heartbeat-timeout", Kind::Duration),
    ("ack-timeout", Kind::Duration),
    ("backoff-initial", Kind::Delay),
    ("backoff-max", Kind::Delay),
    ("min-uptime", Kind::Duration),
    ("max-restarts", Kind::Count),
    ("restart-window", Kind::Duration),
    ("no-restart-code", Kind::Codes),
    ("max-message", Kind::Count),
    ("event-queue-limit", Kind::Count),
    ("env", Kind::Env),
    ("cwd", Kind::Text),
    ("prefix-output", Kind::Flag),
    ("listen", Kind::Many),
    ("dispatch", Kind::Text),
    ("share", Kind::Flag),
    ("max-inflight", Kind::Count),
    ("max-surge", Kind::Count),
    ("name", Kind::Text),
    ("control", Kind::Control),
    ("metrics", Kind::Text),
    ("ready-min", Kind::Count),
    ("drain-delay", Kind::Delay),
    ("subreaper", Kind::Flag),
    ("max-memory", Kind::Text),
    ("max-requests", Kind::Count),
    ("max-requests-jitter", Kind::Count),
    ("strict-turns", Kind::Flag),
    ("cmd", Kind::Command),
];

/// The flags FILE stands for, and the command it names (None: given on the command line).
pub fn load(path: &str) -> Result<(Vec<OsString>, Option<Vec<OsString>>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {path}: {e}"))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("--config {path}: {}", e.to_string().trim()))?;
    let mut flags = Vec::new();
    let mut cmd = None;
    for (key, value) in &table {
        let at = |why: String| format!("{path}:{}: key `{key}`: {why}", line_of(&text, key));
        let name = key.replace('_', "-");
        let Some(&(_, kind)) = KEYS.iter().find(|(k, _)| *k == name) else {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            return Err(at(format!("unknown key (known: {})", known.join(", "))));
        };
        let flag = format!("--{name}");
        match kind {
            Kind::Command => cmd = Some(strings(value).map_err(at)?),
            Kind::Flag => match value {
                Value::Boolean(true) => flags.push(flag.into()),
                Value::Boolean(false) => {}
                _ => return Err(at("expected true or false".into())),
            },
            Kind::Many => {
                for v in strings(value).map_err(at)? {
                    flags.extend([flag.clone().into(), v]);
                }
            }
            Kind::Codes => {
                let codes = match value {
                    Value::Array(a) => a.clone(),
                    v => vec![v.clone()],
                };
                for c in codes {
                    let c = c
                        .as_integer()
                        .ok_or_else(|| at("expected exit codes (integers)".into()))?;
                    flags.extend([flag.clone().into(), c.to_string().into()]);
                }
            }
            Kind::Env => {
                let Value::Table(t) = value else {
                    return Err(at("expected a table of NAME = \"value\"".into()));
                };
                for (k, v) in t {
                    let v = v
                        .as_str()
                        .ok_or_else(|| at(format!("{k}: expected a string")))?;
                    flags.extend([flag.clone().into(), format!("{k}={v}").into()]);
                }
            }
            _ => flags.extend([flag.into(), scalar(kind, value).map_err(at)?.into()]),
        }
    }
    Ok((flags, cmd))
}

/// One checked value, as the flag takes it.
fn scalar(kind: Kind, value: &Value) -> Result<String, String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        _ => return Err("expected a string or a number".into()),
    };
    match kind {
        Kind::Count => {
            if value.as_integer().is_none_or(|i| i < 0) {
                return Err(format!("expected a whole number, got {text}"));
            }
        }
        Kind::Duration => args::parse_duration(&text).map(drop)?,
        Kind::Delay => args::parse_duration(&text).map(drop)?,
        Kind::Restart => check_enum::<Restart>(&text)?,
        Kind::Ready => check_enum::<Ready>(&text)?,
        Kind::Control => check_enum::<Control>(&text)?,
        _ => {
            if !value.is_str() {
                return Err("expected a string".into());
            }
        }
    }
    Ok(text)
}

fn check_enum<E: ValueEnum>(text: &str) -> Result<(), String> {
    if E::from_str(text, false).is_ok() {
        return Ok(());
    }
    let names: Vec<String> = E::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
        .collect();
    Err(format!("{text:?}: expected one of {}", names.join(", ")))
}

fn strings(value: &Value) -> Result<Vec<OsString>, String> {
    match value {
        Value::String(s) => Ok(vec![s.into()]),
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map(OsString::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "expected a string or a list of strings".into()),
        _ => Err("expected a string or a list of strings".into()),
    }
}

/// The line (from 1) where `key` is set at the top level of the file; 0 if not found.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix('"').unwrap_or(l);
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(['=', '"']))
        })
        .map_or(0, |i| i + 1)
}

/// The arguments with `--config FILE` of `run` replaced by the flags of FILE (before the
/// command line's own flags, which win), and its `cmd` after `--` when the command line
/// names no command after `--`.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(run) = args.iter().position(|a| a == "run") else {
        return Ok(args);
    };
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let mut file = None;
    let mut rest = Vec::new();
    let mut i = run + 1;
    while i < end {
        let a = args[i].to_string_lossy();
        if a == "--config" {
            file = Some(args.get(i + 1).ok_or("--config needs a FILE")?.clone());
            i += 2;
            continue;
        }
        if let Some(f) = a.strip_prefix("--config=") {
            file = Some(f.into());
        } else {
            rest.push(args[i].clone());
        }
        i += 1;
    }
    let Some(file) = file else {
        return Ok(args);
    };
    let (flags, cmd) = load(&file.to_string_lossy())?;
    let mut out: Vec<OsString> = args[..=run].to_vec();
    out.extend(flags);
    out.extend(rest);
    if end < args.len() {
        out.extend_from_slice(&args[end..]);
    } else if let Some(cmd) = cmd {
        out.push("--".into());
        out.extend(cmd);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> String {
        let path = std::env::temp_dir().join(format!(
            "rcluster-config-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// Every flag of `rcluster run` can be set from the file, and every key is a flag.
    #[test]
    fn every_run_flag_has_a_key_and_every_key_a_flag() {
        use clap::CommandFactory;
        let cli = crate::args::Cli::command();
        let run = cli.find_subcommand("run").unwrap();
        let flags: Vec<String> = run
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .filter(|f| f != "config" && f != "help")
            .collect();
        for f in &flags {
            assert!(KEYS.iter().any(|(k, _)| k == f), "--{f} has no key");
        }
        for (k, kind) in KEYS {
            assert!(
                matches!(kind, Kind::Command) || flags.iter().any(|f| f == k),
                "key {k} is no flag"
            );
        }
    }

    #[test]
    fn keys_become_flags_before_the_command_lines_own_and_cmd_goes_after_dashes() {
        let f = file("workers = 3\nkill_timeout = \"2s\"\nprefix-output = true\nlisten = [\":8080\"]\nenv = { A = \"b\" }\ncmd = [\"sleep\", \"300\"]\n");
        let args: Vec<OsString> = ["rcluster", "run", "--config", &f, "-w", "5"]
            .iter()
            .map(OsString::from)
            .collect();
        let out = expand(args).unwrap();
        let out: Vec<String> = out
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = out.join(" ");
        assert!(joined.starts_with("rcluster run "), "{joined}");
        assert!(
            joined.contains("--workers 3") && joined.contains("--kill-timeout 2s"),
            "{joined}"
        );
        assert!(
            joined.contains("--prefix-output") && joined.contains("--env A=b"),
            "{joined}"
        );
        assert!(joined.ends_with("-w 5 -- sleep 300"), "{joined}");
    }

    #[test]
    fn metrics_drain_delay_ready_min_and_subreaper_are_keys_too() {
        let f = file("metrics = \"127.0.0.1:9100\"\ndrain-delay = \"5s\"\nready_min = 2\nsubreaper = true\ncmd = [\"sleep\", \"1\"]\n");
        let args: Vec<OsString> = ["rcluster", "run", "--config", &f]
            .iter()
            .map(OsString::from)
            .collect();
        let joined: Vec<String> = expand(args)
            .unwrap()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = joined.join(" ");
        for want in [
            "--metrics 127.0.0.1:9100",
            "--drain-delay 5s",
            "--ready-min 2",
            "--subreaper",
        ] {
            assert!(joined.contains(want), "{want} not in {joined}");
        }
    }

    #[test]
    fn a_bad_value_or_an_unknown_key_is_named_with_its_line() {
        let f = file("workers = 2\n\nkill-timeout = \"5x\"\n");
        let e = load(&f).unwrap_err();
        assert!(
            e.ends_with("") && e.contains(":3: key `kill-timeout`"),
            "{e}"
        );
        let f = file("wrokers = 2\n");
        let e = load(&f).unwrap_err();
        assert!(e.contains(":1: key `wrokers`: unknown key"), "{e}");
        let f = file("restart = \"sometimes\"\n");
        let e = load(&f).unwrap_err();
        assert!(
            e.contains("key `restart`") && e.contains("on-failure"),
            "{e}"
        );
        let f = file("workers = [\n");
        assert!(
            load(&f).unwrap_err().contains("line"),
            "parse errors say where"
        );
    }
}
