//! The in-memory network of the virtual world: every datagram between the Call Manager, the
//! nodes and the load generator goes through here, arrives after the link's latency (plus any
//! fault's delay), and is lost, duplicated or reordered only by a fault, each choice drawn from
//! the seed.
//!
//! Deliveries come out in the order of their arrival time, and datagrams arriving at the same
//! nanosecond in the order they were sent, so a run is a function of the seed alone. Most
//! datagrams take exactly the base latency; as the clock only moves forward their arrival
//! times only grow, and they wait in a FIFO. Only the ones a fault delays go to a heap.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;

use pbxlab_balancer::hash;

use crate::Nanos;

/// One-way latency of the emulated links: a loopback hop on a loaded machine.
pub const LATENCY_NS: Nanos = 50_000;
/// Datagrams in flight at once, at most; more are dropped and counted (a tick of 10,000 calls
/// with RTP both ways is 40,000 datagrams).
pub const MAX_IN_FLIGHT: usize = 4_000_000;

/// What a fault does to the datagrams it applies to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Each is lost with this probability.
    Loss(f64),
    /// Each arrives this much later, plus a uniform draw up to `jitter_ns`.
    Delay { delay_ns: Nanos, jitter_ns: Nanos },
    /// Each is delivered twice with this probability, the copy a link latency later.
    Duplicate(f64),
    /// Each is held back `by_ns` with this probability, so later ones overtake it.
    Reorder { fraction: f64, by_ns: Nanos },
}

/// A fault of the network: an effect on the datagrams from or to any of `endpoints` (every
/// datagram when empty), until `until` if it ends by itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub effect: Effect,
    pub endpoints: Vec<SocketAddr>,
    pub until: Option<Nanos>,
}

impl Rule {
    fn applies(&self, from: SocketAddr, to: SocketAddr) -> bool {
        self.endpoints.is_empty() || self.endpoints.contains(&from) || self.endpoints.contains(&to)
    }
}

/// A set of addresses cut off from every address outside it.
#[derive(Debug, Clone, PartialEq)]
struct Partition {
    members: Vec<SocketAddr>,
    until: Option<Nanos>,
}

impl Partition {
    fn cuts(&self, from: SocketAddr, to: SocketAddr) -> bool {
        self.members.contains(&from) != self.members.contains(&to)
    }
}

/// A datagram on its way.
#[derive(Debug)]
pub struct Datagram {
    pub at: Nanos,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// What the network did, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    /// Lost to a `loss` fault.
    pub lost: u64,
    /// Lost to a partition.
    pub cut: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub reordered: u64,
    /// Dropped because [`MAX_IN_FLIGHT`] datagrams were already on their way.
    pub overflow: u64,
    /// Delivered to an address nobody has.
    pub unroutable: u64,
}

/// The network: datagrams in flight, the faults in force, and the seeded stream behind every
/// fault's choices.
#[derive(Debug)]
pub struct Net {
    fifo: VecDeque<(u64, Datagram)>,
    heap: BinaryHeap<Reverse<(Nanos, u64, usize)>>,
    held: Vec<Option<Datagram>>,
    free_slots: Vec<usize>,
    /// Buffers of delivered datagrams, for the next ones sent.
    spare: Vec<Vec<u8>>,
    seq: u64,
    rng: u64,
    rules: Vec<Rule>,
    partitions: Vec<Partition>,
    pub stats: NetStats,
}

impl Net {
    pub fn new(seed: u64) -> Net {
        Net {
            fifo: VecDeque::new(),
            heap: BinaryHeap::new(),
            held: Vec::new(),
            free_slots: Vec::new(),
            spare: Vec::new(),
            seq: 0,
            rng: hash::mix64(seed ^ hash::fnv1a(b"virtual network")),
            rules: Vec::new(),
            partitions: Vec::new(),
            stats: NetStats::default(),
        }
    }

    /// A uniform draw in [0, 1).
    fn unit(&mut self) -> f64 {
        (hash::splitmix64(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    fn below(&mut self, n: Nanos) -> Nanos {
        if n == 0 {
            0
        } else {
            hash::splitmix64(&mut self.rng) % (n + 1)
        }
    }

    /// Puts a fault in force from now.
    pub fn add_rule(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// Cuts `members` off from everyone else.
    pub fn partition(&mut self, members: Vec<SocketAddr>, until: Option<Nanos>) {
        self.partitions.push(Partition { members, until });
    }

    /// Ends the partitions of exactly this set (in any order); true if there was one.
    pub fn heal(&mut self, members: &[SocketAddr]) -> bool {
        let same = |p: &Partition| {
            p.members.len() == members.len() && members.iter().all(|m| p.members.contains(m))
        };
        let before = self.partitions.len();
        self.partitions.retain(|p| !same(p));
        self.partitions.len() != before
    }

    /// Whether a datagram from `from` to `to` would be cut now.
    pub fn is_cut(&self, from: SocketAddr, to: SocketAddr) -> bool {
        self.partitions.iter().any(|p| p.cuts(from, to))
    }

    /// The faults in force and the partitions, ended where their time is up.
    pub fn expire(&mut self, now: Nanos) {
        self.rules.retain(|r| r.until.is_none_or(|u| now < u));
        self.partitions.retain(|p| p.until.is_none_or(|u| now < u));
    }

    /// When the next fault or partition ends by itself.
    pub fn next_expiry(&self) -> Option<Nanos> {
        let rules = self.rules.iter().filter_map(|r| r.until);
        let parts = self.partitions.iter().filter_map(|p| p.until);
        rules.chain(parts).min()
    }

    /// Sends `bytes` from `from` to `to` at `now`.
    pub fn send(&mut self, now: Nanos, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        self.stats.sent += 1;
        if !self.rules.is_empty() || !self.partitions.is_empty() {
            self.expire(now);
        }
        if self.is_cut(from, to) {
            self.stats.cut += 1;
            return;
        }
        let mut at = now + LATENCY_NS;
        let mut copies = 1;
        let mut delayed = false;
        for i in 0..self.rules.len() {
            let Some(rule) = self.rules.get(i) else {
                break;
            };
            if !rule.applies(from, to) {
                continue;
            }
            match rule.effect {
                Effect::Loss(p) => {
                    if self.chance(p) {
                        self.stats.lost += 1;
                        return;
                    }
                }
                Effect::Delay {
                    delay_ns,
                    jitter_ns,
                } => {
                    at += delay_ns + self.below(jitter_ns);
                    delayed = true;
                    self.stats.delayed += 1;
                }
                Effect::Duplicate(p) => {
                    if self.chance(p) {
                        copies += 1;
                        self.stats.duplicated += 1;
                    }
                }
                Effect::Reorder { fraction, by_ns } => {
                    if self.chance(fraction) {
                        at += by_ns;
                        delayed = true;
                        self.stats.reordered += 1;
                    }
                }
            }
        }
        for copy in 0..copies {
            let at = at + copy * LATENCY_NS;
            self.push(at, from, to, bytes, delayed || copy > 0);
        }
    }

    fn push(&mut self, at: Nanos, from: SocketAddr, to: SocketAddr, bytes: &[u8], held: bool) {
        if self.in_flight() >= MAX_IN_FLIGHT {
            self.stats.overflow += 1;
            return;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        let d = Datagram {
            at,
            from,
            to,
            bytes: buf,
        };
        self.seq += 1;
        // The FIFO holds only datagrams whose arrival is no earlier than its last one's.
        let in_order = !held && self.fifo.back().is_none_or(|(_, last)| last.at <= at);
        if in_order {
            self.fifo.push_back((self.seq, d));
        } else {
            let slot = match self.free_slots.pop() {
                Some(s) => {
                    if let Some(x) = self.held.get_mut(s) {
                        *x = Some(d);
                    }
                    s
                }
                None => {
                    self.held.push(Some(d));
                    self.held.len() - 1
                }
            };
            self.heap.push(Reverse((at, self.seq, slot)));
        }
    }

    /// Datagrams on their way.
    pub fn in_flight(&self) -> usize {
        self.fifo.len() + self.heap.len()
    }

    /// When the next datagram arrives.
    pub fn next_delivery(&self) -> Option<Nanos> {
        let fifo = self.fifo.front().map(|(_, d)| d.at);
        let heap = self.heap.peek().map(|Reverse((at, _, _))| *at);
        match (fifo, heap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram due by `now`, in arrival order (ties in sending order).
    pub fn pop_due(&mut self, now: Nanos) -> Option<Datagram> {
        let fifo = self.fifo.front().map(|(seq, d)| (d.at, *seq));
        let heap = self.heap.peek().map(|Reverse((at, seq, _))| (*at, *seq));
        let take_heap = match (fifo, heap) {
            (Some(f), Some(h)) => h < f,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        let d = if take_heap {
            let &Reverse((at, _, slot)) = self.heap.peek()?;
            if at > now {
                return None;
            }
            self.heap.pop();
            self.free_slots.push(slot);
            self.held.get_mut(slot)?.take()?
        } else {
            if self.fifo.front()?.1.at > now {
                return None;
            }
            self.fifo.pop_front()?.1
        };
        self.stats.delivered += 1;
        Some(d)
    }

    /// Gives a delivered datagram's buffer back for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < 65_536 {
            self.spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn drain(net: &mut Net, now: Nanos) -> Vec<(Nanos, u8)> {
        let mut out = Vec::new();
        while let Some(d) = net.pop_due(now) {
            out.push((d.at, d.bytes[0]));
        }
        out
    }

    #[test]
    fn datagrams_arrive_after_the_latency_in_the_order_sent() {
        let mut net = Net::new(1);
        net.send(0, addr(1), addr(2), &[1]);
        net.send(0, addr(1), addr(2), &[2]);
        net.send(10, addr(2), addr(1), &[3]);
        assert_eq!(net.next_delivery(), Some(LATENCY_NS));
        assert!(drain(&mut net, LATENCY_NS - 1).is_empty());
        assert_eq!(
            drain(&mut net, LATENCY_NS),
            [(LATENCY_NS, 1), (LATENCY_NS, 2)]
        );
        assert_eq!(drain(&mut net, u64::MAX), [(LATENCY_NS + 10, 3)]);
        assert_eq!(net.stats.delivered, 3);
    }

    #[test]
    fn a_partition_cuts_only_across_its_edge_and_heals() {
        let mut net = Net::new(1);
        net.partition(vec![addr(1), addr(2)], None);
        net.send(0, addr(1), addr(2), &[1]);
        net.send(0, addr(1), addr(3), &[2]);
        net.send(0, addr(3), addr(2), &[3]);
        assert_eq!(drain(&mut net, u64::MAX), [(LATENCY_NS, 1)]);
        assert_eq!(net.stats.cut, 2);
        assert!(!net.heal(&[addr(1)]), "another set is not that partition");
        assert!(net.heal(&[addr(2), addr(1)]));
        net.send(5, addr(1), addr(3), &[4]);
        assert_eq!(drain(&mut net, u64::MAX), [(LATENCY_NS + 5, 4)]);
    }

    #[test]
    fn a_partition_with_an_end_ends_by_itself() {
        let mut net = Net::new(1);
        net.partition(vec![addr(1)], Some(100));
        assert_eq!(net.next_expiry(), Some(100));
        net.send(99, addr(1), addr(2), &[1]);
        net.send(100, addr(1), addr(2), &[2]);
        assert_eq!(drain(&mut net, u64::MAX), [(LATENCY_NS + 100, 2)]);
    }

    #[test]
    fn loss_takes_about_its_fraction_and_only_of_its_endpoints() {
        let mut net = Net::new(7);
        net.add_rule(Rule {
            effect: Effect::Loss(0.25),
            endpoints: vec![addr(1)],
            until: None,
        });
        for _ in 0..10_000 {
            net.send(0, addr(1), addr(2), &[1]);
            net.send(0, addr(3), addr(2), &[2]);
        }
        let got = drain(&mut net, u64::MAX);
        let ones = got.iter().filter(|(_, b)| *b == 1).count();
        let twos = got.iter().filter(|(_, b)| *b == 2).count();
        assert_eq!(twos, 10_000);
        assert!(
            (7_200..7_800).contains(&ones),
            "{ones} of 10,000 survived 25 % loss"
        );
        assert_eq!(net.stats.lost as usize, 10_000 - ones);
    }

    #[test]
    fn delay_reorder_and_duplicates_keep_arrival_order() {
        let mut net = Net::new(3);
        net.add_rule(Rule {
            effect: Effect::Reorder {
                fraction: 0.5,
                by_ns: 1_000_000,
            },
            endpoints: Vec::new(),
            until: None,
        });
        net.add_rule(Rule {
            effect: Effect::Duplicate(0.5),
            endpoints: Vec::new(),
            until: None,
        });
        for i in 0..100u8 {
            net.send(u64::from(i) * 1_000, addr(1), addr(2), &[i]);
        }
        let got = drain(&mut net, u64::MAX);
        assert!(
            got.windows(2).all(|w| w[0].0 <= w[1].0),
            "out of time order"
        );
        assert!(got.len() > 120, "about half duplicated: {}", got.len());
        let order: Vec<u8> = got.iter().map(|g| g.1).collect();
        assert!(
            order.windows(2).any(|w| w[0] > w[1]),
            "nothing was overtaken"
        );
        assert!(net.stats.reordered > 30 && net.stats.duplicated > 30);
    }

    #[test]
    fn the_same_seed_makes_the_same_choices() {
        let run = |seed| {
            let mut net = Net::new(seed);
            net.add_rule(Rule {
                effect: Effect::Delay {
                    delay_ns: 1_000,
                    jitter_ns: 1_000_000,
                },
                endpoints: Vec::new(),
                until: Some(50_000),
            });
            net.add_rule(Rule {
                effect: Effect::Loss(0.1),
                endpoints: Vec::new(),
                until: None,
            });
            for i in 0..200u8 {
                net.send(u64::from(i) * 500, addr(1), addr(2), &[i]);
            }
            drain(&mut net, u64::MAX)
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
