//! Which worker gets the next connection: pure decisions, no sockets, unit-tested alone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::{Bound, RangeBounds};

use crate::sys::listen::Dispatch;

/// A worker as the dispatcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub key: u64,
    pub slot: u32,
    /// Handed and not yet acknowledged.
    pub unacked: usize,
    /// Acknowledged and not yet reported closed.
    pub active: usize,
    /// It may take another connection now (ready, not draining, below its limits).
    pub has_room: bool,
    /// Connections it took ahead of its turns in round-robin (see [`Pass`]).
    pub ahead: u32,
}

/// The answer for one waiting connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Worker(u64),
    /// Keep it queued: the worker it belongs to (or every worker) is busy or coming back.
    Wait,
}

/// Slot state for sticky dispatch: does the slot have, or soon have, a worker?
pub trait SlotState {
    fn slot_count(&self) -> u32;
    /// True when the slot is down for good (gave up or stays down): its clients move on.
    fn slot_down(&self, slot: u32) -> bool;
}

/// A range of worker keys.
pub type Keys = (Bound<u64>, Bound<u64>);

/// The workers, in key order, looked at lazily: round-robin stops at the first worker with
/// room, so its cost per connection does not grow with the number of workers.
pub trait Workers {
    /// Calls `visit` on each worker with a key in `keys`, in key order, until it returns true.
    fn visit(&self, keys: Keys, visit: &mut dyn FnMut(&Candidate) -> bool);
}

/// Workers in a slice sorted by key (and in arrays and vectors of them).
fn visit_sorted(list: &[Candidate], keys: Keys, visit: &mut dyn FnMut(&Candidate) -> bool) {
    let from = list.partition_point(|c| match keys.0 {
        Bound::Included(k) => c.key < k,
        Bound::Excluded(k) => c.key <= k,
        Bound::Unbounded => false,
    });
    for c in &list[from..] {
        if !keys.contains(&c.key) || visit(c) {
            return;
        }
    }
}

impl Workers for Vec<Candidate> {
    fn visit(&self, keys: Keys, visit: &mut dyn FnMut(&Candidate) -> bool) {
        visit_sorted(self, keys, visit);
    }
}

impl<const N: usize> Workers for [Candidate; N] {
    fn visit(&self, keys: Keys, visit: &mut dyn FnMut(&Candidate) -> bool) {
        visit_sorted(self, keys, visit);
    }
}

type Fits<'a> = dyn Fn(&Candidate) -> bool + 'a;

/// The most connections in a row that round-robin gives one worker in one pass.
pub const MAX_TURN: usize = 4;
/// The most workers round-robin passes over for one connection because they are ahead.
const MAX_PASS_OVERS: usize = 4;

/// One pass over connections that were accepted together.
///
/// With many more workers than CPUs nearly every worker is asleep when its turn comes, and
/// waking a sleeping process is most of what a handoff costs the primary. So round-robin
/// gives the connections of a pass to no more workers than there are CPUs: a few in a row
/// to each (no more than workers per CPU, [`MAX_TURN`] at most), which go in one write and
/// cost one wake-up.
///
/// A worker that took connections ahead of its turns is passed over when its turn comes
/// again, once per connection it is ahead (deficit round-robin), so the shares stay even
/// whatever the sizes of the passes. Passing over is bounded per connection and paid for by
/// the connections taken ahead, so a connection still costs O(1).
#[derive(Debug)]
pub struct Pass {
    length: usize,
    /// The worker whose turn it is, and how many connections it has taken in it.
    current: Option<(u64, usize)>,
    /// The worker round-robin chose last, until it is handed the connection.
    offered: Option<u64>,
    /// How far each worker got ahead in this pass: +1 per connection taken ahead of its
    /// turn, -1 per time it was passed over. Added to `Candidate::ahead` after the pass.
    pub ahead: HashMap<u64, i32>,
    /// Round-robin in strict turns: no worker is passed over for being busy.
    strict: bool,
}

impl Pass {
    /// A pass over `waiting` connections to `workers` workers, with `cpus` CPUs to run them.
    /// A turn is no longer than there are workers per CPU: with no more workers than CPUs,
    /// every worker may run at once, and plain round-robin spreads a batch best.
    pub fn new(waiting: usize, workers: usize, cpus: usize) -> Pass {
        let cpus = cpus.max(1);
        let per_cpu = workers.div_ceil(cpus);
        Pass {
            length: waiting.div_ceil(cpus).min(per_cpu).clamp(1, MAX_TURN),
            current: None,
            offered: None,
            ahead: HashMap::new(),
            strict: false,
        }
    }

    /// Round-robin in strict turns (`Config::strict_turns`): the next worker with room takes
    /// the connection even when a later one is idle and it is not.
    pub fn strict_turns(mut self, strict: bool) -> Pass {
        self.strict = strict;
        self
    }

    /// Chooses a worker for the next connection of the pass. `cursor` is the key last chosen
    /// by round-robin; `allowed` narrows the workers (those that asked for the listener, for
    /// one asked for at run time, and not those that just refused a connection).
    pub fn choose(
        &mut self,
        mode: Dispatch,
        workers: &dyn Workers,
        cursor: u64,
        peer: Option<IpAddr>,
        slots: &dyn SlotState,
        allowed: &dyn Fn(u64) -> bool,
    ) -> Choice {
        let fits = |c: &Candidate| c.has_room && allowed(c.key);
        self.offered = None;
        match (mode, peer) {
            (Dispatch::Sticky, Some(ip)) => sticky(workers, ip, slots, &fits),
            (Dispatch::LeastConnections, _) => least_connections(workers, &fits),
            // Sticky without an IP address (a Unix socket) falls back to round-robin.
            _ => self.round_robin(workers, cursor, &fits),
        }
    }

    /// Round-robin in turns: stays with the worker whose turn it is until it has taken its
    /// turn or has no room, and passes over workers that are ahead.
    fn round_robin(&mut self, workers: &dyn Workers, cursor: u64, fits: &Fits) -> Choice {
        let mut key = None;
        if let Some((current, _)) = self.current.filter(|&(_, n)| n < self.length) {
            let whose = (Bound::Included(current), Bound::Included(current));
            workers.visit(whose, &mut |c| {
                key = fits(c).then_some(c.key);
                true
            });
        }
        let mut cursor = cursor;
        let mut passed_over = 0;
        while key.is_none() {
            let (Some(c), skipped) = round_robin(workers, cursor, fits, self.strict) else {
                return Choice::Wait;
            };
            // A worker ahead that was passed over for being busier has given back one of the
            // connections it took ahead, as if passed over for being ahead.
            for s in skipped.into_iter().flatten() {
                let in_pass = self.ahead.entry(s.key).or_default();
                if i64::from(s.ahead) + i64::from(*in_pass) > 0 {
                    *in_pass -= 1;
                }
            }
            let in_pass = self.ahead.get(&c.key).copied().unwrap_or(0);
            if passed_over == MAX_PASS_OVERS || i64::from(c.ahead) + i64::from(in_pass) <= 0 {
                key = Some(c.key);
            } else {
                *self.ahead.entry(c.key).or_default() -= 1;
                passed_over += 1;
                cursor = c.key;
            }
        }
        self.offered = key;
        key.map_or(Choice::Wait, Choice::Worker)
    }

    /// The connection went to worker `key`, the one chosen last. Only a round-robin choice
    /// counts towards a turn.
    pub fn handed(&mut self, key: u64) {
        if self.offered.take() != Some(key) {
            return;
        }
        self.current = match self.current {
            Some((last, n)) if last == key && n < self.length => {
                *self.ahead.entry(key).or_default() += 1;
                Some((key, n + 1))
            }
            _ => Some((key, 1)),
        };
    }
}

/// How many workers round-robin looks at for one that is idle before it settles for the
/// next with room: a bound, so that a connection costs the same at any number of workers.
const LOOKAHEAD: usize = 4;

/// The next worker after the cursor, wrapping around. Among the next `LOOKAHEAD` it prefers
/// one that has taken every connection it was handed, and when none has, the one with the
/// fewest waiting (the first of them in turn): a worker whose event loop is busy elsewhere
/// (it has not read its last handoffs yet) is passed over rather than given a longer queue,
/// as the kernel passes over a process that is not waiting in `accept`. With `strict`, the
/// next with room, whatever it is doing. Also returns the workers with room that came before
/// the chosen one in turn (passed over for being busier). No allocation: this runs per
/// connection.
fn round_robin(
    workers: &dyn Workers,
    cursor: u64,
    fits: &Fits,
    strict: bool,
) -> (Option<Candidate>, Passed) {
    let after = (Bound::Excluded(cursor), Bound::Unbounded);
    let before = (Bound::Unbounded, Bound::Included(cursor));
    let (mut seen, mut fitting, mut n): (usize, Passed, usize) = (0, [None; LOOKAHEAD], 0);
    let mut last_idle = false;
    for keys in [after, before] {
        if strict {
            break;
        }
        workers.visit(keys, &mut |c| {
            seen += 1;
            if fits(c) {
                fitting[n] = Some(*c);
                n += 1;
                last_idle = c.unacked == 0;
            }
            last_idle || seen >= LOOKAHEAD
        });
        if last_idle || seen >= LOOKAHEAD {
            break;
        }
    }
    // The first of those with the fewest waiting.
    let least = (0..n).min_by_key(|&i| (fitting[i].map_or(0, |c| c.unacked), i));
    if let Some(i) = least {
        let chosen = fitting[i];
        fitting[i..].fill(None);
        return (chosen, fitting);
    }
    let first_fit = |keys: Keys| {
        let mut found = None;
        workers.visit(keys, &mut |c| {
            if fits(c) {
                found = Some(*c);
            }
            found.is_some()
        });
        found
    };
    (
        first_fit(after).or_else(|| first_fit(before)),
        [None; LOOKAHEAD],
    )
}

/// The workers with room round-robin looked at before the one it chose.
type Passed = [Option<Candidate>; LOOKAHEAD];

const ALL: Keys = (Bound::Unbounded, Bound::Unbounded);

fn least_connections(workers: &dyn Workers, fits: &Fits) -> Choice {
    let mut best: Option<(usize, u64)> = None;
    workers.visit(ALL, &mut |c| {
        let load = (c.active + c.unacked, c.key);
        if fits(c) && best.is_none_or(|b| load < b) {
            best = Some(load);
        }
        false
    });
    best.map_or(Choice::Wait, |(_, key)| Choice::Worker(key))
}

/// Rendezvous hashing over slots: a client keeps its slot across restarts of that slot, and
/// scaling moves only the clients of the slots added or removed.
fn sticky(workers: &dyn Workers, ip: IpAddr, slots: &dyn SlotState, fits: &Fits) -> Choice {
    let client = hash_ip(ip);
    let mut ranked: Vec<(u64, u32)> = (0..slots.slot_count())
        .map(|s| (mix(client ^ mix(u64::from(s) + 1)), s))
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    for (_, slot) in ranked {
        if slots.slot_down(slot) {
            continue;
        }
        // The slot's newest worker with room; a draining one has none.
        let mut newest = None;
        workers.visit(ALL, &mut |c| {
            if c.slot == slot && fits(c) {
                newest = Some(c.key);
            }
            false
        });
        return newest.map_or(Choice::Wait, Choice::Worker);
    }
    Choice::Wait
}

fn hash_ip(ip: IpAddr) -> u64 {
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a
            .to_ipv4_mapped()
            .map_or_else(|| a.octets().to_vec(), |v4| v4.octets().to_vec()),
    };
    // FNV-1a: stable across runs and versions, which sticky sessions need.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A 64-bit finalizer (SplitMix64) to spread the hash over slots.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Slots(u32, Vec<u32>);
    impl SlotState for Slots {
        fn slot_count(&self) -> u32 {
            self.0
        }
        fn slot_down(&self, slot: u32) -> bool {
            self.1.contains(&slot)
        }
    }

    fn cand(key: u64, slot: u32, active: usize, has_room: bool) -> Candidate {
        Candidate {
            key,
            slot,
            unacked: 0,
            active,
            has_room,
            ahead: 0,
        }
    }

    /// One connection on its own: a pass of one.
    fn choose(
        mode: Dispatch,
        workers: &dyn Workers,
        cursor: u64,
        peer: Option<IpAddr>,
        slots: &dyn SlotState,
        allowed: &dyn Fn(u64) -> bool,
    ) -> Choice {
        Pass::new(1, 1, 1).choose(mode, workers, cursor, peer, slots, allowed)
    }

    fn worker(c: Choice) -> u64 {
        match c {
            Choice::Worker(k) => k,
            Choice::Wait => panic!("expected a worker"),
        }
    }

    #[test]
    fn round_robin_cycles_and_skips_full_workers() {
        let c = [
            cand(1, 0, 0, true),
            cand(2, 1, 0, false),
            cand(3, 2, 0, true),
        ];
        let s = Slots(3, vec![]);
        let mut cursor = 0;
        let mut seen = Vec::new();
        for _ in 0..4 {
            cursor = worker(choose(Dispatch::RoundRobin, &c, cursor, None, &s, &|_| {
                true
            }));
            seen.push(cursor);
        }
        assert_eq!(seen, vec![1, 3, 1, 3]);
        let full = [cand(1, 0, 0, false)];
        assert_eq!(
            choose(Dispatch::RoundRobin, &full, 0, None, &s, &|_| true),
            Choice::Wait
        );
    }

    /// Counts the workers round-robin looks at.
    struct Counting(Vec<Candidate>, std::cell::Cell<usize>);
    impl Workers for Counting {
        fn visit(&self, keys: Keys, visit: &mut dyn FnMut(&Candidate) -> bool) {
            self.0.visit(keys, &mut |c| {
                self.1.set(self.1.get() + 1);
                visit(c)
            });
        }
    }

    #[test]
    fn round_robin_looks_at_one_worker_per_connection_however_many_there_are() {
        for n in [2u64, 64, 4096] {
            let w = Counting((1..=n).map(|k| cand(k, 0, 0, true)).collect(), 0.into());
            let mut cursor = 0;
            for _ in 0..3 * n {
                cursor = worker(choose(
                    Dispatch::RoundRobin,
                    &w,
                    cursor,
                    None,
                    &Slots(1, vec![]),
                    &|_| true,
                ));
            }
            assert_eq!(w.1.get() as u64, 3 * n, "{n} workers");
        }
    }

    #[test]
    fn round_robin_passes_over_a_worker_that_has_not_taken_its_last_connection() {
        let busy = |key, unacked| Candidate {
            unacked,
            ..cand(key, 0, 0, true)
        };
        let s = Slots(3, vec![]);
        let all = |_| true;
        // Worker 2 has not read its last handoff: 3 is next.
        let c = [busy(1, 0), busy(2, 1), busy(3, 0)];
        assert_eq!(
            choose(Dispatch::RoundRobin, &c, 1, None, &s, &all),
            Choice::Worker(3)
        );
        // Every worker has as many waiting: plain round-robin.
        let c = [busy(1, 1), busy(2, 1), busy(3, 1)];
        assert_eq!(
            choose(Dispatch::RoundRobin, &c, 1, None, &s, &all),
            Choice::Worker(2)
        );
        // The look-ahead is bounded: an idle worker further on is not searched for.
        let mut c: Vec<Candidate> = (1..=10).map(|k| busy(k, 1)).collect();
        c[9].unacked = 0;
        assert_eq!(
            choose(Dispatch::RoundRobin, &c, 1, None, &s, &all),
            Choice::Worker(2)
        );
    }

    #[test]
    fn round_robin_gives_a_connection_to_the_worker_with_the_fewest_waiting_when_none_is_idle() {
        let busy = |key, unacked| Candidate {
            unacked,
            ..cand(key, 0, 0, true)
        };
        let s = Slots(4, vec![]);
        let all = |_| true;
        // 2 is next but has 3 waiting; 4 has 1, 3 has 2: 4 (the fewest, within the look-ahead).
        let c = [busy(1, 1), busy(2, 3), busy(3, 2), busy(4, 1)];
        assert_eq!(
            choose(Dispatch::RoundRobin, &c, 1, None, &s, &all),
            Choice::Worker(4)
        );
        // Ties go to the first in turn: 3 and 1 both have 1 waiting after 2.
        let c = [busy(1, 1), busy(2, 3), busy(3, 1), busy(4, 2)];
        assert_eq!(
            choose(Dispatch::RoundRobin, &c, 1, None, &s, &all),
            Choice::Worker(3)
        );
    }

    #[test]
    fn passing_over_busy_workers_keeps_the_shares_even_when_each_is_busy_as_often() {
        let (mut w, mut cursor) = (workers(3), 0);
        let mut count = [0usize; 3];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..6000 {
            // Each connection finds one worker, drawn at random, with connections waiting.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            for (i, c) in w.iter_mut().enumerate() {
                (c.unacked, c.has_room) = (usize::from(i as u64 == seed % 3) * 2, true);
            }
            for key in pass(&mut w, &mut cursor, 1, 2) {
                count[key as usize - 1] += 1;
            }
        }
        let (lo, hi) = (count.iter().min().unwrap(), count.iter().max().unwrap());
        assert!(*hi as f64 / *lo as f64 <= 1.05, "{count:?}");
    }

    #[test]
    fn in_strict_turns_a_busy_worker_takes_its_turn() {
        let busy = |key, unacked| Candidate {
            unacked,
            ..cand(key, 0, 0, true)
        };
        let s = Slots(3, vec![]);
        let c = [busy(1, 0), busy(2, 5), busy(3, 0)];
        let choice = Pass::new(1, 3, 1).strict_turns(true).choose(
            Dispatch::RoundRobin,
            &c,
            1,
            None,
            &s,
            &|_| true,
        );
        assert_eq!(choice, Choice::Worker(2));
    }

    /// Hands `count` connections accepted together as the primary does: the chosen worker
    /// takes the connection (one more unacknowledged), the cursor moves to it, and what the
    /// pass says about workers ahead is kept.
    fn pass(workers: &mut [Candidate], cursor: &mut u64, count: usize, cpus: usize) -> Vec<u64> {
        let mut pass = Pass::new(count, workers.len(), cpus);
        let mut got = Vec::new();
        for _ in 0..count {
            let list = workers.to_vec();
            let key = worker(pass.choose(
                Dispatch::RoundRobin,
                &list,
                *cursor,
                None,
                &Slots(1, vec![]),
                &|_| true,
            ));
            pass.handed(key);
            *cursor = key;
            let c = workers.iter_mut().find(|c| c.key == key).unwrap();
            c.unacked += 1;
            c.has_room = c.unacked < 8;
            got.push(key);
        }
        for c in workers.iter_mut() {
            c.ahead = c
                .ahead
                .saturating_add_signed(pass.ahead.get(&c.key).copied().unwrap_or(0));
        }
        got
    }

    fn workers(n: u64) -> Vec<Candidate> {
        (1..=n).map(|k| cand(k, 0, 0, true)).collect()
    }

    #[test]
    fn a_pass_wakes_no_more_workers_than_there_are_cpus() {
        let (mut w, mut cursor) = (workers(64), 0);
        // Six connections accepted together on two CPUs: two workers take three each.
        assert_eq!(pass(&mut w, &mut cursor, 6, 2), [1, 1, 1, 2, 2, 2]);
        assert_eq!((w[0].ahead, w[1].ahead), (2, 2));
        // One at a time is plain round-robin. A turn is MAX_TURN at most.
        assert_eq!(pass(&mut w, &mut cursor, 1, 2), [3]);
        assert_eq!(
            pass(&mut w, &mut cursor, 20, 2),
            [4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 8]
        );
        // A worker without room ends its turn early.
        w[8].has_room = false;
        assert_eq!(pass(&mut w, &mut cursor, 4, 2), [10, 10, 11, 11]);
        // As many CPUs as connections: one each.
        assert_eq!(pass(&mut w, &mut cursor, 3, 8), [12, 13, 14]);
        // No more workers than CPUs: every worker may run at once, plain round-robin.
        let (mut w, mut cursor) = (workers(2), 0);
        assert_eq!(pass(&mut w, &mut cursor, 6, 2), [1, 2, 1, 2, 1, 2]);
        // Three workers on two CPUs: turns of two at most.
        let (mut w, mut cursor) = (workers(3), 0);
        assert_eq!(pass(&mut w, &mut cursor, 6, 2), [1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn workers_ahead_are_passed_over_until_the_shares_are_even() {
        let (mut w, mut cursor) = (workers(3), 0);
        assert_eq!(pass(&mut w, &mut cursor, 4, 2), [1, 1, 2, 2]);
        // 1 and 2 are one ahead each: 3 takes the next turns, then plain round-robin.
        assert_eq!(pass(&mut w, &mut cursor, 1, 2), [3]);
        assert_eq!(pass(&mut w, &mut cursor, 1, 2), [3]);
        assert_eq!(pass(&mut w, &mut cursor, 3, 3), [1, 2, 3]);
        assert!(w.iter().all(|c| c.ahead == 0), "{w:?}");
    }

    #[test]
    fn passes_of_every_size_keep_the_shares_even() {
        for n in [2u64, 16, 64] {
            let (mut w, mut cursor) = (workers(n), 0);
            let mut count = vec![0usize; n as usize];
            for size in (0..4000).map(|i| 1 + i * 7 % 11) {
                for c in w.iter_mut() {
                    (c.unacked, c.has_room) = (0, true); // acknowledged between passes
                }
                for key in pass(&mut w, &mut cursor, size, 2) {
                    count[key as usize - 1] += 1;
                }
            }
            let (lo, hi) = (count.iter().min().unwrap(), count.iter().max().unwrap());
            assert!(hi - lo <= 2 * MAX_TURN, "{n} workers: {count:?}");
        }
    }

    #[test]
    fn turns_are_for_round_robin_only() {
        let c = [cand(1, 0, 0, true), cand(2, 1, 0, true)];
        let s = Slots(2, vec![]);
        let mut pass = Pass::new(8, 2, 1);
        assert_eq!(
            pass.choose(Dispatch::RoundRobin, &c, 0, None, &s, &|_| true),
            Choice::Worker(1)
        );
        pass.handed(1);
        // Least-connections and sticky decide every connection afresh, and what they hand
        // does not start a turn.
        let lc = [cand(1, 0, 3, true), cand(2, 1, 0, true)];
        assert_eq!(
            pass.choose(Dispatch::LeastConnections, &lc, 1, None, &s, &|_| true),
            Choice::Worker(2)
        );
        pass.handed(2);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            pass.choose(Dispatch::Sticky, &c, 1, Some(ip), &s, &|_| true),
            choose(Dispatch::Sticky, &c, 1, Some(ip), &s, &|_| true)
        );
        // A worker not allowed for this listener is passed over.
        assert_eq!(
            pass.choose(Dispatch::RoundRobin, &c, 1, None, &s, &|k| k != 1),
            Choice::Worker(2)
        );
        assert_eq!(
            pass.choose(Dispatch::RoundRobin, &c, 1, None, &s, &|_| true),
            Choice::Worker(1)
        );
    }

    #[test]
    fn only_allowed_workers_are_chosen() {
        let c = [
            cand(1, 0, 0, true),
            cand(2, 1, 0, true),
            cand(3, 2, 0, true),
        ];
        let s = Slots(3, vec![]);
        let only_3 = |k: u64| k == 3;
        assert_eq!(
            choose(Dispatch::RoundRobin, &c, 0, None, &s, &only_3),
            Choice::Worker(3)
        );
        assert_eq!(
            choose(Dispatch::LeastConnections, &c, 0, None, &s, &only_3),
            Choice::Worker(3)
        );
        assert_eq!(
            choose(Dispatch::RoundRobin, &c, 0, None, &s, &|_| false),
            Choice::Wait
        );
    }

    #[test]
    fn least_connections_picks_the_idlest_with_room() {
        let c = [
            cand(1, 0, 5, true),
            cand(2, 1, 1, false),
            cand(3, 2, 2, true),
        ];
        assert_eq!(
            worker(choose(
                Dispatch::LeastConnections,
                &c,
                0,
                None,
                &Slots(3, vec![]),
                &|_| true
            )),
            3
        );
    }

    #[test]
    fn sticky_keeps_a_client_on_its_slot_and_waits_for_it() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let s = Slots(4, vec![]);
        let all: Vec<Candidate> = (0..4).map(|i| cand(i as u64 + 1, i, 0, true)).collect();
        let first = worker(choose(Dispatch::Sticky, &all, 0, Some(ip), &s, &|_| true));
        for _ in 0..10 {
            assert_eq!(
                worker(choose(Dispatch::Sticky, &all, first, Some(ip), &s, &|_| {
                    true
                })),
                first
            );
        }
        // Its slot is restarting: no candidate for it, but the slot is not down: wait.
        let without: Vec<Candidate> = all.iter().copied().filter(|c| c.key != first).collect();
        assert_eq!(
            choose(Dispatch::Sticky, &without, 0, Some(ip), &s, &|_| true),
            Choice::Wait
        );
        // The replacement (a new key, same slot) gets the client.
        let slot = all[(first - 1) as usize].slot;
        let mut back = without.clone();
        back.push(cand(99, slot, 0, true));
        assert_eq!(
            worker(choose(Dispatch::Sticky, &back, 0, Some(ip), &s, &|_| true)),
            99
        );
        // A slot that is down for good hands its clients to the next slot in their ranking.
        let down = Slots(4, vec![slot]);
        assert_ne!(
            worker(choose(
                Dispatch::Sticky,
                &without,
                0,
                Some(ip),
                &down,
                &|_| true
            )),
            99
        );
    }

    #[test]
    fn sticky_moves_few_clients_when_scaling() {
        let place = |n: u32, ip: u32| {
            let c: Vec<Candidate> = (0..n).map(|i| cand(i as u64, i, 0, true)).collect();
            worker(choose(
                Dispatch::Sticky,
                &c,
                0,
                Some(IpAddr::from(ip.to_be_bytes())),
                &Slots(n, vec![]),
                &|_| true,
            ))
        };
        let clients: Vec<u32> = (0..2000).map(|i| 0x0a00_0000 + i * 7919).collect();
        let before: HashMap<u32, u64> = clients.iter().map(|&ip| (ip, place(8, ip))).collect();
        let moved = clients
            .iter()
            .filter(|&&ip| place(9, ip) != before[&ip])
            .count();
        // Ideal: 1/9 of the clients move (to the new slot), about 222 of 2000.
        assert!(
            moved < 320,
            "{moved} of 2000 clients moved when adding one slot to eight"
        );
        let counts = clients.iter().fold(HashMap::new(), |mut m, ip| {
            *m.entry(before[ip]).or_insert(0) += 1;
            m
        });
        assert!(
            counts.values().all(|&n| n > 150 && n < 350),
            "uneven spread: {counts:?}"
        );
    }
}
