//! CPU time and resident memory of a process, from `/proc/PID/stat`.
//!
//! Read on demand (a status request; with `max_memory`, the loop's check once a second): a
//! cluster nobody looks at pays nothing. The file is opened once per process and read again
//! from offset 0 each time (procfs makes it anew on every read), so a status of many workers
//! costs one `pread` each, not a path lookup, an open and a close.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// `/proc/PID/stat` of one process, kept open.
pub struct StatFile(File);

impl StatFile {
    /// None when the process is gone or `/proc` is not readable. std opens with O_CLOEXEC.
    pub fn open(pid: libc::pid_t) -> Option<StatFile> {
        File::open(format!("/proc/{pid}/stat")).ok().map(StatFile)
    }

    /// CPU seconds (user + system) and resident bytes; None once the process is gone.
    pub fn usage(&self) -> Option<(f64, u64)> {
        let mut buf = [0u8; 1024];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        let (ticks, pages) = parse(std::str::from_utf8(&buf[..n]).ok()?)?;
        Some((ticks as f64 / clock_ticks() as f64, pages * page_size()))
    }
}

/// utime + stime (fields 14 and 15) and rss in pages (field 24) of a `stat` line. The command
/// name (field 2) may hold spaces and parentheses, so the fields are counted from its last ')'.
fn parse(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ')': field 3 (state) is the first; utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Fields 16 to 23 lie between stime and rss.
    let rss: i64 = fields.nth(8)?.parse().ok()?;
    Some((utime + stime, rss.max(0) as u64))
}

fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *TICKS.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as u64,
        _ => 100,
    })
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 99 1000 50 18";
        assert_eq!(parse(stat), Some((12, 50)));
        assert_eq!(parse("42 (x) S 1"), None);
    }

    #[test]
    fn an_open_stat_file_reads_anew_each_time() {
        let f = StatFile::open(std::process::id() as libc::pid_t).unwrap();
        let (_, rss1) = f.usage().unwrap();
        let v = vec![1u8; 8 << 20];
        let (_, rss2) = f.usage().unwrap();
        assert!(rss2 >= rss1 + (6 << 20), "{rss1} then {rss2}");
        drop(v);
    }

    #[test]
    fn this_process_has_cpu_time_and_resident_memory() {
        let f = StatFile::open(std::process::id() as libc::pid_t).unwrap();
        let (cpu, rss) = f.usage().unwrap();
        assert!(cpu >= 0.0);
        assert!(rss > 100 * 1024, "{rss}");
    }
}
