//! OPTIONS probes of the nodes, on the balancer's prober (`pbxlab_balancer::Prober`): the
//! prober decides when a round starts, which answer counts and when a silence is a timeout
//! (or, with most of the cluster silent at once, the Call Manager's own trouble); this file
//! only puts its probes on the wire and hands its results to the balancer. `plan` drives the
//! same prober, so it predicts the detection a drill measures.

use std::net::SocketAddr;
use std::time::Duration;

use pbxlab_balancer::{Probe, ProbeAction, ServerId};
use pbxlab_proto::builder::write_request;

use super::{CallManager, Keyed, Nanos, Stats};

/// The start of a probe's branch; the rest is `{server}x{seq}x{mac}`. Without the MAC, anyone
/// who could send from a stopped node's address could keep it online by answering for it.
pub(super) const BRANCH: &str = "z9hG4bKp";

/// Reads the prober's counters into the status.
pub(super) fn report(prober: &pbxlab_balancer::Prober, s: &mut Stats) {
    let p = prober.stats();
    s.probes_late = p.late;
    s.probes_unmatched = p.unmatched;
    s.probe_rounds_ignored = p.rounds_ignored;
    s.probe_rtt_max_us = u64::try_from(p.rtt_max.as_micros()).unwrap_or(u64::MAX);
}

impl CallManager {
    /// The round-trip time of the last answered probe of `server`.
    pub fn probe_rtt(&self, server: ServerId) -> Option<Duration> {
        self.prober.rtt(server)
    }

    /// Runs the prober if its deadline has come: judges the open round, starts the next.
    pub(super) fn run_prober(&mut self, now: Nanos) {
        let at = Duration::from_nanos(now);
        if at < self.prober.next_deadline() {
            return;
        }
        // A removed node is nobody's concern any more: its silence must not count, not even
        // towards the mass-silence rule.
        for node in &self.nodes {
            if self.balancer.server(node.id).is_none() && self.prober.is_watched(node.id) {
                self.prober.forget(node.id);
            }
        }
        let mut actions = std::mem::take(&mut self.probe_actions);
        self.prober.advance(at, &mut actions);
        for action in actions.drain(..) {
            match action {
                ProbeAction::Send { server, seq } => self.send_probe(server, seq),
                ProbeAction::Record { server, result } => self.probe_result(now, server, result),
            }
        }
        self.probe_actions = actions;
    }

    fn send_probe(&mut self, server: ServerId, seq: u32) {
        let Some(node) = self.node(server) else {
            return;
        };
        let (to, id) = (node.addr, server.0);
        let uri = format!("sip:{}@{to}", node.name);
        let mac = Keyed::PROBE.mac(&self.keys.branch, id, seq);
        let via = format!(
            "SIP/2.0/UDP {};branch={BRANCH}{id}x{seq}x{mac:016x}",
            self.addr
        );
        let from = format!("<sip:cm@{}>;tag=p{id}", self.domain);
        let to_party = format!("<{uri}>");
        let call_id = format!("p{id}-{seq}-{mac:016x}@cm");
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

    /// An answer with status `code` from `from` to the probe whose branch ends in `rest`. Only
    /// the node's own address may answer for it, and only with the branch the probe carried.
    pub(super) fn probe_response(&mut self, now: Nanos, from: SocketAddr, rest: &str, code: u16) {
        let Some((server, seq)) = Keyed::PROBE.check(&self.keys.branch, rest) else {
            self.stats.responses_forged += 1;
            return;
        };
        let server = ServerId(server);
        if self.node(server).is_none_or(|n| n.addr != from) {
            self.stats.probes_foreign += 1;
            return;
        }
        let healthy = (200..300).contains(&code);
        let at = Duration::from_nanos(now);
        if let Some(result) = self.prober.answer(at, server, seq, healthy) {
            self.probe_result(now, server, result);
        }
    }

    fn probe_result(&mut self, now: Nanos, server: ServerId, result: Probe) {
        let at = Duration::from_nanos(now);
        if let Ok(outcome) = self.balancer.probe(at, server, result) {
            self.apply(now, outcome);
        }
    }
}
