//! The event queue: virtual time that jumps to the earliest pending event.
//!
//! Events are ordered by `(time, insertion order)`: two events at the same
//! millisecond run in the order they were scheduled, so a run is a pure
//! function of its inputs. The queue is a timing wheel of one-millisecond
//! slots covering the next [`HORIZON_MS`] (push and pop are O(1): a dense
//! mesh has tens of events per millisecond), with a binary heap for events
//! further out (churn sessions, job arrivals), moved into the wheel as the
//! clock approaches them. When the wheel is empty the clock jumps straight
//! to the heap's earliest event.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Milliseconds the wheel covers (a power of two).
pub const HORIZON_MS: u64 = 1 << 16;
const MASK: u64 = HORIZON_MS - 1;

struct Far<E> {
    at: u64,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Far<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Far<E> {}
impl<E> PartialOrd for Far<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Far<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap; we want the earliest first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A deterministic event queue over virtual milliseconds.
pub struct EventQueue<E> {
    slots: Vec<Vec<E>>,
    /// The current time: the slot being drained.
    now: u64,
    /// Events of the current slot being taken, in order.
    current: std::vec::IntoIter<E>,
    /// Events in the wheel (not yet taken), `current` included.
    in_wheel: usize,
    far: BinaryHeap<Far<E>>,
    seq: u64,
    popped: u64,
}

impl<E> EventQueue<E> {
    /// An empty queue whose clock reads `start`.
    pub fn new(start: u64) -> Self {
        EventQueue {
            slots: (0..HORIZON_MS).map(|_| Vec::new()).collect(),
            now: start,
            current: Vec::new().into_iter(),
            in_wheel: 0,
            far: BinaryHeap::new(),
            seq: 0,
            popped: 0,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Events taken so far.
    pub fn popped(&self) -> u64 {
        self.popped
    }

    /// Events pending.
    pub fn len(&self) -> usize {
        self.in_wheel + self.far.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Schedules `event` at `at` (an earlier time runs now, after what is queued now).
    pub fn push(&mut self, at: u64, event: E) {
        let at = at.max(self.now);
        if at < self.now + HORIZON_MS {
            self.slot_mut(at).push(event);
            self.in_wheel += 1;
        } else {
            self.seq += 1;
            self.far.push(Far {
                at,
                seq: self.seq,
                event,
            });
        }
    }

    fn slot_mut(&mut self, at: u64) -> &mut Vec<E> {
        // The index is masked to the wheel's length: always in bounds.
        let i = (at & MASK) as usize;
        &mut self.slots[i]
    }

    /// Moves far events that entered the horizon into the wheel, in order.
    fn migrate(&mut self) {
        while self
            .far
            .peek()
            .is_some_and(|f| f.at < self.now + HORIZON_MS)
        {
            if let Some(f) = self.far.pop() {
                self.slot_mut(f.at).push(f.event);
                self.in_wheel += 1;
            }
        }
    }

    /// Takes the next event (by time, then scheduling order), advancing the
    /// clock to it; `None` when nothing is pending or the next event is
    /// after `until`.
    pub fn pop(&mut self, until: u64) -> Option<(u64, E)> {
        loop {
            if let Some(e) = self.current.next() {
                self.in_wheel -= 1;
                self.popped += 1;
                return Some((self.now, e));
            }
            let now = self.now;
            // Events scheduled for `now` while it was being drained.
            let slot = self.slot_mut(now);
            if !slot.is_empty() {
                self.current = std::mem::take(slot).into_iter();
                continue;
            }
            if self.in_wheel == 0 {
                let next = self.far.peek().map(|f| f.at)?;
                if next > until {
                    return None;
                }
                self.now = next;
                self.migrate();
                continue;
            }
            if now + 1 > until {
                return None;
            }
            self.now = now + 1;
            self.migrate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_then_insertion_order() {
        let mut q = EventQueue::new(1_000);
        q.push(1_005, "c");
        q.push(1_001, "a");
        q.push(1_005, "d");
        q.push(1_000 + HORIZON_MS * 3, "far2");
        q.push(1_000 + HORIZON_MS * 3, "far3");
        q.push(1_000 + HORIZON_MS * 2, "far1");
        q.push(1_001, "b");
        let mut out = Vec::new();
        while let Some((t, e)) = q.pop(u64::MAX) {
            out.push((t, e));
            if e == "a" {
                // Scheduled while running at 1001: after b.
                q.push(1_001, "a2");
                // An earlier time runs now.
                q.push(10, "late");
            }
        }
        let names: Vec<&str> = out.iter().map(|(_, e)| *e).collect();
        assert_eq!(
            names,
            ["a", "b", "a2", "late", "c", "d", "far1", "far2", "far3"]
        );
        assert_eq!(out[6].0, 1_000 + HORIZON_MS * 2);
        assert!(q.is_empty());
    }

    #[test]
    fn stops_at_until() {
        let mut q = EventQueue::new(0);
        q.push(5, 1);
        q.push(50, 2);
        q.push(HORIZON_MS * 5, 3);
        assert_eq!(q.pop(10), Some((5, 1)));
        assert_eq!(q.pop(10), None);
        assert_eq!(q.pop(HORIZON_MS), Some((50, 2)));
        assert_eq!(q.pop(HORIZON_MS), None);
        assert_eq!(q.pop(u64::MAX), Some((HORIZON_MS * 5, 3)));
        assert_eq!(q.len(), 0);
    }
}
