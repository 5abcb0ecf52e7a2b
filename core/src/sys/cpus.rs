//! How many CPUs this process may really use, for the default number of workers: the CPUs of
//! its affinity mask (`taskset`, a container's cpuset), bounded by the CPU quota of its cgroup
//! v2 and of every cgroup above it (`cpu.max`, e.g. `docker run --cpus=2`). A container on a
//! 64-CPU host that may use two of them should start two workers, not 64.

use std::fs;
use std::path::Path;

/// The CPUs this process may use: the affinity mask, bounded by the cgroup quota; at least 1.
pub fn usable() -> usize {
    let mask = affinity().unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let quota = cgroup_quota(
        &fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        Path::new("/sys/fs/cgroup"),
    );
    mask.min(quota.unwrap_or(usize::MAX)).max(1)
}

/// The number of CPUs in this thread's affinity mask (`sched_getaffinity`); None if the call
/// fails (a mask wider than `cpu_set_t`, 1024 CPUs).
fn affinity() -> Option<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed; 0 means the calling thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return None;
    }
    // SAFETY: `set` was filled in by the kernel above.
    let n = unsafe { libc::CPU_COUNT(&set) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// The smallest CPU quota, in whole CPUs rounded up, of the process's cgroup v2 and the
/// cgroups above it, given the text of `/proc/self/cgroup` and where the v2 hierarchy is
/// mounted; None when no level sets one (or there is no cgroup v2).
pub(crate) fn cgroup_quota(proc_cgroup: &str, mount: &Path) -> Option<usize> {
    // The v2 entry is the line "0::/path" (a v1 hierarchy's lines name their controllers).
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir = mount.to_path_buf();
    let mut best = cpu_max(&dir);
    // Bounded by the depth of the path; a ".." cannot climb out (it is skipped).
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
        best = match (best, cpu_max(&dir)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    best
}

/// The quota of one cgroup directory's `cpu.max` ("QUOTA PERIOD" or "max PERIOD").
fn cpu_max(dir: &Path) -> Option<usize> {
    parse_cpu_max(&fs::read_to_string(dir.join("cpu.max")).ok()?)
}

/// "150000 100000" → 2 (1.5 CPUs, rounded up: half a CPU more is still worth a worker);
/// "max 100000" → None.
pub(crate) fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut it = text.split_whitespace();
    let quota: u64 = it.next()?.parse().ok()?;
    let period: u64 = it.next().map_or(Some(100_000), |p| p.parse().ok())?;
    if period == 0 {
        return None;
    }
    usize::try_from(quota.div_ceil(period).max(1)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_rounds_a_quota_up_to_whole_cpus_and_max_means_none() {
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max("1000 100000"), Some(1));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("300000"), Some(3));
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cpu_max("100 0"), None);
    }

    #[test]
    fn the_smallest_quota_on_the_way_down_the_hierarchy_counts() {
        let root = std::env::temp_dir().join(format!("rcluster-cpus-{}", std::process::id()));
        let leaf = root.join("pod").join("app");
        fs::create_dir_all(&leaf).unwrap();
        fs::write(root.join("pod").join("cpu.max"), "300000 100000\n").unwrap();
        fs::write(leaf.join("cpu.max"), "max 100000\n").unwrap();
        let proc_cgroup = "0::/pod/app\n";
        assert_eq!(cgroup_quota(proc_cgroup, &root), Some(3));
        fs::write(leaf.join("cpu.max"), "120000 100000\n").unwrap();
        assert_eq!(cgroup_quota(proc_cgroup, &root), Some(2));
        // cgroup v1 only: no "0::" line, no quota from here.
        assert_eq!(cgroup_quota("4:memory:/pod\n", &root), None);
        // No cpu.max anywhere (the root cgroup has none).
        assert_eq!(cgroup_quota("0::/\n", &root), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn usable_cpus_are_at_least_one_and_at_most_the_affinity_mask() {
        let n = usable();
        assert!(n >= 1);
        assert!(n <= affinity().unwrap_or(usize::MAX), "{n}");
    }
}
