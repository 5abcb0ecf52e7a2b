//! The last lines of each worker's output, kept for `logs` (PM2-style history) and passed on
//! to clients that follow. Bounded: `LINES_PER_SLOT` lines of at most `MAX_LINE` bytes per
//! slot, for at most `MAX_SLOTS` slots.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Lines kept per worker slot.
pub const LINES_PER_SLOT: usize = 200;
/// Longer lines are cut (and marked so).
const MAX_LINE: usize = 4096;
/// Slots whose lines are kept; the lines of higher slots pass through to followers only.
const MAX_SLOTS: u32 = 1024;

#[derive(Clone, Debug)]
pub struct Line {
    pub seq: u64,
    pub slot: u32,
    pub pid: u32,
    /// 1 for stdout, 2 for stderr.
    pub stream: u8,
    pub text: String,
}

#[derive(Default)]
pub struct LogRing {
    slots: BTreeMap<u32, VecDeque<Line>>,
    /// The sequence number the next line gets.
    next: u64,
    /// The newest lines, for followers, whatever their slot (bounded like a slot's).
    recent: VecDeque<Line>,
}

/// The ring as the output pipes (which write) and the control server (which reads) share it;
/// both run on the loop thread, so the lock is never contended.
pub type Tap = Arc<Mutex<LogRing>>;

impl LogRing {
    pub fn push(&mut self, slot: u32, pid: u32, stream: u8, line: &[u8]) {
        let cut = line.len() > MAX_LINE;
        let mut text = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]).into_owned();
        if cut {
            text.push_str(" [cut]");
        }
        let l = Line {
            seq: self.next,
            slot,
            pid,
            stream,
            text,
        };
        self.next += 1;
        if slot < MAX_SLOTS {
            let q = self.slots.entry(slot).or_default();
            if q.len() == LINES_PER_SLOT {
                q.pop_front();
            }
            q.push_back(l.clone());
        }
        if self.recent.len() == LINES_PER_SLOT {
            self.recent.pop_front();
        }
        self.recent.push_back(l);
    }

    /// The sequence number the next line will get.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The last `n` lines of each slot, in the order they came.
    pub fn history(&self, n: usize) -> Vec<Line> {
        let mut all: Vec<Line> = self
            .slots
            .values()
            .flat_map(|q| q.iter().skip(q.len().saturating_sub(n)).cloned())
            .collect();
        all.sort_by_key(|l| l.seq);
        all
    }

    /// Lines from sequence number `from` on; and how many were lost (past the ring).
    pub fn since(&self, from: u64) -> (Vec<Line>, u64) {
        let first = self.recent.front().map_or(self.next, |l| l.seq);
        let lost = first.saturating_sub(from);
        let lines = self
            .recent
            .iter()
            .filter(|l| l.seq >= from)
            .cloned()
            .collect();
        (lines, lost)
    }

    /// Forgets slots beyond `desired` (scaled down).
    pub fn retain_slots(&mut self, desired: usize) {
        self.slots.retain(|&s, _| (s as usize) < desired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slot_keeps_its_last_lines_and_followers_see_what_they_missed() {
        let mut r = LogRing::default();
        for i in 0..(LINES_PER_SLOT + 5) {
            r.push(0, 10, 1, format!("a{i}").as_bytes());
        }
        r.push(1, 11, 2, b"b");
        let h = r.history(3);
        let texts: Vec<&str> = h.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["a202", "a203", "a204", "b"]);
        let (lines, lost) = r.since(0);
        assert_eq!(lines.len(), LINES_PER_SLOT);
        assert_eq!(lost, 6);
        r.push(0, 10, 1, &[b'x'; 5000]);
        assert!(r.history(1).last().unwrap().text.ends_with("[cut]"));
    }
}
