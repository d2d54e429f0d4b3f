//! OPTIONS probes of the nodes: a round on a fixed grid of the health interval, each probe
//! judged at the timeout, and the rule that a round in which most of the cluster is silent
//! says more about the Call Manager's own host than about the nodes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use pbxlab_balancer::{Balancer, Probe, ServerId};
use pbxlab_proto::builder::write_request;

use super::{CallManager, Nanos, NodeSpec, Stats, ns, parse_pair};

/// How a probe's branch starts; `{node}x{seq}` follows.
pub(super) const BRANCH: &str = "z9hG4bKp";

/// Consecutive rounds with most of the cluster silent that are put down to the Call Manager's
/// own trouble; after that many, the silence is believed.
const MAX_INCONCLUSIVE: u32 = 5;

#[derive(Debug, Clone, Copy, Default)]
struct ProbeState {
    seq: u32,
    sent_at: Nanos,
    pending: bool,
    /// Round-trip time of the last answered probe.
    last_rtt: Option<Nanos>,
}

/// The probe state of each node, in the order of the Call Manager's nodes.
pub(super) struct Probes {
    states: Vec<ProbeState>,
    next_round: Nanos,
    /// When each round's probes are judged.
    checks: BinaryHeap<Reverse<Nanos>>,
    /// Consecutive probe rounds in which most nodes were silent.
    inconclusive_rounds: u32,
    late: u64,
    rounds_ignored: u64,
    rtt_max_us: u64,
}

impl Probes {
    pub(super) fn new(nodes: usize) -> Probes {
        Probes {
            states: vec![ProbeState::default(); nodes],
            next_round: 0,
            checks: BinaryHeap::new(),
            inconclusive_rounds: 0,
            late: 0,
            rounds_ignored: 0,
            rtt_max_us: 0,
        }
    }

    pub(super) fn add_node(&mut self) {
        self.states.push(ProbeState::default());
    }

    pub(super) fn next_round(&self) -> Nanos {
        self.next_round
    }

    pub(super) fn next_check(&self) -> Option<Nanos> {
        self.checks.peek().map(|&Reverse(at)| at)
    }

    pub(super) fn pop_check(&mut self) {
        self.checks.pop();
    }

    pub(super) fn report(&self, s: &mut Stats) {
        s.probes_late = self.late;
        s.probe_rounds_ignored = self.rounds_ignored;
        s.probe_rtt_max_us = self.rtt_max_us;
    }

    /// Node `i` is probed at `now`; the probe's sequence number.
    fn sent(&mut self, i: usize, now: Nanos) -> Option<u32> {
        let p = self.states.get_mut(i)?;
        p.seq = p.seq.wrapping_add(1);
        p.sent_at = now;
        p.pending = true;
        Some(p.seq)
    }

    /// A round ran at `now`: the next is due an `interval` later and this one is judged a
    /// `timeout` later. The timeout is shorter than the interval (HealthConfig checks), so
    /// each round's probes are judged before the next round starts. Rounds keep to a fixed
    /// grid: timed from when each actually ran, a thread woken a millisecond late would
    /// stretch every interval and detection would drift past its bound.
    fn schedule(&mut self, now: Nanos, interval: Nanos, timeout: Nanos) {
        self.next_round = if self.next_round == 0 || now >= self.next_round + interval {
            now + interval
        } else {
            self.next_round + interval
        };
        self.checks.push(Reverse(now + timeout));
    }

    /// The nodes whose probes went unanswered for `timeout` by `now`, unless the round does
    /// not count.
    fn timeouts(
        &mut self,
        now: Nanos,
        timeout: Nanos,
        nodes: &[NodeSpec],
        balancer: &Balancer,
    ) -> Vec<ServerId> {
        let mut late = Vec::new();
        let mut probed = 0;
        for (node, p) in nodes.iter().zip(&mut self.states) {
            if balancer.server(node.id).is_none() {
                continue;
            }
            probed += 1;
            if p.pending && p.sent_at + timeout <= now {
                p.pending = false;
                late.push(node.id);
            }
        }
        // More than half the cluster silent in the same round says more about the Call
        // Manager's own host or network (a stalled thread, a saturated machine) than about the
        // nodes: such a round is not counted, as a load balancer's panic threshold would have
        // it, for a few rounds. Longer, it is a real outage and counts.
        if probed >= 3 && late.len() * 2 > probed && self.inconclusive_rounds < MAX_INCONCLUSIVE {
            self.inconclusive_rounds += 1;
            self.rounds_ignored += 1;
            late.clear();
            return late;
        }
        self.inconclusive_rounds = 0;
        late
    }

    /// An answer with status `code` to the probe whose branch ends in `rest`: the node's index
    /// and the probe's result, unless the probe is not pending or its timeout has passed.
    fn answer(
        &mut self,
        now: Nanos,
        rest: &str,
        code: u16,
        timeout: Nanos,
    ) -> Option<(usize, Probe)> {
        let (node, seq) = parse_pair(rest)?;
        let p = self.states.get_mut(node as usize)?;
        if p.seq == seq {
            let rtt = now.saturating_sub(p.sent_at);
            self.rtt_max_us = self.rtt_max_us.max(rtt / 1000);
        }
        if !p.pending || p.seq != seq || now > p.sent_at + timeout {
            if p.seq == seq && !p.pending {
                // Answered, but after its timeout had been counted.
                self.late += 1;
            }
            return None;
        }
        p.pending = false;
        p.last_rtt = Some(now.saturating_sub(p.sent_at));
        let result = if (200..300).contains(&code) {
            Probe::Ok
        } else {
            Probe::Failed
        };
        Some((node as usize, result))
    }
}

impl CallManager {
    /// The round-trip time of the last answered probe of `server`.
    pub fn probe_rtt(&self, server: ServerId) -> Option<Duration> {
        let i = self.nodes.iter().position(|n| n.id == server)?;
        self.probes
            .states
            .get(i)?
            .last_rtt
            .map(Duration::from_nanos)
    }

    pub(super) fn probe_round(&mut self, now: Nanos) {
        let health = self.balancer.health();
        self.probe_timeouts(now);
        for (i, node) in self.nodes.iter().enumerate() {
            if self.balancer.server(node.id).is_none() {
                // Removed from the cluster: nobody watches it any more.
                continue;
            }
            let Some(seq) = self.probes.sent(i, now) else {
                continue;
            };
            let to = node.addr;
            let uri = format!("sip:{}@{to}", node.name);
            let via = format!("SIP/2.0/UDP {};branch={BRANCH}{i}x{seq}", self.addr);
            let from = format!("<sip:cm@{}>;tag=p{i}", self.domain);
            let to_party = format!("<{uri}>");
            let call_id = format!("p{i}-{seq}@cm");
            let cseq = format!("{seq} OPTIONS");
            write_request(
                &mut self.scratch,
                "OPTIONS",
                &uri,
                &[
                    ("Via", &via),
                    ("Max-Forwards", "70"),
                    ("From", &from),
                    ("To", &to_party),
                    ("Call-ID", &call_id),
                    ("CSeq", &cseq),
                ],
                b"",
            );
            self.out.push(to, &self.scratch);
        }
        self.probes
            .schedule(now, ns(health.interval), ns(health.timeout));
    }

    pub(super) fn probe_timeouts(&mut self, now: Nanos) {
        let timeout = ns(self.balancer.health().timeout);
        let late = self
            .probes
            .timeouts(now, timeout, &self.nodes, &self.balancer);
        for id in late {
            self.probe_result(now, id, Probe::Timeout);
        }
    }

    pub(super) fn probe_response(&mut self, now: Nanos, rest: &str, code: u16) {
        let timeout = ns(self.balancer.health().timeout);
        let Some((i, result)) = self.probes.answer(now, rest, code, timeout) else {
            return;
        };
        if let Some(id) = self.nodes.get(i).map(|n| n.id) {
            self.probe_result(now, id, result);
        }
    }

    fn probe_result(&mut self, now: Nanos, server: ServerId, result: Probe) {
        let at = Duration::from_nanos(now);
        if let Ok(outcome) = self.balancer.probe(at, server, result) {
            self.apply(now, outcome);
        }
    }
}
