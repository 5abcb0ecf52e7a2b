//! The count map of the kernel's turns in memory: the primary's view of it, and a worker's.
//! And the share map of a `shared` listener, which has the same size and travels the same way
//! (a descriptor and a member's index), but lives in a memfd: no program reads it.
//!
//! The share map, in i64 words: word 0 is how many members have been given out (the members
//! are 0 up to it), then two words per member: how many connections its workers took from the
//! shared socket, and when (milliseconds of `CLOCK_MONOTONIC`) its worker last took one or
//! joined, 0 while no worker takes part as it; after those, one word per member: 0 while its
//! worker does not count the connections it has in hand, else 1 + how many it took and has not
//! closed yet. A worker [`TurnCounter::ahead`] of the member that took fewest leaves the others
//! the next connections, so the shares stay even while every worker takes from the one queue.
//! Only members that took one within [`ACTIVE_MS`] count: a worker stuck on a long request
//! holds nobody back. A worker that took more than a member with nothing in hand
//! ([`TurnCounter::behind_idle`]) leaves it the next connection too: between requests one
//! after the other, the workers take turns.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI64, Ordering};

use super::{COUNTS_SIZE, MAX_SOCKETS, SHARE_MAP_SIZE};

/// The count map, mapped into this process's memory: one i64 per member.
pub(crate) struct Counts {
    pub(crate) fd: OwnedFd,
    base: *mut AtomicI64,
    /// Bytes mapped: `COUNTS_SIZE`, or a share map's size.
    len: u32,
}

// SAFETY: the memory is only ever accessed through atomics, and lives as long as the value.
unsafe impl Send for Counts {}
// SAFETY: as above.
unsafe impl Sync for Counts {}

impl Counts {
    pub(super) fn map(fd: OwnedFd) -> io::Result<Counts> {
        // A BPF map's descriptor has no size; a share map's memfd has its own (an older
        // primary's is COUNTS_SIZE).
        // SAFETY: a zeroed stat, written by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat of a descriptor owned here into that stat.
        let size = if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFREG
        {
            st.st_size
        } else {
            0
        };
        let len = if size >= SHARE_MAP_SIZE as i64 {
            SHARE_MAP_SIZE
        } else {
            COUNTS_SIZE
        };
        // SAFETY: maps the map's values (`len` bytes, one page-aligned array) shared; the
        // result is checked before use and unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
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
            len,
        })
    }

    /// A map of the same layout in memory of this process's own (a memfd), which workers map
    /// from a copy of its descriptor: the share map of a `shared` listener.
    pub(crate) fn anonymous() -> io::Result<Counts> {
        // SAFETY: a new descriptor, owned from here on.
        let fd = unsafe { libc::memfd_create(c"rcluster-shares".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: resizes the memfd owned here (zero-filled).
        if unsafe { libc::ftruncate(fd.as_raw_fd(), SHARE_MAP_SIZE as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Counts::map(fd)
    }

    /// Word `i` of the mapping, as the share map reads it.
    fn word(&self, i: u32) -> Option<&AtomicI64> {
        // SAFETY: in bounds (checked against the mapping's size), aligned, and the mapping
        // lives as long as `self`.
        (i < self.len / 8).then(|| unsafe { &*self.base.add(i as usize) })
    }

    /// How many share-map members have been given out.
    pub(crate) fn share_members(&self) -> &AtomicI64 {
        self.word(0).expect("word 0")
    }

    /// How many connections share-map member `member`'s workers took in all.
    pub(crate) fn share_taken(&self, member: u32) -> Option<&AtomicI64> {
        (member < MAX_SOCKETS)
            .then(|| self.word(1 + 2 * member))
            .flatten()
    }

    /// When share-map member `member`'s worker last took a connection or joined (see
    /// [`now_ms`]); 0 while no worker takes part as it.
    pub(crate) fn share_since(&self, member: u32) -> Option<&AtomicI64> {
        (member < MAX_SOCKETS)
            .then(|| self.word(2 + 2 * member))
            .flatten()
    }

    /// Share-map member `member`'s connections in hand: 0 while its worker does not count
    /// them, else 1 + how many. None in the map of an older primary (no such words).
    pub(crate) fn share_in_hand(&self, member: u32) -> Option<&AtomicI64> {
        (member < MAX_SOCKETS && self.len == SHARE_MAP_SIZE)
            .then(|| self.word(1 + 2 * MAX_SOCKETS + member))
            .flatten()
    }

    /// How many share-map members have been given out, as far as the map can hold (a worker
    /// may write anything there).
    fn share_member_count(&self) -> u32 {
        self.share_members()
            .load(Ordering::Relaxed)
            .clamp(0, MAX_SOCKETS as i64) as u32
    }

    /// Whether a share-map member other than `but` takes part (its worker joined), counts
    /// its connections in hand and has none, took its last before `quiet` (see
    /// [`TurnCounter::behind_idle`]), and took fewer than `mine`, or as many but longer ago
    /// than `since` (the order of turns).
    pub(crate) fn share_idle_below(&self, but: u32, mine: i64, since: i64, quiet: i64) -> bool {
        let n = self.share_member_count();
        (0..n).filter(|&m| m != but).any(|m| {
            let idle = self
                .share_in_hand(m)
                .is_some_and(|h| h.load(Ordering::Relaxed) == 1);
            let (Some(taken), Some(at)) = (self.share_taken(m), self.share_since(m)) else {
                return false;
            };
            let (taken, at) = (taken.load(Ordering::Relaxed), at.load(Ordering::Relaxed));
            idle && at != 0 && at < quiet && (taken < mine || (taken == mine && at < since))
        })
    }

    /// The fewest connections in hand of a share-map member other than `but` that takes part
    /// (its worker joined) and counts them; None when there is none.
    pub(crate) fn share_least_in_hand(&self, but: u32) -> Option<i64> {
        let n = self.share_member_count();
        (0..n)
            .filter(|&m| m != but)
            .filter(|&m| {
                self.share_since(m)
                    .is_some_and(|t| t.load(Ordering::Relaxed) != 0)
            })
            .filter_map(|m| {
                let h = self.share_in_hand(m)?.load(Ordering::Relaxed);
                (h > 0).then_some(h - 1)
            })
            .min()
    }

    /// The fewest connections taken by a share-map member other than `but` whose worker took
    /// one (or joined) within [`ACTIVE_MS`] of `now`; None when there is none.
    pub(crate) fn share_least(&self, but: Option<u32>, now: i64) -> Option<i64> {
        let n = self.share_member_count();
        (0..n)
            .filter(|&m| Some(m) != but)
            .filter(|&m| {
                self.share_since(m).is_some_and(|t| {
                    let t = t.load(Ordering::Relaxed);
                    t != 0 && now.saturating_sub(t) <= ACTIVE_MS
                })
            })
            .filter_map(|m| self.share_taken(m).map(|t| t.load(Ordering::Relaxed)))
            .min()
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
        unsafe { libc::munmap(self.base.cast(), self.len as usize) };
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

    /// For a share map: this worker took one connection from the shared socket.
    pub fn took(&self) {
        if let Some(t) = self.counts.share_taken(self.member) {
            t.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = self.counts.share_since(self.member) {
            t.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// For a share map: from now on this worker counts the connections it has in hand
    /// ([`TurnCounter::holds`], [`TurnCounter::released`]), so that the others may leave it
    /// the next one while it has none. False in the map of an older primary.
    pub fn count_in_hand(&self) -> bool {
        self.counts.share_in_hand(self.member).is_some_and(|h| {
            // From "not counting" to "counting, none": a second call keeps the count.
            let _ = h.compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed);
            true
        })
    }

    /// For a share map, counting in hand: one more connection in hand (just taken).
    pub fn holds(&self) {
        if let Some(h) = self.counts.share_in_hand(self.member) {
            h.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// For a share map, counting in hand: a connection taken is closed. Never below none.
    pub fn released(&self) {
        if let Some(h) = self.counts.share_in_hand(self.member) {
            let _ = h.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n > 1).then_some(n - 1)
            });
        }
    }

    /// For a share map: whether another member whose turn comes before this one's (it took
    /// fewer connections, or as many but longer ago) has none in hand (its worker counts them
    /// and is idle): it takes the next one at once, so this one may leave it, and requests
    /// that come one after the other go to the workers in turn. A few atomic reads per member.
    ///
    /// Only a member that took nothing in this tick of the coarse clock ([`now_ms`]: 1–4 ms)
    /// counts. One that took a connection a moment ago is between the requests of a busy run:
    /// it has none in hand for an instant, and may not be running to take the next. Waiting
    /// for it cost Node workers 6 % of their requests a second (a new connection per request,
    /// 50 clients), and requests one after the other come further apart than a tick.
    pub fn behind_idle(&self) -> bool {
        let (Some(taken), Some(since)) = (
            self.counts.share_taken(self.member),
            self.counts.share_since(self.member),
        ) else {
            return false;
        };
        self.counts.share_idle_below(
            self.member,
            taken.load(Ordering::Relaxed),
            since.load(Ordering::Relaxed),
            now_ms(),
        )
    }

    /// For a share map, counting in hand: whether this worker has `lead` or more connections
    /// in hand beyond the member that counts them and has fewest (false when there is no
    /// other). Connections that stay open (kept alive) are spread over the workers this way,
    /// whatever the order they took them in. A few atomic reads per member.
    pub fn ahead_in_hand(&self, lead: u32) -> bool {
        let mine = match self.counts.share_in_hand(self.member) {
            Some(h) => h.load(Ordering::Relaxed) - 1,
            None => return false,
        };
        if mine < 0 {
            return false; // this member does not count
        }
        self.counts
            .share_least_in_hand(self.member)
            .is_some_and(|least| mine >= least.saturating_add(lead as i64))
    }

    /// For a share map: whether this worker took `lead` or more connections beyond the
    /// active member that took fewest (false when there is no other). A worker that took
    /// nothing for [`ACTIVE_MS`] (back from a long request, or from a stop of its loop) and
    /// is more than `lead` behind the others is moved up to `lead` behind: it takes its share
    /// from now on, not every connection until it has caught up. One that is merely slower
    /// keeps its count, so that the others leave it its share. A few atomic reads per member.
    pub fn ahead(&self, lead: u32) -> bool {
        let Some(taken) = self.counts.share_taken(self.member) else {
            return false;
        };
        let now = now_ms();
        let mine = taken.load(Ordering::Relaxed);
        let Some(least) = self.counts.share_least(Some(self.member), now) else {
            return false;
        };
        let lead = lead as i64;
        let idle = self
            .counts
            .share_since(self.member)
            .is_some_and(|t| now.saturating_sub(t.load(Ordering::Relaxed)) > ACTIVE_MS);
        if idle && mine.saturating_add(lead) < least {
            taken.fetch_max(least - lead, Ordering::Relaxed);
        }
        mine >= least.saturating_add(lead)
    }
}

/// How long after its last connection a member still counts for [`TurnCounter::ahead`].
pub const ACTIVE_MS: i64 = 50;

/// Milliseconds of `CLOCK_MONOTONIC` (the coarse clock: a few milliseconds' resolution, no
/// system call), the same in every process of the machine; never 0.
pub fn now_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec; CLOCK_MONOTONIC_COARSE exists on every Linux we run on.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000).max(1)
}
