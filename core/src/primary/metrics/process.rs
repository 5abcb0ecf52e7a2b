//! CPU time, memory and start time of the primary, from `/proc/self/stat`, for the
//! `process_*` metrics (the workers' figures come from `sys::procstat`).

use std::io::Read;

/// What one read of `/proc/PID/stat` gives.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time, in seconds.
    pub cpu_s: f64,
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    /// Since boot, in seconds.
    pub start_s: f64,
}

/// Clock ticks per second and page size, read once.
#[derive(Debug, Clone, Copy)]
pub struct Units {
    ticks: f64,
    page: u64,
    /// When the system booted (Unix seconds), for `process_start_time_seconds`.
    pub boot_time: f64,
}

impl Units {
    /// Read once per process: none of them changes while it runs.
    pub fn get() -> &'static Units {
        static UNITS: std::sync::OnceLock<Units> = std::sync::OnceLock::new();
        UNITS.get_or_init(Units::read)
    }

    fn read() -> Units {
        // SAFETY: sysconf has no memory effects.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        Units {
            ticks: if ticks > 0 { ticks as f64 } else { 100.0 },
            page: if page > 0 { page as u64 } else { 4096 },
            boot_time,
        }
    }
}

/// The usage of process `pid` (0: this process); None when it is gone.
pub fn usage(pid: i32, units: &Units, buf: &mut Vec<u8>) -> Option<Usage> {
    buf.clear();
    let path = if pid == 0 {
        "/proc/self/stat".to_string()
    } else {
        format!("/proc/{pid}/stat")
    };
    std::fs::File::open(path).ok()?.read_to_end(buf).ok()?;
    parse(buf, units)
}

/// Fields after the command name (which may hold spaces and parentheses): state is the 3rd
/// field of the line, utime the 14th, stime the 15th, starttime the 22nd, vsize the 23rd,
/// rss the 24th.
fn parse(stat: &[u8], units: &Units) -> Option<Usage> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i - 3).and_then(|s| s.parse::<u64>().ok());
    Some(Usage {
        cpu_s: (num(14)? + num(15)?) as f64 / units.ticks,
        start_s: num(22)? as f64 / units.ticks,
        vsize_bytes: num(23)?,
        rss_bytes: num(24)? * units.page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name_parses() {
        let units = Units {
            ticks: 100.0,
            page: 4096,
            boot_time: 0.0,
        };
        let line = b"42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 \
                     1000 8192000 300 18446744073709551615";
        let u = parse(line, &units).unwrap();
        assert_eq!(u.cpu_s, 3.0);
        assert_eq!(u.start_s, 10.0);
        assert_eq!(u.vsize_bytes, 8192000);
        assert_eq!(u.rss_bytes, 300 * 4096);
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let u = usage(0, Units::get(), &mut Vec::new()).unwrap();
        assert!(u.rss_bytes > 0 && u.vsize_bytes >= u.rss_bytes, "{u:?}");
    }
}
