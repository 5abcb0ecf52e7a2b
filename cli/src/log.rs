//! One line per cluster event on stderr, stamped with UTC time. User messages are logged at a
//! bounded rate: a worker that floods the primary must not flood the log too.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcluster_core::{Event, ExitInfo};

/// User messages are cut to this many characters so one chatty worker cannot flood the log.
const MAX_MESSAGE_CHARS: usize = 200;

/// At most this many user messages are logged per second; the others are counted, and the
/// count is logged once the second is over.
const MESSAGES_PER_SECOND: u32 = 20;

/// Remembers the pid of each slot so that events that carry only a slot id still name a pid.
#[derive(Default)]
pub struct EventLog {
    pids: HashMap<u32, u32>,
    messages: MessageRate,
}

/// The messages of the current second: how many were logged and how many were not.
#[derive(Default)]
struct MessageRate {
    since: Option<Instant>,
    shown: u32,
    hidden: u64,
}

impl EventLog {
    pub fn print(&mut self, ev: &Event) {
        let now = Instant::now();
        if self
            .messages
            .since
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.flush();
            self.messages.since = Some(now);
        }
        if let Event::Message { .. } = ev {
            if self.messages.shown >= MESSAGES_PER_SECOND {
                self.messages.hidden += 1;
                return;
            }
            self.messages.shown += 1;
        }
        let line = self.describe(ev);
        let _ = writeln!(
            std::io::stderr().lock(),
            "{} {line}",
            rfc3339(SystemTime::now())
        );
    }

    /// Logs how many messages were not shown, if any, and starts counting again.
    pub fn flush(&mut self) {
        let hidden = std::mem::take(&mut self.messages.hidden);
        self.messages.shown = 0;
        if hidden > 0 {
            self.note(&format!(
                "{hidden} more worker messages not shown (at most {MESSAGES_PER_SECOND} a second are logged)"
            ));
        }
    }

    /// A plain line from rcluster itself, in the same format as the events.
    pub fn note(&self, what: &str) {
        let _ = writeln!(
            std::io::stderr().lock(),
            "{} rcluster: {what}",
            rfc3339(SystemTime::now())
        );
    }

    fn describe(&mut self, ev: &Event) -> String {
        match ev {
            Event::Spawned {
                id,
                pid,
                generation,
            } => {
                self.pids.insert(*id, *pid);
                format!("worker {id} pid {pid}: spawned gen {generation}")
            }
            Event::Online { id, pid } => format!("worker {id} pid {pid}: online"),
            Event::Ready { id, pid } => format!("worker {id} pid {pid}: ready"),
            Event::Message { id, pid, data, .. } => {
                format!("worker {id} pid {pid}: message: {}", excerpt(data))
            }
            Event::Exit { id, info, .. } => {
                format!("worker {id} pid {}: {}", info.pid, exit_text(info))
            }
            Event::SpawnFailed { id, error } => format!("worker {id}: spawn failed: {error}"),
            Event::Restarting { id, delay, attempt } => {
                format!(
                    "{}: restarting in {} ms (attempt {attempt})",
                    self.who(*id),
                    delay.as_millis()
                )
            }
            Event::GaveUp {
                id,
                restarts,
                window,
            } => {
                format!(
                    "{}: gave up after {} in {}",
                    self.who(*id),
                    count(*restarts as usize, "restart"),
                    human(*window)
                )
            }
            Event::ProtocolError { id, pid, detail } => {
                format!("worker {id} pid {pid}: protocol error: {detail}")
            }
            Event::AllDown => "cluster: all workers are down".into(),
            Event::ReloadStarted { generation } => {
                format!("cluster: reload to gen {generation} started")
            }
            Event::ReloadDone { generation } => format!("cluster: reload to gen {generation} done"),
            Event::ReloadFailed { generation, reason } => {
                format!("cluster: reload to gen {generation} failed: {reason}")
            }
            Event::Scaled { workers } => {
                format!("cluster: scaled to {}", count(*workers, "worker"))
            }
            Event::AcceptPaused { listener, error } => {
                format!("listener {listener}: accepting paused briefly: {error}")
            }
            Event::OutputDropped { id, lines, bytes } => {
                format!(
                    "{}: output dropped: {lines} lines, {bytes} bytes (stdout/stderr not taking it)",
                    self.who(*id)
                )
            }
            Event::Warning { detail } => format!("rcluster: warning: {detail}"),
            Event::Recycling { id, pid, reason } => {
                format!("worker {id} pid {pid}: recycling ({reason}): starting its replacement")
            }
            Event::TaskDone { id, .. } => {
                format!("{}: sent a task answer, but no pool runs", self.who(*id))
            }
        }
    }

    fn who(&self, id: u32) -> String {
        match self.pids.get(&id) {
            Some(pid) => format!("worker {id} pid {pid}"),
            None => format!("worker {id}"),
        }
    }
}

fn exit_text(info: &ExitInfo) -> String {
    let how = match (info.code, info.signal) {
        (_, Some(sig)) => format!(
            "killed by signal {sig}{}",
            signal_name(sig)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ),
        (Some(code), None) => format!("exited with code {code}"),
        (None, None) => "exited".into(),
    };
    format!("{how}, reason {}", info.reason)
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return None,
    })
}

/// "1 worker", "2 workers": a number with its noun, plural unless it is one.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn excerpt(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut out: String = text
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_MESSAGE_CHARS).is_some() {
        out.push('…');
    }
    out
}

pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() > 0 || secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs / 60 * 60 == secs {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!(
        "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:03}Z",
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // 2000-02-29 00:00:00.123
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_735_689_599)),
            "2024-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn only_the_first_messages_of_each_second_are_logged_and_the_rest_counted() {
        let mut log = EventLog::default();
        let msg = Event::Message {
            id: 0,
            pid: 1,
            data: b"x".to_vec(),
            content: rcluster_core::ContentType::Raw,
        };
        for _ in 0..1000 {
            log.print(&msg);
        }
        assert_eq!(log.messages.shown, MESSAGES_PER_SECOND);
        assert_eq!(log.messages.hidden, 1000 - u64::from(MESSAGES_PER_SECOND));
        log.flush();
        assert_eq!((log.messages.shown, log.messages.hidden), (0, 0));
    }

    #[test]
    fn long_messages_are_cut() {
        let s = excerpt(&[b'x'; 500]);
        assert_eq!(s.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(excerpt(b"a\nb\xff"), "a b\u{fffd}");
    }

    #[test]
    fn windows_print_in_the_largest_whole_unit() {
        assert_eq!(human(Duration::from_secs(60)), "1m");
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }
}
