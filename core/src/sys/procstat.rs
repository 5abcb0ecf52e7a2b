//! CPU time and resident memory of a process, from `/proc/PID/stat` and `/proc/PID/statm`.
//!
//! Read on demand (a status request): a cluster nobody looks at pays nothing. Two small reads
//! per worker, no allocation beyond the read buffer. With `max_memory` set, the loop also
//! reads `statm` alone once a second per worker (`rss`).

use std::io::Read;
use std::sync::OnceLock;

/// CPU seconds (user + system) and resident bytes of `pid`; None when the process is gone
/// or `/proc` is not readable.
pub fn usage(pid: libc::pid_t) -> Option<(f64, u64)> {
    let mut buf = [0u8; 1024];
    let stat = read_small(&format!("/proc/{pid}/stat"), &mut buf)?;
    let ticks = cpu_ticks(stat)?;
    let cpu = ticks as f64 / clock_ticks() as f64;
    let mut buf = [0u8; 256];
    let statm = read_small(&format!("/proc/{pid}/statm"), &mut buf)?;
    let pages = resident_pages(statm)?;
    Some((cpu, pages * page_size()))
}

/// Resident bytes of `pid` alone (one read of `statm`), for the loop's periodic memory check
/// (`max_memory`); None when the process is gone.
pub fn rss(pid: libc::pid_t) -> Option<u64> {
    let mut buf = [0u8; 256];
    let statm = read_small(&format!("/proc/{pid}/statm"), &mut buf)?;
    Some(resident_pages(statm)? * page_size())
}

fn read_small<'a>(path: &str, buf: &'a mut [u8]) -> Option<&'a str> {
    // std opens with O_CLOEXEC.
    let mut f = std::fs::File::open(path).ok()?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    std::str::from_utf8(&buf[..n]).ok()
}

/// utime + stime (fields 14 and 15) of a `stat` line. The command name (field 2) may hold
/// spaces and parentheses, so the fields are counted from its last ')'.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ')': field 3 (state) is the first; utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The second field of `statm`: resident pages.
fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
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
    fn cpu_ticks_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 99 1000 50";
        assert_eq!(cpu_ticks(stat), Some(12));
    }

    #[test]
    fn resident_pages_are_the_second_field_of_statm() {
        assert_eq!(resident_pages("1000 250 100 1 0 300 0\n"), Some(250));
        assert_eq!(resident_pages("1000"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_resident_memory() {
        let (cpu, rss) = usage(std::process::id() as libc::pid_t).unwrap();
        assert!(cpu >= 0.0);
        assert!(rss > 100 * 1024, "{rss}");
        let alone = rss_of_self();
        assert!(alone > 100 * 1024, "{alone}");
    }

    fn rss_of_self() -> u64 {
        rss(std::process::id() as libc::pid_t).unwrap()
    }
}
