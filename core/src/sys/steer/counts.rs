//! The count map of the kernel's turns in memory: the primary's view of it, and a worker's.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI64, Ordering};

use super::{COUNTS_SIZE, MAX_SOCKETS};

/// The count map, mapped into this process's memory: one i64 per member.
pub(super) struct Counts {
    pub(super) fd: OwnedFd,
    base: *mut AtomicI64,
}

// SAFETY: the memory is only ever accessed through atomics, and lives as long as the value.
unsafe impl Send for Counts {}
// SAFETY: as above.
unsafe impl Sync for Counts {}

impl Counts {
    pub(super) fn map(fd: OwnedFd) -> io::Result<Counts> {
        // SAFETY: maps the map's values (COUNTS_SIZE bytes, one page-aligned array) shared; the
        // result is checked before use and unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                COUNTS_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Counts {
            fd,
            base: base.cast(),
        })
    }

    pub(super) fn get(&self, member: u32) -> Option<&AtomicI64> {
        // SAFETY: in bounds (checked), aligned (page-aligned base, 8-byte elements), and the
        // mapping lives as long as `self`.
        (member < MAX_SOCKETS).then(|| unsafe { &*self.base.add(member as usize) })
    }

    /// How many connections member `member`'s socket was given in all (the third part).
    pub(super) fn placed(&self, member: u32) -> Option<&AtomicI64> {
        // SAFETY: as in `get`, 2 × MAX_SOCKETS elements further (COUNTS_SIZE holds all three).
        (member < MAX_SOCKETS)
            .then(|| unsafe { &*self.base.add((2 * MAX_SOCKETS + member) as usize) })
    }

    /// How many connections the program gave member `member` (the second half).
    pub(super) fn given(&self, member: u32) -> Option<&AtomicI64> {
        // SAFETY: as in `get`, MAX_SOCKETS elements further (COUNTS_SIZE holds both halves).
        (member < MAX_SOCKETS).then(|| unsafe { &*self.base.add((MAX_SOCKETS + member) as usize) })
    }
}

impl Drop for Counts {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no reference into it outlives `self`.
        unsafe { libc::munmap(self.base.cast(), COUNTS_SIZE as usize) };
    }
}

/// A worker's side of the counting: the count map its primary sent, and its member's index.
/// The program adds one per connection it gives the member's socket; the worker takes one off
/// when it is done with such a connection: when it closes it (the count is then the
/// connections it has in hand or waiting, its load), or when it accepts it (the count is then
/// its accept queue). See `program`.
pub struct TurnCounter {
    counts: Counts,
    member: u32,
}

impl std::fmt::Debug for TurnCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCounter")
            .field("member", &self.member)
            .finish()
    }
}

impl TurnCounter {
    /// Maps the count map `fd` (from the primary) for member `member`.
    pub fn new(fd: OwnedFd, member: u32) -> io::Result<TurnCounter> {
        if member >= MAX_SOCKETS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("member {member} is past the last of {MAX_SOCKETS}"),
            ));
        }
        Ok(TurnCounter {
            counts: Counts::map(fd)?,
            member,
        })
    }

    /// One connection from the member's socket is done with (closed, or accepted).
    pub fn done(&self) {
        if let Some(c) = self.counts.get(self.member) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The member's index in the count map.
    pub fn member(&self) -> u32 {
        self.member
    }
}
