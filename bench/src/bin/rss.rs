//! Memory of the `rcluster run` primary: `rss <rcluster binary> [workers]` (default 16).
//!
//! Starts `rcluster run -w N -- sleep 300`, waits until N children exist, reads the primary's
//! VmRSS, then stops it with SIGTERM. Prints `rss: unavailable: <why>` (and exits 0) when the
//! command line does not run workers, so that the rest of a benchmark run still reports.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Read again after this, once start-up allocations have settled.
const SETTLE: Duration = Duration::from_millis(500);

/// Pids whose parent is `ppid`, found by scanning /proc (works without CONFIG_PROC_CHILDREN).
fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // The command name may contain spaces and parentheses: fields start after the last ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            rest.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
                == Some(ppid)
        })
        .collect()
}

/// A `Vm*` field of /proc/PID/status, in kB.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a process this program started (or one of its children).
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

fn measure(child: &mut Child, workers: usize) -> Result<(u64, u64, u64), String> {
    let pid = child.id();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "`rcluster run` exited ({st}) before {workers} workers existed"
            ));
        }
        if children_of(pid).len() >= workers {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "only {} of {workers} workers after {START_TIMEOUT:?}",
                children_of(pid).len()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let first = status_kb(pid, "VmRSS:").ok_or("cannot read VmRSS")?;
    std::thread::sleep(SETTLE);
    let settled = status_kb(pid, "VmRSS:").ok_or("cannot read VmRSS")?;
    let peak = status_kb(pid, "VmHWM:").ok_or("cannot read VmHWM")?;
    Ok((first, settled, peak))
}

fn main() {
    let Some(bin) = std::env::args().nth(1) else {
        eprintln!("usage: rss <rcluster binary> [workers]");
        std::process::exit(2);
    };
    let workers: usize = std::env::args()
        .nth(2)
        .map_or(16, |a| a.parse().expect("workers must be a number"));
    let mut child = match Command::new(&bin)
        .args(["run", "-w", &workers.to_string(), "--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("rss: unavailable: cannot start {bin}: {e}");
            return;
        }
    };
    let pid = child.id();
    // Its log goes to a pipe drained on a thread (a full pipe would stall it), and is shown
    // only when the measurement fails.
    let err = child.stderr.take();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut err) = err {
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
        }
        text
    });
    let result = measure(&mut child, workers);
    let workers_seen = children_of(pid);
    signal(pid, libc::SIGTERM);
    let status = wait_exit(&mut child, EXIT_TIMEOUT);
    if status.is_none() {
        signal(pid, libc::SIGKILL);
        let _ = child.wait();
    }
    // Workers are in their own process groups; any left behind would keep sleeping for minutes.
    std::thread::sleep(Duration::from_millis(100));
    let leftover: Vec<u32> = workers_seen
        .into_iter()
        .filter(|w| std::path::Path::new(&format!("/proc/{w}")).exists())
        .collect();
    for w in &leftover {
        signal(*w, libc::SIGKILL);
    }
    match result {
        Ok((first, settled, peak)) => println!(
            "rss: primary VmRSS {settled} kB ({:.2} MB; {first} kB when {workers} workers first existed; VmHWM {peak} kB) with {workers} workers",
            settled as f64 / 1024.0
        ),
        Err(why) => {
            println!("rss: unavailable: {why}");
            let text = log.join().unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(10)..] {
                println!("rss: log: {line}");
            }
        }
    }
    match status {
        Some(st) => println!("rss: primary exited after SIGTERM: {st}"),
        None => println!("rss: primary did not exit within {EXIT_TIMEOUT:?} of SIGTERM; killed"),
    }
    if !leftover.is_empty() {
        println!(
            "rss: {} workers outlived the primary (killed): {leftover:?}",
            leftover.len()
        );
    }
}
