//! The requests of the control protocol (`docs/control.md`), parsed from one JSON line, and
//! the events and log lines as the streams carry them.

use serde_json::{json, Value};

use super::logs::Line;
use crate::events::Event;

/// One request; every field named in its error when missing or wrong.
#[derive(Debug, PartialEq)]
pub enum Request {
    Status,
    Reload,
    /// An absolute count, or a step (`+k`, `-k`).
    Scale(Scale),
    Restart(u32),
    Signal(u32, i32),
    Stop,
    Events,
    Logs {
        lines: usize,
        follow: bool,
    },
    /// The Prometheus text of `/metrics`.
    Metrics,
}

#[derive(Debug, PartialEq)]
pub enum Scale {
    To(usize),
    By(isize),
}

/// Most history lines one `logs` request may ask for, per worker.
pub const MAX_LOG_LINES: usize = super::logs::LINES_PER_SLOT;

pub fn parse(line: &[u8]) -> Result<Request, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let cmd = v
        .get("cmd")
        .and_then(Value::as_str)
        .ok_or("the request has no \"cmd\" string")?;
    Ok(match cmd {
        "status" => Request::Status,
        "reload" => Request::Reload,
        "scale" => Request::Scale(scale(v.get("workers"))?),
        "restart" => Request::Restart(slot(&v)?),
        "signal" => Request::Signal(slot(&v)?, signal(v.get("signal"))?),
        "stop" => Request::Stop,
        "events" => Request::Events,
        "metrics" => Request::Metrics,
        "logs" => Request::Logs {
            lines: match v.get("lines") {
                None | Some(Value::Null) => 20,
                Some(n) => n
                    .as_u64()
                    .ok_or("\"lines\" must be a number of lines")?
                    .min(MAX_LOG_LINES as u64) as usize,
            },
            follow: v.get("follow").and_then(Value::as_bool).unwrap_or(false),
        },
        other => {
            return Err(format!(
                "unknown cmd {other:?}: expected status, reload, scale, restart, signal, stop, \
                 events, logs or metrics"
            ))
        }
    })
}

fn slot(v: &Value) -> Result<u32, String> {
    v.get("slot")
        .and_then(Value::as_u64)
        .and_then(|s| u32::try_from(s).ok())
        .ok_or_else(|| "\"slot\" must be a worker slot number".into())
}

/// `4`, `"4"`, `"+2"`, `"-1"`.
pub fn scale(v: Option<&Value>) -> Result<Scale, String> {
    let bad = || "\"workers\" must be N, \"+k\" or \"-k\"".to_string();
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| Scale::To(n as usize)).ok_or_else(bad),
        Some(Value::String(s)) => parse_scale(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

pub fn parse_scale(s: &str) -> Option<Scale> {
    if let Some(k) = s.strip_prefix('+') {
        return k.parse::<isize>().ok().filter(|k| *k >= 0).map(Scale::By);
    }
    if let Some(k) = s.strip_prefix('-') {
        return k
            .parse::<isize>()
            .ok()
            .filter(|k| *k >= 0)
            .map(|k| Scale::By(-k));
    }
    s.parse().ok().map(Scale::To)
}

const SIGNALS: [(&str, i32); 13] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("WINCH", libc::SIGWINCH),
];

/// A signal by number, or by name with or without `SIG`.
fn signal(v: Option<&Value>) -> Result<i32, String> {
    let bad = || "\"signal\" must be a signal name (TERM, SIGUSR2, ...) or number".to_string();
    match v {
        Some(Value::Number(n)) => n.as_i64().map(|n| n as i32).ok_or_else(bad),
        Some(Value::String(s)) => {
            let up = s.to_ascii_uppercase();
            let name = up.strip_prefix("SIG").unwrap_or(&up);
            SIGNALS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| *s)
                .or_else(|| s.parse().ok())
                .ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// An event as the `events` and `reload` streams carry it; None for user messages (the
/// host's business, and a flood would fill every stream).
pub fn event_json(ev: &Event) -> Option<Value> {
    let mut v = match ev {
        Event::Message { .. } | Event::TaskDone { .. } => return None,
        Event::Spawned {
            id,
            pid,
            generation,
        } => {
            json!({"slot": id, "pid": pid, "generation": generation})
        }
        Event::Online { id, pid } | Event::Ready { id, pid } => json!({"slot": id, "pid": pid}),
        Event::Exit {
            id,
            generation,
            info,
        } => json!({
            "slot": id, "generation": generation, "pid": info.pid, "code": info.code,
            "signal": info.signal, "reason": info.reason.as_str(),
        }),
        Event::SpawnFailed { id, error } => json!({"slot": id, "error": error}),
        Event::Restarting { id, delay, attempt } => {
            json!({"slot": id, "delay_s": delay.as_secs_f64(), "attempt": attempt})
        }
        Event::GaveUp {
            id,
            restarts,
            window,
        } => {
            json!({"slot": id, "restarts": restarts, "window_s": window.as_secs_f64()})
        }
        Event::ProtocolError { id, pid, detail } => {
            json!({"slot": id, "pid": pid, "detail": detail})
        }
        Event::ReloadStarted { generation } | Event::ReloadDone { generation } => {
            json!({"generation": generation})
        }
        Event::ReloadFailed { generation, reason } => {
            json!({"generation": generation, "reason": reason})
        }
        Event::Scaled { workers } => json!({"workers": workers}),
        Event::AcceptPaused { listener, error } => {
            json!({"listener": listener, "error": error})
        }
        Event::OutputDropped { id, lines, bytes } => {
            json!({"slot": id, "lines": lines, "bytes": bytes})
        }
        Event::Warning { detail } => json!({"detail": detail}),
        Event::Recycling { id, pid, reason } => {
            json!({"slot": id, "pid": pid, "reason": reason.as_str()})
        }
        Event::AllDown => json!({}),
    };
    v["event"] = Value::from(ev.kind());
    Some(v)
}

pub fn line_json(l: &Line) -> Value {
    json!({
        "log": {
            "slot": l.slot, "pid": l.pid,
            "stream": if l.stream == 2 { "stderr" } else { "stdout" },
            "line": l.text,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_name_the_field() {
        assert_eq!(parse(br#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(parse(br#"{"cmd":"metrics"}"#), Ok(Request::Metrics));
        assert_eq!(
            parse(br#"{"cmd":"scale","workers":"+2"}"#),
            Ok(Request::Scale(Scale::By(2)))
        );
        assert_eq!(
            parse(br#"{"cmd":"scale","workers":3}"#),
            Ok(Request::Scale(Scale::To(3)))
        );
        assert_eq!(
            parse(br#"{"cmd":"signal","slot":1,"signal":"SIGUSR2"}"#),
            Ok(Request::Signal(1, libc::SIGUSR2))
        );
        assert!(parse(br#"{"cmd":"restart"}"#).unwrap_err().contains("slot"));
        assert!(parse(br#"{"cmd":"scale","workers":"x"}"#)
            .unwrap_err()
            .contains("workers"));
        assert!(parse(b"nope").unwrap_err().contains("JSON"));
        assert!(parse(br#"{"cmd":"fly"}"#).unwrap_err().contains("fly"));
    }
}
