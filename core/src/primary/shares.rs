//! `shared` listeners whose workers keep their shares even. Every worker accepts from the one
//! socket, so a connection waits for whichever worker is free first (the shortest wait there
//! is), and counts what it takes in the listener's share map (see `steer::counts`); a worker
//! ahead of the others lets them take the next ones. The primary gives out the members, starts
//! a joining worker level with the live member that took fewest (a new worker would otherwise
//! take every connection until it caught up), and adds what each took to its counts.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use super::steered::credit;
use super::Primary;
use crate::sys::steer::{now_ms, Counts, MAX_SOCKETS};

/// The share map of one `shared` listener and who holds its members.
pub struct Shares {
    counts: Counts,
    members: Vec<ShareMember>,
}

struct ShareMember {
    /// The worker taking part as this member; None while nobody does.
    worker: Option<u64>,
    /// What the member had taken when last looked at: what it took since is its worker's.
    seen: i64,
}

impl Primary {
    /// Gives worker `key` a member of listener `index`'s share map (made at the first ask):
    /// returns a copy of the map's descriptor and the member's index.
    pub(super) fn join_shares(&mut self, index: usize, key: u64) -> Result<(OwnedFd, u32), String> {
        let l = &mut self.listeners[index];
        if l.shares.is_none() {
            let counts = Counts::anonymous()
                .map_err(|e| format!("making the share map of {}: {e}", l.addr))?;
            l.shares = Some(Shares {
                counts,
                members: Vec::new(),
            });
        }
        let s = l.shares.as_mut().expect("made above");
        let at = match s.members.iter().position(|m| m.worker == Some(key)) {
            Some(i) => i,
            None => match s.members.iter().position(|m| m.worker.is_none()) {
                Some(i) => i,
                None if s.members.len() < MAX_SOCKETS as usize => {
                    s.members.push(ShareMember {
                        worker: None,
                        seen: 0,
                    });
                    s.members.len() - 1
                }
                None => {
                    return Err(format!(
                        "more than {MAX_SOCKETS} workers listening on {}",
                        l.addr
                    ))
                }
            },
        };
        let copy = s
            .counts
            .fd
            .try_clone()
            .map_err(|e| format!("duplicating the share map: {e}"))?;
        let member = at as u32;
        let c = &s.counts;
        c.share_members()
            .fetch_max(s.members.len() as i64, Ordering::Relaxed);
        let taken = c.share_taken(member).expect("member below MAX_SOCKETS");
        // Level with the active member that took fewest: neither ahead of the others (it
        // would wait for them) nor behind (they would wait for it).
        let now = now_ms();
        let start = c
            .share_least(Some(member), now)
            .unwrap_or_else(|| taken.load(Ordering::Relaxed));
        taken.store(start, Ordering::Relaxed);
        c.share_since(member)
            .expect("member below MAX_SOCKETS")
            .store(now, Ordering::Relaxed);
        if s.members[at].worker != Some(key) {
            // A new worker in the member: it says whether it counts what it has in hand.
            if let Some(h) = c.share_in_hand(member) {
                h.store(0, Ordering::Relaxed);
            }
        }
        let m = &mut s.members[at];
        m.worker = Some(key);
        m.seen = start;
        Ok((copy, member))
    }

    /// Worker `key` stops taking part in listener `index`'s shares (in every listener's, with
    /// None); what it took until now is counted first.
    pub(super) fn leave_shares(&mut self, key: u64, index: Option<usize>) {
        self.harvest_shares();
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if index.is_some_and(|x| x != i) {
                continue;
            }
            let Some(s) = &mut l.shares else { continue };
            for (at, m) in s.members.iter_mut().enumerate() {
                if m.worker == Some(key) {
                    m.worker = None;
                    if let Some(since) = s.counts.share_since(at as u32) {
                        since.store(0, Ordering::Relaxed);
                    }
                    if let Some(h) = s.counts.share_in_hand(at as u32) {
                        h.store(0, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// Adds the connections each worker took from a shared socket since the last look to its
    /// `connections_total` and to the dispatched counters. Returns the workers that took any,
    /// for `max_requests`. A few atomic reads per member; no system call.
    pub(super) fn harvest_shares(&mut self) -> Vec<u64> {
        let mut got = Vec::new();
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let Some(s) = l.shares.as_mut() else { continue };
            for (at, m) in s.members.iter_mut().enumerate() {
                let Some(taken) = s.counts.share_taken(at as u32) else {
                    continue;
                };
                let taken = taken.load(Ordering::Relaxed);
                let new = taken.saturating_sub(m.seen).max(0) as u64;
                m.seen = taken;
                credit(&mut self.procs, &mut self.ops, i, m.worker, new, &mut got);
            }
        }
        got
    }
}
