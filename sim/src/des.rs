//! The discrete-event engine: a binary heap of events keyed by (integer nanoseconds, sequence
//! number). Integer time keeps runs exact and reproducible; the sequence number makes events at
//! the same instant come out in the order they were scheduled, so ties never depend on the heap.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Nanoseconds of virtual time since the start of the run.
pub type Nanos = u64;

pub const NANOS_PER_S: f64 = 1e9;

pub fn secs_to_nanos(s: f64) -> Nanos {
    if s <= 0.0 {
        0
    } else {
        (s * NANOS_PER_S).round() as Nanos
    }
}

pub fn nanos_to_secs(n: Nanos) -> f64 {
    n as f64 / NANOS_PER_S
}

struct Entry<E> {
    at: Nanos,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Entry<E> {
    // Reversed: BinaryHeap is a max-heap and the earliest event must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Pending events, earliest first, with a bound on how many may wait at once.
pub struct EventQueue<E> {
    heap: BinaryHeap<Entry<E>>,
    seq: u64,
    now: Nanos,
    limit: usize,
}

/// The queue held more events than its bound: a scenario generating unbounded work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub limit: usize,
}

impl<E> EventQueue<E> {
    pub fn with_limit(limit: usize) -> EventQueue<E> {
        EventQueue {
            heap: BinaryHeap::new(),
            seq: 0,
            now: 0,
            limit,
        }
    }

    pub fn now(&self) -> Nanos {
        self.now
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Schedules `event` at `at`, or now if `at` is in the past.
    pub fn schedule(&mut self, at: Nanos, event: E) -> Result<(), Overflow> {
        if self.heap.len() >= self.limit {
            return Err(Overflow { limit: self.limit });
        }
        let seq = self.seq;
        self.seq += 1;
        self.heap.push(Entry {
            at: at.max(self.now),
            seq,
            event,
        });
        Ok(())
    }

    /// The next event if it is due at or before `until`; advances the clock to it.
    pub fn pop_until(&mut self, until: Nanos) -> Option<(Nanos, E)> {
        if self.heap.peek()?.at > until {
            return None;
        }
        let e = self.heap.pop()?;
        self.now = e.at;
        Some((e.at, e.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_ties_in_schedule_order() {
        let mut q = EventQueue::with_limit(10);
        for (at, e) in [(30, 'c'), (10, 'a'), (30, 'd'), (20, 'b'), (10, 'x')] {
            q.schedule(at, e).expect("room");
        }
        let order: Vec<char> = std::iter::from_fn(|| q.pop_until(25).map(|(_, e)| e)).collect();
        assert_eq!(order, vec!['a', 'x', 'b']);
        assert_eq!(q.now(), 20);
        q.schedule(5, 'p').expect("room");
        assert_eq!(
            q.pop_until(u64::MAX),
            Some((20, 'p')),
            "the past is clamped to now"
        );
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn the_bound_is_enforced() {
        let mut q = EventQueue::with_limit(2);
        q.schedule(1, ()).expect("room");
        q.schedule(2, ()).expect("room");
        assert_eq!(q.schedule(3, ()), Err(Overflow { limit: 2 }));
    }
}
