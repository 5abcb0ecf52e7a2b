//! Round-robin in the kernel: a group of `SO_REUSEPORT` listening sockets on one address, one
//! per worker, and a small BPF program attached to the group that sends each new connection to
//! the next socket in turn. The connection then waits in that worker's own accept queue, and the
//! worker accepts it as it would in `shared` mode: the primary does no work per connection.
//!
//! The primary keeps every socket of the group, so a worker that dies leaves its queue behind,
//! not lost: the primary takes the socket out of the turn and accepts what waits in it itself.
//!
//! The turns look at how busy each worker is: a worker may count the connections it has in
//! hand in a map it shares with the program (`counts`), which then gives a connection to the
//! next socket rather than the turn's when the next one's worker has fewer (`program`).
//!
//! Loading the program needs `CAP_BPF` and `CAP_NET_ADMIN` (root, usually). Without them,
//! [`Steer::new`] fails and round-robin listeners are served by the primary's own accept loop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

// bpf(2) commands, map and program types, from <linux/bpf.h>.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// A map whose values can be mapped into memory (the count map, shared with the workers).
const BPF_F_MMAPABLE: u32 = 1 << 10;
/// `SO_ATTACH_REUSEPORT_EBPF` from <asm-generic/socket.h>.
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
/// The most sockets taking turns.
pub const MAX_SOCKETS: u32 = 1024;
/// The slot of the socket that takes every connection no turn could place (see `program`).
const FALLBACK: u32 = MAX_SOCKETS;

/// `union bpf_attr`, as wide as any command here needs; unused fields stay zero, as the kernel
/// requires.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn u32(mut self, at: usize, v: u32) -> Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64(mut self, at: usize, v: u64) -> Attr {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn call(&mut self, cmd: libc::c_long) -> io::Result<libc::c_long> {
        // SAFETY: the attribute is a zero-filled buffer of its full size, with the pointers in
        // it (set by the callers) valid for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                self.0.len() as libc::c_uint,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    fn call_fd(&mut self, cmd: libc::c_long) -> io::Result<OwnedFd> {
        let fd = self.call(cmd)?;
        // SAFETY: these commands return a new descriptor, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

fn create_map(kind: u32, key: u32, value: u32, entries: u32, flags: u32) -> io::Result<OwnedFd> {
    Attr::new()
        .u32(0, kind)
        .u32(4, key)
        .u32(8, value)
        .u32(12, entries)
        .u32(16, flags)
        .call_fd(BPF_MAP_CREATE)
}

fn update(map: RawFd, key: &u32, value: *const u8) -> io::Result<()> {
    Attr::new()
        .u32(0, map as u32)
        .u64(8, key as *const u32 as u64)
        .u64(16, value as u64)
        .call(BPF_MAP_UPDATE_ELEM)
        .map(drop)
}

/// The value of the state map: the turn counter, how many sockets take turns, and for each
/// turn the entry of the member whose socket it is (see [`TRACKED`]).
const STATE_SIZE: u32 = 16 + 4 * MAX_SOCKETS;
/// In a turn's entry: the member's worker counts its connections, so the program may compare its
/// count with the next turn's. Below it, the member's index in the count array.
pub const TRACKED: u32 = 1 << 31;
/// The value of the count map (its only element): one i64 per member, by member index (the
/// load its worker counts down), then one u64 per member (how many connections the program
/// gave it, which only the program and the primary touch), then one u64 per member (how many
/// connections its socket was given in all, tracked or not, which only the program writes).
const COUNTS_SIZE: u32 = 24 * MAX_SOCKETS;
/// The size of a `shared` listener's share map (a memfd): word 0, two words per member, then
/// one word per member (connections in hand), rounded up to whole pages.
const SHARE_MAP_SIZE: u32 = 32 * MAX_SOCKETS;
/// Where the second part of the count map's value begins.
const GIVEN: i16 = 8 * MAX_SOCKETS as i16;
/// Where the third part of the count map's value begins.
const PLACED: i16 = 16 * MAX_SOCKETS as i16;
/// How many connections a member may have been given beyond the turn's member before it is
/// no longer preferred to it for being less busy. A bound on how far the shares drift apart
/// when one worker is slower for long: past it the turns are strict between those two until
/// the other catches up, so over N connections the shares differ by this at most, whatever
/// the workers' speeds. Small enough to hold on short runs of many workers too: 64 workers
/// taking 13,000 connections a second get about 600 each in 3 s, and with 256 here one pair
/// of neighbours drifted to 974 and 391 (bench/RESULTS.md). Passing over a busy worker needs
/// no more room than this: at two workers, p99 was 0.84× `shared`'s with 32 and 0.80× with 256.
pub const MAX_LEAD: i32 = 32;

mod counts;
mod program;
#[cfg(test)]
mod tests;

pub(crate) use counts::Counts;
#[cfg(test)]
use counts::ACTIVE_MS;
pub use counts::{now_ms, TurnCounter};
use program::program;

/// The program and maps of one group.
pub struct Steer {
    prog: OwnedFd,
    state: OwnedFd,
    counts: Counts,
    socks: OwnedFd,
    /// How many sockets take turns now (slots 0..len of the array).
    len: u32,
}

impl Steer {
    /// Loads the program. Fails without the privileges for it (EPERM), or on a kernel without
    /// BPF or reuseport socket arrays; the caller then accepts in the primary.
    pub fn new() -> io::Result<Steer> {
        let state = create_map(BPF_MAP_TYPE_ARRAY, 4, STATE_SIZE, 1, 0)?;
        let counts = Counts::map(create_map(
            BPF_MAP_TYPE_ARRAY,
            4,
            COUNTS_SIZE,
            1,
            BPF_F_MMAPABLE,
        )?)?;
        let socks = create_map(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 4, 8, FALLBACK + 1, 0)?;
        let insns = program(state.as_raw_fd(), counts.fd.as_raw_fd(), socks.as_raw_fd());
        let license = b"Dual MIT/GPL\0";
        let mut log = vec![0u8; 65536];
        // Without a log, its buffer must be left out too.
        let load = |log_level: u32, log: &mut [u8]| {
            Attr::new()
                .u32(0, BPF_PROG_TYPE_SK_REUSEPORT)
                .u32(4, insns.len() as u32)
                .u64(8, insns.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .u32(24, log_level)
                .u32(28, log.len() as u32)
                .u64(
                    32,
                    if log.is_empty() {
                        0
                    } else {
                        log.as_mut_ptr() as u64
                    },
                )
                .call_fd(BPF_PROG_LOAD)
        };
        let prog = match load(0, &mut []) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Rejected by the verifier: load again with its log, to say why.
                let _ = load(1, &mut log);
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let why = String::from_utf8_lossy(&log[..end]).trim().to_string();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the BPF verifier refused the program: {why}"),
                ));
            }
            Err(e) => return Err(e),
        };
        Ok(Steer {
            prog,
            state,
            counts,
            socks,
            len: 0,
        })
    }

    /// Attaches the program to the group of `fd` (a listening `SO_REUSEPORT` socket), which
    /// takes the connections no turn places.
    pub fn attach(&self, fd: RawFd) -> io::Result<()> {
        let value = fd as u64;
        update(
            self.socks.as_raw_fd(),
            &FALLBACK,
            (&value as *const u64).cast(),
        )?;
        let prog = self.prog.as_raw_fd();
        // SAFETY: passes a valid c_int of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_ATTACH_REUSEPORT_EBPF,
                (&prog as *const RawFd).cast(),
                std::mem::size_of::<RawFd>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes `turns` (listening sockets of the group, each with its member's entry: its index
    /// in the count array, with [`TRACKED`] when its worker counts its accepts) take turns, in
    /// this order, from the next connection on. With none, the fallback socket takes all.
    ///
    /// A socket can hold one slot of the array only, so the array is emptied and written
    /// anew. Meanwhile, for a few microseconds, the fallback socket takes what comes.
    pub fn set(&mut self, turns: &[(RawFd, u32)]) -> io::Result<()> {
        if turns.len() > MAX_SOCKETS as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("more than {MAX_SOCKETS} sockets to take turns"),
            ));
        }
        if let Some(&(_, e)) = turns.iter().find(|t| t.1 & !TRACKED >= MAX_SOCKETS) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("member {} is past the last of {MAX_SOCKETS}", e & !TRACKED),
            ));
        }
        self.set_state(&[])?;
        for i in 0..self.len {
            // An empty slot (its socket closed since) is no error here.
            let _ = Attr::new()
                .u32(0, self.socks.as_raw_fd() as u32)
                .u64(8, &i as *const u32 as u64)
                .call(BPF_MAP_DELETE_ELEM);
        }
        self.len = 0;
        for (i, &(fd, _)) in turns.iter().enumerate() {
            let value = fd as u64;
            update(
                self.socks.as_raw_fd(),
                &(i as u32),
                (&value as *const u64).cast(),
            )?;
            self.len = i as u32 + 1;
        }
        let entries: Vec<u32> = turns.iter().map(|t| t.1).collect();
        self.set_state(&entries)
    }

    fn set_state(&self, entries: &[u32]) -> io::Result<()> {
        let mut value = vec![0u8; STATE_SIZE as usize];
        // The turn counter starts again at 0: the next connection goes to the first socket.
        value[8..12].copy_from_slice(&(entries.len() as u32).to_ne_bytes());
        for (i, e) in entries.iter().enumerate() {
            value[16 + 4 * i..20 + 4 * i].copy_from_slice(&e.to_ne_bytes());
        }
        update(self.state.as_raw_fd(), &0, value.as_ptr())
    }

    /// Member `member` starts anew (a worker is given its socket): nothing is counted against
    /// it. What waits in its socket, left by the last worker, the new worker takes and counts
    /// off: its count is below zero for that while, and it is preferred until it is even.
    ///
    /// Its share starts level with the member furthest ahead, so that no other member is held
    /// to strict turns with it for a lead it took over a worker gone since (see `MAX_LEAD`).
    pub fn reset(&self, member: u32) {
        if let Some(c) = self.counts.get(member) {
            c.store(0, Ordering::Relaxed);
        }
        let most = (0..MAX_SOCKETS)
            .filter_map(|m| self.counts.given(m))
            .map(|g| g.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        if let Some(g) = self.counts.given(member) {
            g.store(most, Ordering::Relaxed);
        }
    }

    /// How many connections the program has given member `member`'s socket in all, since the
    /// group was made (whichever workers had it): the primary takes differences.
    pub fn placed(&self, member: u32) -> u64 {
        self.counts
            .placed(member)
            .map_or(0, |c| c.load(Ordering::Relaxed) as u64)
    }

    /// Member `member`'s count: connections given to its socket and not taken off yet.
    pub fn count(&self, member: u32) -> i64 {
        self.counts
            .get(member)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// A copy of the count map, for a worker that counts its connections (see [`TurnCounter`]).
    pub fn counts_fd(&self) -> io::Result<OwnedFd> {
        self.counts.fd.try_clone()
    }
}
