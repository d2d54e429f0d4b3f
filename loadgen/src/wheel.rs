//! The engine's timers: a wheel of 1 ms slots, with a heap for deadlines beyond its span.
//!
//! Every call and registration keeps one entry (its next deadline), and at thousands of calls a
//! second a binary heap's `pop` was the largest item of the generator's own CPU. The driver runs
//! on a 1 ms grid anyway, so a slot per millisecond costs nothing in precision: pushing is an
//! append, and finding what is due looks at the slots between the last look and now. An entry
//! never fires before its deadline: in the slot of the current millisecond only the entries
//! whose time has come are taken.
//!
//! Entries further out than the wheel's span (a registration refreshed in an hour, Timer B of a
//! slow transaction) wait in a heap and move into the wheel as it turns towards them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::engine::Nanos;

const SLOT_NS: Nanos = 1_000_000;
/// 4.096 s of 1 ms slots: retransmissions and typical hold times stay in the wheel.
const SLOTS: usize = 4096;
const MASK: u64 = SLOTS as u64 - 1;
const WORDS: usize = SLOTS / 64;

pub(crate) struct Wheel {
    slots: Vec<Vec<(Nanos, u32)>>,
    /// One bit per non-empty slot, to skip empty stretches in a few word reads.
    occupied: [u64; WORDS],
    /// Entries at or beyond `cursor + SLOTS` milliseconds when they were pushed.
    far: BinaryHeap<Reverse<(Nanos, u32)>>,
    /// The millisecond of the slot looked at next: every entry of an earlier millisecond has
    /// been taken. The wheel holds milliseconds `cursor .. cursor + SLOTS`.
    cursor: u64,
    len: usize,
}

impl Wheel {
    pub(crate) fn new() -> Wheel {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; WORDS],
            far: BinaryHeap::new(),
            cursor: 0,
            len: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds an entry; one due in the past fires at the next `pop_due`.
    pub(crate) fn push(&mut self, at: Nanos, id: u32) {
        self.len += 1;
        let ms = (at / SLOT_NS).max(self.cursor);
        if ms - self.cursor < SLOTS as u64 {
            self.put(ms, at, id);
        } else {
            self.far.push(Reverse((at, id)));
        }
    }

    fn put(&mut self, ms: u64, at: Nanos, id: u32) {
        let i = (ms & MASK) as usize;
        self.slots[i].push((at, id));
        self.occupied[i / 64] |= 1 << (i % 64);
    }

    /// Takes one entry whose deadline is at or before `now`, if any. Entries of one
    /// millisecond come in no particular order.
    pub(crate) fn pop_due(&mut self, now: Nanos) -> Option<(Nanos, u32)> {
        let now_ms = now / SLOT_NS;
        while self.len > 0 && self.cursor <= now_ms {
            self.refill();
            let i = (self.cursor & MASK) as usize;
            let slot = &mut self.slots[i];
            let taken = if self.cursor < now_ms {
                slot.pop()
            } else {
                slot.iter()
                    .position(|&(at, _)| at <= now)
                    .map(|k| slot.swap_remove(k))
            };
            if slot.is_empty() {
                self.occupied[i / 64] &= !(1 << (i % 64));
            }
            if taken.is_some() {
                self.len -= 1;
                return taken;
            }
            if self.cursor == now_ms {
                return None;
            }
            // Jump to the next millisecond with anything in it, no further than now.
            let next = self.next_occupied().min(self.far_ms()).min(now_ms);
            self.cursor = next.max(self.cursor + 1);
        }
        None
    }

    /// The earliest deadline held, if any.
    pub(crate) fn peek(&self) -> Option<Nanos> {
        if self.len == 0 {
            return None;
        }
        let far = self.far.peek().map(|Reverse((at, _))| *at);
        let ms = self.next_occupied();
        let near = (ms != u64::MAX)
            .then(|| {
                self.slots[(ms & MASK) as usize]
                    .iter()
                    .map(|&(at, _)| at)
                    .min()
            })
            .flatten();
        near.into_iter().chain(far).min()
    }

    /// Moves far entries that the wheel's span now reaches into their slots.
    fn refill(&mut self) {
        while let Some(&Reverse((at, id))) = self.far.peek() {
            let ms = (at / SLOT_NS).max(self.cursor);
            if ms - self.cursor >= SLOTS as u64 {
                break;
            }
            self.far.pop();
            self.put(ms, at, id);
        }
    }

    fn far_ms(&self) -> u64 {
        self.far
            .peek()
            .map_or(u64::MAX, |Reverse((at, _))| (at / SLOT_NS).max(self.cursor))
    }

    /// The millisecond of the first non-empty slot from the cursor on (`u64::MAX`: none).
    fn next_occupied(&self) -> u64 {
        let start = (self.cursor & MASK) as usize;
        for step in 0..=WORDS {
            let w = (start / 64 + step) % WORDS;
            let mut bits = self.occupied[w];
            if step == 0 {
                bits &= !0 << (start % 64);
            } else if step == WORDS {
                bits &= !(!0 << (start % 64));
            }
            if bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                let ahead = (i + SLOTS - start) % SLOTS;
                return self.cursor + ahead as u64;
            }
        }
        u64::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = SLOT_NS;

    fn drain(w: &mut Wheel, now: Nanos) -> Vec<(Nanos, u32)> {
        let mut out = Vec::new();
        while let Some(e) = w.pop_due(now) {
            out.push(e);
        }
        out.sort_unstable();
        out
    }

    #[test]
    fn nothing_fires_before_its_time() {
        let mut w = Wheel::new();
        w.push(5 * MS + 300, 1);
        w.push(5 * MS + 700, 2);
        w.push(9 * MS, 3);
        assert_eq!(w.peek(), Some(5 * MS + 300));
        assert!(drain(&mut w, 5 * MS + 299).is_empty());
        assert_eq!(drain(&mut w, 5 * MS + 500), vec![(5 * MS + 300, 1)]);
        assert_eq!(w.peek(), Some(5 * MS + 700));
        assert_eq!(drain(&mut w, 8 * MS), vec![(5 * MS + 700, 2)]);
        assert_eq!(w.peek(), Some(9 * MS));
        assert_eq!(drain(&mut w, 9 * MS), vec![(9 * MS, 3)]);
        assert_eq!((w.len(), w.peek()), (0, None));
    }

    #[test]
    fn past_deadlines_fire_at_once() {
        let mut w = Wheel::new();
        assert!(drain(&mut w, 50 * MS).is_empty());
        w.push(10 * MS, 7);
        assert_eq!(w.peek(), Some(10 * MS));
        assert_eq!(drain(&mut w, 50 * MS), vec![(10 * MS, 7)]);
    }

    #[test]
    fn far_entries_come_back_in_order() {
        let mut w = Wheel::new();
        let hour = 3_600_000 * MS;
        w.push(hour, 1);
        w.push(10 * MS, 2);
        w.push(hour - 1, 3);
        assert_eq!(w.peek(), Some(10 * MS));
        assert_eq!(drain(&mut w, 20 * MS), vec![(10 * MS, 2)]);
        assert_eq!(w.peek(), Some(hour - 1));
        assert!(drain(&mut w, hour - 2).is_empty());
        assert_eq!(drain(&mut w, hour), vec![(hour - 1, 3), (hour, 1)]);
    }

    /// Against a sorted reference over random pushes and irregular ticks, including pushes
    /// made while draining (a timer arming the next one).
    #[test]
    fn matches_a_reference() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut w = Wheel::new();
        let mut reference: Vec<(Nanos, u32)> = Vec::new();
        let mut now = 0;
        let mut id = 0;
        for _ in 0..3000 {
            for _ in 0..rand(6) {
                let span = [3 * MS, 600 * MS, 9_000 * MS][rand(3) as usize];
                let at = (now + rand(span)).saturating_sub(MS);
                w.push(at, id);
                reference.push((at, id));
                id += 1;
            }
            now += rand(3 * MS) + [0, 0, 0, 5_000 * MS][rand(4) as usize];
            let mut fired = Vec::new();
            while let Some(e) = w.pop_due(now) {
                assert!(e.0 <= now, "{e:?} fired early at {now}");
                fired.push(e);
                if rand(4) == 0 {
                    let at = now + rand(2 * MS);
                    w.push(at, id);
                    reference.push((at, id));
                    id += 1;
                }
            }
            fired.sort_unstable();
            let mut due: Vec<_> = reference.iter().copied().filter(|e| e.0 <= now).collect();
            reference.retain(|e| e.0 > now);
            due.sort_unstable();
            assert_eq!(fired, due, "at {now}");
            assert_eq!(w.len(), reference.len());
            assert_eq!(w.peek(), reference.iter().map(|e| e.0).min());
        }
    }
}
