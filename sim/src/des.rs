//! The discrete-event engine: a 4-ary min-heap of events keyed by (integer nanoseconds, sequence
//! number). Integer time keeps runs exact and reproducible; the sequence number makes events at
//! the same instant come out in the order they were scheduled, so ties never depend on the heap.

/// Nanoseconds of virtual time since the start of the run.
pub type Nanos = u64;

pub const NANOS_PER_S: f64 = 1e9;

pub fn secs_to_nanos(s: f64) -> Nanos {
    // Adding a half and truncating rounds a positive value without a libm call, which showed
    // up in profiles: every sampled time goes through here.
    if s <= 0.0 {
        0
    } else {
        (s * NANOS_PER_S + 0.5) as Nanos
    }
}

pub fn nanos_to_secs(n: Nanos) -> f64 {
    n as f64 / NANOS_PER_S
}

/// Children per node. Four halves the depth of a binary heap, and with keys stored apart from
/// events the four sibling keys share one cache line.
const ARITY: usize = 4;

/// Pending events, earliest first, with a bound on how many may wait at once.
///
/// `keys[i]` holds the time in its high 64 bits and the sequence number in the low 64, so one
/// comparison orders both; `events[i]` is the event it belongs to.
pub struct EventQueue<E> {
    keys: Vec<u128>,
    events: Vec<E>,
    seq: u64,
    now: Nanos,
    limit: usize,
}

/// The queue held more events than its bound: a scenario generating unbounded work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub limit: usize,
}

/// The smaller of two (key, index) pairs, written so the compiler can use conditional moves:
/// with random keys a branch here mispredicts half the time, and popping is the engine's
/// hottest loop.
#[inline(always)]
fn smaller(a: (u128, usize), b: (u128, usize)) -> (u128, usize) {
    let take_b = b.0 < a.0;
    (
        if take_b { b.0 } else { a.0 },
        if take_b { b.1 } else { a.1 },
    )
}

impl<E: Copy> EventQueue<E> {
    pub fn with_limit(limit: usize) -> EventQueue<E> {
        EventQueue {
            keys: Vec::new(),
            events: Vec::new(),
            seq: 0,
            now: 0,
            limit,
        }
    }

    pub fn now(&self) -> Nanos {
        self.now
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Schedules `event` at `at`, or now if `at` is in the past.
    pub fn schedule(&mut self, at: Nanos, event: E) -> Result<(), Overflow> {
        if self.keys.len() >= self.limit {
            return Err(Overflow { limit: self.limit });
        }
        let key = (u128::from(at.max(self.now)) << 64) | u128::from(self.seq);
        self.seq += 1;
        // Sift up by moving parents down into the hole, then drop the entry in.
        self.keys.push(key);
        self.events.push(event);
        let mut hole = self.keys.len() - 1;
        while hole > 0 {
            let parent = (hole - 1) / ARITY;
            if self.keys[parent] <= key {
                break;
            }
            self.keys[hole] = self.keys[parent];
            self.events[hole] = self.events[parent];
            hole = parent;
        }
        self.keys[hole] = key;
        self.events[hole] = event;
        Ok(())
    }

    /// The next event if it is due at or before `until`; advances the clock to it.
    pub fn pop_until(&mut self, until: Nanos) -> Option<(Nanos, E)> {
        let first_key = *self.keys.first()?;
        let at = (first_key >> 64) as Nanos;
        if at > until {
            return None;
        }
        let first = self.events[0];
        let (Some(last_key), Some(last)) = (self.keys.pop(), self.events.pop()) else {
            return None;
        };
        let n = self.keys.len();
        if n > 0 {
            // Sift the last entry down from the root, moving the smallest child up each level.
            let keys = &mut self.keys[..n];
            let mut hole = 0;
            loop {
                let c = ARITY * hole + 1;
                let min = if c + 3 < n {
                    let a = smaller((keys[c], c), (keys[c + 1], c + 1));
                    let b = smaller((keys[c + 2], c + 2), (keys[c + 3], c + 3));
                    smaller(a, b)
                } else if c < n {
                    (c + 1..n).fold((keys[c], c), |m, i| smaller(m, (keys[i], i)))
                } else {
                    break;
                };
                if min.0 >= last_key {
                    break;
                }
                keys[hole] = min.0;
                self.events[hole] = self.events[min.1];
                hole = min.1;
            }
            keys[hole] = last_key;
            self.events[hole] = last;
        }
        self.now = at;
        Some((at, first))
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
    fn pops_in_time_then_schedule_order_like_a_sort() {
        let mut rng = crate::rng::Rng::stream(5, "des");
        let mut q = EventQueue::with_limit(100_000);
        let mut expected = Vec::new();
        for i in 0..20_000u32 {
            let at = rng.below(5_000);
            q.schedule(at, i).expect("room");
            // An event scheduled in the past runs now.
            expected.push((at.max(q.now()), i));
            // Interleave pops with pushes as the simulator does.
            if i % 3 == 0 {
                expected.sort();
                let (at0, e0) = expected.remove(0);
                assert_eq!(q.pop_until(u64::MAX), Some((at0, e0)));
            }
        }
        expected.sort();
        let rest: Vec<(u64, u32)> = std::iter::from_fn(|| q.pop_until(u64::MAX)).collect();
        assert_eq!(rest, expected);
    }

    #[test]
    fn the_bound_is_enforced() {
        let mut q = EventQueue::with_limit(2);
        q.schedule(1, ()).expect("room");
        q.schedule(2, ()).expect("room");
        assert_eq!(q.schedule(3, ()), Err(Overflow { limit: 2 }));
    }
}
