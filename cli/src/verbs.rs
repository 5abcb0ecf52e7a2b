//! The verbs that act on a running cluster through its control socket: `ls`, `status`,
//! `reload`, `scale`, `restart`, `signal`, `stop`, `logs`, `events`, `metrics`. Printing only; the
//! cluster decides.

use std::io::{IsTerminal, Write};

use rcluster_core::Status;
use serde_json::{json, Value};

use crate::client::{self, Client};

/// Exit status of a verb that the cluster refused, or of a reload that rolled back.
pub const EXIT_REFUSED: i32 = 1;

pub type Outcome = Result<i32, String>;

/// Lists the clusters whose sockets are in this user's folder. A socket nothing accepts on
/// (its primary was killed) is removed on the way, when it is ours to remove, and not listed;
/// `all` lists it too, marked stale, with what was done about it.
pub fn ls(all: bool) -> Outcome {
    let dir = client::control_dir().ok_or("neither XDG_RUNTIME_DIR nor HOME is set")?;
    let mut socks: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    socks.sort();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<24} {:>8} {:>9} {:>5} {:>8}  SOCKET",
        "NAME", "PID", "READY", "GEN", "UPTIME"
    );
    for path in socks {
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let why = match ls_one(&path) {
            Listed::Live(st) => {
                let _ = writeln!(
                    out,
                    "{:<24} {:>8} {:>9} {:>5} {:>8}  {}",
                    st.name,
                    st.pid,
                    format!("{}/{}", ready_count(&st), st.workers_desired),
                    st.generation,
                    human_secs(st.uptime_s),
                    path.display()
                );
                continue;
            }
            Listed::Gone => continue,
            Listed::Stale(_) if !all => continue,
            Listed::Stale(why) | Listed::Failed(why) => why,
        };
        let _ = writeln!(
            out,
            "{name:<24} {:>8} {:>9} {:>5} {:>8}  {} ({why})",
            "-",
            "-",
            "-",
            "-",
            path.display()
        );
    }
    Ok(0)
}

/// What `ls` found at one socket.
enum Listed {
    Live(Box<Status>),
    /// Removed meanwhile (its cluster stopped).
    Gone,
    /// Nothing accepts on it; what was done about it.
    Stale(String),
    /// Something accepts on it but did not answer as a cluster should.
    Failed(String),
}

fn ls_one(path: &std::path::Path) -> Listed {
    use rcluster_core::SocketKept;
    // Twice at most: a socket found stale may turn out live under the folder's lock (a
    // cluster was between its bind and its listen).
    for _ in 0..2 {
        let stream = match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Listed::Gone,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return match rcluster_core::remove_stale_socket(path) {
                    Ok(Ok(())) => Listed::Stale("stale: nothing accepted on it; removed".into()),
                    Ok(Err(SocketKept::Live)) => continue,
                    Ok(Err(SocketKept::NotOurs(why))) => {
                        Listed::Stale(format!("stale: nothing accepts on it; kept: {why}"))
                    }
                    Ok(Err(SocketKept::Busy)) => Listed::Stale(
                        "stale: nothing accepts on it; kept: a cluster is claiming a socket \
                         in the folder"
                            .into(),
                    ),
                    Err(e) => Listed::Stale(format!(
                        "stale: nothing accepts on it; cannot remove it: {e}"
                    )),
                };
            }
            Err(e) => return Listed::Failed(format!("cannot connect: {e}")),
        };
        return match Client::handshake(stream).and_then(|mut c| status_of(&mut c)) {
            Ok(st) => Listed::Live(Box::new(st)),
            Err(why) => Listed::Failed(why),
        };
    }
    Listed::Failed("it refused connections, then accepted them, then refused them".into())
}

fn ready_count(st: &Status) -> usize {
    st.workers.iter().filter(|w| w.state == "ready").count()
}

fn status_of(c: &mut Client) -> Result<Status, String> {
    let reply = c.ask(&json!({"cmd": "status"}))?;
    serde_json::from_value(reply["status"].clone()).map_err(|e| format!("status object: {e}"))
}

pub fn status(name: &str, as_json: bool) -> Outcome {
    let mut c = Client::connect(name)?;
    if as_json {
        let mut text = c.ask_raw(&json!({"cmd": "status"}), "status")?;
        text.push('\n');
        // One write: stdout's line buffer would cut a long line into 1 KiB writes.
        std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing the status: {e}"))?;
        return Ok(0);
    }
    let st = status_of(&mut c)?;
    print!("{}", table(&st, std::io::stdout().is_terminal()));
    Ok(0)
}

/// A `pm2 ls`-like table of the workers, with a header line about the cluster.
pub fn table(st: &Status, colour: bool) -> String {
    let mut s = format!(
        "{} (pid {}, rcluster {}) up {}, generation {}, {}/{} workers ready{}\n",
        st.name,
        st.pid,
        st.version,
        human_secs(st.uptime_s),
        st.generation,
        ready_count(st),
        st.workers_desired,
        if st.reloading {
            ", reloading"
        } else if st.stopping {
            ", stopping"
        } else {
            ""
        }
    );
    for l in &st.listeners {
        s += &format!("listening on {} ({}, {})\n", l.address, l.name, l.dispatch);
    }
    s += &format!(
        "{:>4} {:>8} {:>4} {:<9} {:>7} {:>8} {:>6} {:>9} {:>8} {:>8}  LAST EXIT\n",
        "SLOT", "PID", "GEN", "STATE", "UPTIME", "CPU", "MEM", "CONNS", "RESTARTS", "HB AGE"
    );
    for w in &st.workers {
        let state = format!("{:<9}", w.state);
        let state = if colour {
            paint(&w.state, &state)
        } else {
            state
        };
        let last = w.last_exit.as_ref().map_or_else(String::new, |e| {
            let how = match (e.code, e.signal) {
                (_, Some(sig)) => format!("signal {sig}"),
                (Some(code), None) => format!("code {code}"),
                _ => String::new(),
            };
            format!("{} ({how})", e.reason)
        });
        s += &format!(
            "{:>4} {:>8} {:>4} {} {:>7} {:>8} {:>6} {:>9} {:>8} {:>8}  {}\n",
            w.slot,
            if w.pid == 0 {
                "-".into()
            } else {
                w.pid.to_string()
            },
            w.generation,
            state,
            if w.pid == 0 {
                "-".into()
            } else {
                human_secs(w.uptime_s)
            },
            format!("{:.2}s", w.cpu_s),
            human_bytes(w.rss_bytes),
            format!("{}/{}", w.connections_active, w.connections_total),
            w.restarts,
            w.heartbeat_age_s.map_or_else(|| "-".into(), human_secs),
            last
        );
    }
    s
}

fn paint(state: &str, text: &str) -> String {
    let code = match state {
        "ready" => "32",
        "starting" | "online" => "33",
        "draining" => "36",
        _ => "31",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

pub fn human_secs(s: f64) -> String {
    match s {
        s if s < 10.0 => format!("{s:.1}s"),
        s if s < 60.0 => format!("{s:.0}s"),
        s if s < 3600.0 => format!("{:.0}m", s / 60.0),
        s if s < 86400.0 => format!("{:.1}h", s / 3600.0),
        s => format!("{:.1}d", s / 86400.0),
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// Starts a reload and prints its progress; exit status 1 if it rolled back.
pub fn reload(name: &str) -> Outcome {
    let mut c = Client::connect(name)?;
    let reply = c.ask(&json!({"cmd": "reload"}))?;
    let generation = reply["generation"].as_u64().unwrap_or(0);
    println!("{name}: reloading to generation {generation}");
    c.no_timeout();
    while let Some(v) = c.next()? {
        if v.get("done").is_some() {
            return Ok(if v["ok"] == Value::Bool(true) {
                println!("{name}: generation {generation} is running on every slot");
                0
            } else {
                println!("{name}: reload rolled back: {}", client::error_of(&v));
                EXIT_REFUSED
            });
        }
        if let Some(line) = describe_event(&v) {
            println!("  {line}");
        }
    }
    Err("the cluster closed the connection before the reload ended".into())
}

pub fn simple(name: &str, req: Value, done: impl Fn(&Value) -> String) -> Outcome {
    let mut c = Client::connect(name)?;
    let reply = c.ask(&req)?;
    println!("{name}: {}", done(&reply));
    Ok(0)
}

/// Asks the cluster to stop and waits until it has (its socket closes).
pub fn stop(name: &str) -> Outcome {
    let mut c = Client::connect(name)?;
    c.ask(&json!({"cmd": "stop"}))?;
    println!("{name}: stopping");
    c.no_timeout();
    while c.next()?.is_some() {}
    println!("{name}: stopped");
    Ok(0)
}

pub fn logs(name: &str, lines: usize, follow: bool) -> Outcome {
    let mut c = Client::connect(name)?;
    c.ask(&json!({"cmd": "logs", "lines": lines, "follow": follow}))?;
    c.no_timeout();
    let mut out = std::io::stdout().lock();
    while let Some(v) = c.next()? {
        if let Some(l) = v.get("log") {
            let stream = if l["stream"] == "stderr" { " err" } else { "" };
            let text = l["line"].as_str().unwrap_or("");
            if writeln!(out, "[{} {}{stream}] {text}", l["slot"], l["pid"]).is_err() {
                return Ok(0);
            }
            if follow {
                let _ = out.flush();
            }
        } else if let Some(n) = v.get("lost") {
            let _ = writeln!(out, "... {n} lines lost (printed too slowly)");
        } else if v.get("end").is_some() || v.get("stopped").is_some() {
            break;
        }
    }
    Ok(0)
}

pub fn events(name: &str) -> Outcome {
    let mut c = Client::connect(name)?;
    c.ask(&json!({"cmd": "events"}))?;
    c.no_timeout();
    let mut out = std::io::stdout().lock();
    while let Some(v) = c.next()? {
        if v.get("event").is_some() && writeln!(out, "{v}").is_err() {
            break;
        }
        let _ = out.flush();
    }
    Ok(0)
}

/// Prints the cluster's metrics as Prometheus text, as `/metrics` serves them.
pub fn metrics(name: &str) -> Outcome {
    let mut c = Client::connect(name)?;
    let reply = c.ask(&json!({"cmd": "metrics"}))?;
    let text = reply["metrics"]
        .as_str()
        .ok_or("the cluster's reply has no \"metrics\" text")?;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the output, not the program with a panic.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(0)
}

fn describe_event(v: &Value) -> Option<String> {
    let kind = v.get("event")?.as_str()?;
    let slot = &v["slot"];
    Some(match kind {
        "spawned" => format!(
            "slot {slot}: started pid {} (generation {})",
            v["pid"], v["generation"]
        ),
        "ready" => format!("slot {slot}: pid {} ready", v["pid"]),
        "exit" => format!(
            "slot {slot}: pid {} exited ({})",
            v["pid"],
            v["reason"].as_str().unwrap_or("?")
        ),
        "reload_started" => return None,
        "online" | "scaled" => return None,
        other => format!("{other} {v}"),
    })
}
