//! The cluster's own cgroup, where the primary may have one.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// The cluster's own cgroup (v2), where the primary may create one: as root, or inside a
/// cgroup delegated to its user.
pub struct Cgroup {
    pub dir: PathBuf,
    pub dir_c: CString,
    pub procs: OwnedFd,
    pub kill: OwnedFd,
}

static CGROUPS: AtomicU32 = AtomicU32::new(0);

impl Cgroup {
    /// None when the primary cannot have one (no cgroup v2, no permission, a kernel before
    /// 5.14 without `cgroup.kill`): workers' `setsid` descendants are then not ended.
    pub fn create() -> Option<Cgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let own = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let mount = cgroup2_mount()?;
        let n = CGROUPS.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!(
            "{}{}/rcluster.{}.{n}",
            mount,
            own.trim_end_matches('/'),
            std::process::id()
        ));
        std::fs::create_dir(&dir).ok()?;
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join(name))
                .map(OwnedFd::from)
        };
        match (open("cgroup.procs"), open("cgroup.kill")) {
            (Ok(procs), Ok(kill)) => Some(Cgroup {
                dir_c: CString::new(dir.as_os_str().as_bytes()).ok()?,
                dir,
                procs,
                kill,
            }),
            _ => {
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The sentinel removes it once empty; this covers a sentinel that gave up waiting, or
        // one that never started.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hybrid systems).
fn cgroup2_mount() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (fields, fs) = l.split_once(" - ")?;
        if !fs.starts_with("cgroup2 ") {
            return None;
        }
        let f: Vec<&str> = fields.split(' ').collect();
        // Field 4 is the root of the mount inside the hierarchy: only a mount of the whole
        // hierarchy matches the paths in /proc/self/cgroup.
        (f.get(3) == Some(&"/")).then(|| f.get(4).map(|m| m.to_string()))?
    })
}
