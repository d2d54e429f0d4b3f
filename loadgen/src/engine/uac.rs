//! Placing calls (we are the UAC): the INVITE client transaction with its retransmissions and
//! digest retry, the ACK, the hold and the BYE, each service's flow once answered (IVR menu,
//! queue, agent), and the measurements of every step.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pbxlab_proto::sdp::{self, SessionDescription};
use pbxlab_proto::sip::{HeaderName, Message, Method};
use pbxlab_proto::uri::{Host, NameAddr, SipUri};

use super::calls::{Call, CallState, End, Stage};
use super::config::{Callee, Dtmf, Hold, Kind};
use super::register::ChallengeRtt;
use super::wire::{request_uri, ssrc, stream_id};
use super::{Engine, MediaCommand, Nanos, ns, status_reason};
use crate::messages::MessageKind;
use crate::metrics::Metric;
use crate::users::UserOrder;

impl Engine {
    /// Starts attempt `k` (0-based) of workload `w`.
    pub(super) fn start_call(&mut self, now: Nanos, intended: Nanos, w: usize, k: u64) {
        self.metrics.calls.attempted += 1;
        self.metrics.call_starts.at(now);
        self.metrics.workloads[w].attempted += 1;
        let n = self.calls_started - 1;
        let to_user = matches!(self.cfg.workloads[w].callee, Callee::Users);
        let (caller, callee) = self.pick_users(n, to_user);
        let workload = &self.cfg.workloads[w];
        let kind = self.schedules[w].kind;
        let room = match kind {
            Kind::Meeting(size) => {
                let (shard, shards) = self.cfg.shard;
                let room = (k / u64::from(size)) * u64::from(shards.max(1)) + u64::from(shard) + 1;
                u32::try_from(room).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        let drawn = self.cfg.rtp_fraction > 0.0 && self.rng.uniform() < self.cfg.rtp_fraction;
        let (digit, digits) = match &workload.dtmf {
            Dtmf::None => (0, false),
            Dtmf::Digits(d) => (0, !d.is_empty()),
            &Dtmf::Queue { fraction, queues } => {
                if queues > 0 && self.rng.uniform() < fraction {
                    let q = self.rng.next() % u64::from(queues.min(9));
                    (b'1' + q as u8, true)
                } else {
                    (0, false)
                }
            }
        };
        // RFC 4733 events travel in the RTP stream: a call that sends digits needs one.
        let rtp = drawn || digits;
        let routes = kind == Kind::Ivr
            && match (&workload.dtmf, digit) {
                (_, b'1'..=b'9') => true,
                (Dtmf::Digits(d), _) => d.starts_with(|c: char| ('1'..='9').contains(&c)),
                _ => false,
            };
        let stage = match kind {
            Kind::Queue => Stage::Queued,
            Kind::Ivr if routes => Stage::Menu,
            _ => Stage::Hold,
        };
        let slot = self.calls.alloc_placed();
        let t1 = self.t1();
        let target = self.cfg.target;
        let c = &mut self.calls[slot as usize];
        c.state = CallState::Calling;
        c.intended = intended;
        c.sent = now;
        c.cseq = 1;
        c.invite_round = 1;
        c.caller = caller;
        c.callee = callee;
        c.workload = w as u32;
        c.stage = stage;
        c.digit = digit;
        c.room = room;
        c.rtp = rtp;
        c.rto = t1;
        c.retransmit_at = now + t1;
        c.timeout_at = now + 64 * t1;
        c.next_hop = target;
        self.wire
            .invite(&self.cfg, slot, &self.calls[slot as usize]);
        self.arm(slot);
        self.challenges.expect(now, self.challenges.invite);
    }

    /// The caller of our call `n` (0-based, all workloads) and, for a call to another of our
    /// users, its callee: indexes into `Config::users`, in `Config::user_order`. With no users
    /// to call from, the caller is a number below 1000 that the messages write as 1000 more
    /// (`wire::UserPart`), and there is no callee.
    fn pick_users(&mut self, n: u64, to_user: bool) -> (u32, Option<u32>) {
        let start = self.callers.start;
        let users = u64::from(self.callers.end - start);
        if users == 0 {
            return ((n % 1000) as u32, None);
        }
        let (a, b) = match self.cfg.user_order {
            UserOrder::Random => {
                let a = self.pick.below(users);
                if !to_user || users < 2 {
                    (a, a)
                } else {
                    // Uniform over the others: skip the caller.
                    let b = self.pick.below(users - 1);
                    (a, b + u64::from(b >= a))
                }
            }
            UserOrder::Sequential | UserOrder::User => {
                // Pair user k with the one half the population away, so caller and callee
                // differ (a lone user calls itself).
                let a = n % users;
                (a, (a + users / 2) % users)
            }
        };
        // Both below `users`, which came from a u32 range.
        let (a, b) = (start + a as u32, start + b as u32);
        (a, to_user.then_some(b))
    }

    /// The digits call `c` sends once answered.
    fn digits(&self, c: &Call) -> Option<String> {
        if c.digit != 0 {
            return Some(char::from(c.digit).to_string());
        }
        match &self.cfg.workloads.get(c.workload as usize)?.dtmf {
            Dtmf::Digits(d) if !d.is_empty() => Some(d.clone()),
            _ => None,
        }
    }

    /// A hold (or talk, or patience) time drawn from `hold`.
    fn draw(&mut self, hold: Hold) -> Nanos {
        match hold {
            Hold::Fixed(d) => ns(d),
            Hold::Exponential(mean) => self.rng.exponential(ns(mean)),
        }
    }

    /// Call `slot` enters its queue now: it waits for an agent until its patience runs out.
    fn enter_queue(&mut self, now: Nanos, slot: u32) {
        self.metrics.queue.offered += 1;
        let w = self.calls[slot as usize].workload as usize;
        let patience = self
            .cfg
            .workloads
            .get(w)
            .and_then(|w| w.patience)
            .map(|p| self.rng.exponential(ns(p)));
        let c = &mut self.calls[slot as usize];
        c.stage = Stage::Queued;
        c.stage_at = now;
        c.hold_until = patience.map_or(Nanos::MAX, |p| now.saturating_add(p));
    }

    /// Counts how our call `slot` ended (it must be one of ours).
    pub(super) fn count_end(&mut self, slot: u32, ended: End) {
        let c = &self.calls[slot as usize];
        let ended = if ended == End::Succeeded && c.stage == Stage::Abandoned {
            End::Abandoned
        } else {
            ended
        };
        let m = &mut self.metrics;
        let workload = m.workloads.get_mut(c.workload as usize);
        for o in std::iter::once(&mut m.calls).chain(workload) {
            match ended {
                End::Succeeded => o.succeeded += 1,
                End::Failed => o.failed += 1,
                End::Abandoned => o.abandoned += 1,
            }
        }
    }

    pub(super) fn fail_call(&mut self, slot: u32, reason: &str) {
        self.count_end(slot, End::Failed);
        self.metrics.fail(reason);
        self.release(slot);
    }

    pub(super) fn call_timer(&mut self, now: Nanos, slot: u32) {
        let t2 = ns(self.cfg.t2);
        let Some(c) = self.calls.get_mut(slot as usize) else {
            return;
        };
        match c.state {
            CallState::Calling | CallState::Proceeding => {
                if now >= c.timeout_at {
                    self.messages.timed_out(MessageKind::Request("INVITE"));
                    self.timed_out(now);
                    self.fail_call(slot, "INVITE timeout");
                } else if c.state == CallState::Calling && now >= c.retransmit_at {
                    // Timer A: INVITE retransmissions double without a cap.
                    self.messages.retransmitted(MessageKind::Request("INVITE"));
                    c.rto *= 2;
                    c.retransmit_at = now + c.rto;
                    self.wire
                        .invite(&self.cfg, slot, &self.calls[slot as usize]);
                    self.arm(slot);
                }
            }
            CallState::Established if now >= c.hold_until => {
                if c.stage == Stage::Queued {
                    // Patience ran out before an agent answered.
                    c.stage = Stage::Abandoned;
                    self.metrics.queue.abandoned += 1;
                }
                c.state = CallState::ByeSent;
                c.cseq += 1;
                c.bye_sent_at = now;
                c.rto = ns(self.cfg.t1);
                c.retransmit_at = now + c.rto;
                c.timeout_at = now + 64 * c.rto;
                let cseq = c.cseq;
                if c.rtp {
                    self.media.push(MediaCommand::Stop {
                        stream: stream_id(slot, c.generation),
                    });
                }
                self.wire
                    .in_dialog(&self.cfg, slot, &self.calls[slot as usize], "BYE", cseq);
                self.arm(slot);
            }
            CallState::ByeSent => {
                if now >= c.timeout_at {
                    self.messages.timed_out(MessageKind::Request("BYE"));
                    self.timed_out(now);
                    self.fail_call(slot, "BYE timeout");
                } else if now >= c.retransmit_at {
                    // Timer E: non-INVITE retransmissions double up to T2.
                    self.messages.retransmitted(MessageKind::Request("BYE"));
                    c.rto = (c.rto * 2).min(t2);
                    c.retransmit_at = now + c.rto;
                    let cseq = c.cseq;
                    self.wire
                        .in_dialog(&self.cfg, slot, &self.calls[slot as usize], "BYE", cseq);
                    self.arm(slot);
                }
            }
            CallState::Ringing | CallState::Answered => self.answer_timer(now, slot),
            _ => {}
        }
    }

    pub(super) fn on_call_response(&mut self, now: Nanos, slot: u32, msg: &Message<'_>) {
        let Some(code) = msg.code() else { return };
        let Some(cseq) = msg.cseq() else { return };
        let c = &self.calls[slot as usize];
        if cseq.seq != c.cseq {
            // A response to an earlier INVITE (the one before the digest retry): absorb it, but
            // a final one still needs its ACK.
            if cseq.method == Method::Invite
                && code >= 300
                && c.state != CallState::Free
                && let Some(to) = msg.header(HeaderName::To)
            {
                let to = to.to_owned();
                let cur = self.calls[slot as usize].cseq;
                self.calls[slot as usize].cseq = cseq.seq;
                self.wire
                    .error_ack(&self.cfg, slot, &self.calls[slot as usize], &to);
                self.calls[slot as usize].cseq = cur;
            }
            return;
        }
        match (cseq.method, c.state) {
            (Method::Invite, CallState::Calling | CallState::Proceeding) => {
                self.on_invite_response(now, slot, code, msg)
            }
            // A retransmitted 200: our ACK was lost.
            (Method::Invite, CallState::Established | CallState::ByeSent)
                if (200..300).contains(&code) =>
            {
                let invite_cseq = if c.state == CallState::ByeSent {
                    c.cseq - 1
                } else {
                    c.cseq
                };
                self.messages.retransmitted(MessageKind::Request("ACK"));
                self.wire.in_dialog(
                    &self.cfg,
                    slot,
                    &self.calls[slot as usize],
                    "ACK",
                    invite_cseq,
                );
            }
            (Method::Bye, CallState::ByeSent) if code >= 200 => {
                let elapsed = now.saturating_sub(c.bye_sent_at);
                if (200..300).contains(&code) || code == 481 {
                    self.metrics
                        .record(Metric::Bye, Duration::from_nanos(elapsed));
                    self.count_end(slot, End::Succeeded);
                    self.release(slot);
                } else {
                    self.fail_call(slot, &format!("BYE {}", status_reason(code)));
                }
            }
            _ => {}
        }
    }

    fn on_invite_response(&mut self, now: Nanos, slot: u32, code: u16, msg: &Message<'_>) {
        let c = &mut self.calls[slot as usize];
        let since_intended = Duration::from_nanos(now.saturating_sub(c.intended));
        match code {
            100..=199 => {
                c.state = CallState::Proceeding;
                if (code == 180 || code == 183) && !c.pdd_seen {
                    c.pdd_seen = true;
                    self.metrics.record(Metric::Pdd, since_intended);
                }
            }
            200..=299 => {
                self.metrics.record(Metric::Setup, since_intended);
                self.metrics.record(
                    Metric::SetupUncorrected,
                    Duration::from_nanos(now.saturating_sub(c.sent)),
                );
                if !c.pdd_seen {
                    // Answered without ringing: post-dial delay is the setup time.
                    c.pdd_seen = true;
                    self.metrics.record(Metric::Pdd, since_intended);
                }
                c.state = CallState::Established;
                c.auth = String::new();
                c.remote_tag = msg
                    .to()
                    .and_then(|t| t.tag())
                    .unwrap_or_default()
                    .to_owned();
                c.remote_target = msg.contact().map(|a| a.uri.to_owned()).unwrap_or_default();
                // UAC route set: Record-Route in reverse order (RFC 3261 12.1.2).
                let mut routes: Vec<String> = msg
                    .values(HeaderName::RecordRoute)
                    .map(str::to_owned)
                    .collect();
                routes.reverse();
                c.routes = routes;
                c.next_hop = next_hop(&c.routes, &c.remote_target).unwrap_or(self.cfg.target);
                let (w, stage) = (c.workload as usize, c.stage);
                let Some(workload) = self.cfg.workloads.get(w) else {
                    return;
                };
                let hold = workload.hold;
                if self.schedules[w].kind == Kind::Ivr {
                    self.metrics.ivr.calls += 1;
                }
                match stage {
                    Stage::Queued => self.enter_queue(now, slot),
                    Stage::Menu => {
                        // Waits for the transfer; a short hold must not hang up before the
                        // digits have even been played.
                        let wait = self.draw(hold).max(64 * self.t1());
                        let c = &mut self.calls[slot as usize];
                        c.stage_at = now;
                        c.hold_until = now.saturating_add(wait);
                    }
                    _ => {
                        let hold = self.draw(hold);
                        self.calls[slot as usize].hold_until = now.saturating_add(hold);
                    }
                }
                let c = &self.calls[slot as usize];
                let (invite_cseq, rtp, generation) = (c.cseq, c.rtp, c.generation);
                let digits = self.digits(c);
                self.wire.in_dialog(
                    &self.cfg,
                    slot,
                    &self.calls[slot as usize],
                    "ACK",
                    invite_cseq,
                );
                if rtp {
                    match SessionDescription::parse(msg.body())
                        .ok()
                        .and_then(|s| s.audio_addr())
                    {
                        Some(dest) => {
                            let stream = stream_id(slot, generation);
                            self.media.push(MediaCommand::Start {
                                stream,
                                ssrc: ssrc(slot, generation),
                                dest,
                                payload_type: sdp::PT_PCMU,
                            });
                            if let Some(digits) = digits {
                                self.media.push(MediaCommand::Dtmf { stream, digits });
                            }
                        }
                        None => {
                            self.calls[slot as usize].rtp = false;
                            self.metrics.fail("no usable SDP answer");
                        }
                    }
                }
                self.arm(slot);
            }
            _ => {
                let to = msg.header(HeaderName::To).unwrap_or_default().to_owned();
                self.wire
                    .error_ack(&self.cfg, slot, &self.calls[slot as usize], &to);
                let c = &self.calls[slot as usize];
                if (code == 401 || code == 407) && c.invite_round == 1 {
                    // Karn's rule, as for REGISTER.
                    if c.rto == self.t1() {
                        ChallengeRtt::sample(
                            &mut self.challenges.invite,
                            now.saturating_sub(c.sent),
                        );
                    }
                    let header = if code == 401 {
                        HeaderName::WwwAuthenticate
                    } else {
                        HeaderName::ProxyAuthenticate
                    };
                    let (caller, ruri) = (c.caller as usize, request_uri(&self.cfg, c));
                    match self.authorization(msg, header, code, caller, "INVITE", &ruri) {
                        Some(line) => {
                            let t1 = self.t1();
                            let c = &mut self.calls[slot as usize];
                            c.auth = line;
                            c.cseq += 1;
                            c.invite_round = 2;
                            c.state = CallState::Calling;
                            c.rto = t1;
                            c.retransmit_at = now + t1;
                            c.timeout_at = now + 64 * t1;
                            self.wire
                                .invite(&self.cfg, slot, &self.calls[slot as usize]);
                            self.arm(slot);
                        }
                        None => self.fail_call(slot, "unusable digest challenge"),
                    }
                } else {
                    self.fail_call(slot, &status_reason(code));
                }
            }
        }
    }

    /// A new re-INVITE on our established call `slot`: an IVR's transfer to a queue, or a
    /// queue's connect to an agent.
    pub(super) fn advance_stage(&mut self, now: Nanos, slot: u32) {
        let c = &self.calls[slot as usize];
        let since = Duration::from_nanos(now.saturating_sub(c.stage_at));
        match c.stage {
            Stage::Menu => {
                self.metrics.record(Metric::IvrRoute, since);
                self.metrics.ivr.routed += 1;
                self.enter_queue(now, slot);
                self.arm(slot);
            }
            Stage::Queued => {
                self.metrics.record(Metric::QueueWait, since);
                self.metrics.queue.answered += 1;
                if since <= self.cfg.service_level {
                    self.metrics.queue.answered_within_sl += 1;
                }
                let Some(w) = self.cfg.workloads.get(c.workload as usize) else {
                    return;
                };
                let talk = w
                    .agent_hold
                    .filter(|_| self.schedules[c.workload as usize].kind == Kind::Ivr)
                    .unwrap_or(w.hold);
                let talk = self.draw(talk);
                let c = &mut self.calls[slot as usize];
                c.stage = Stage::Agent;
                c.hold_until = now.saturating_add(talk);
                self.arm(slot);
            }
            Stage::Hold | Stage::Agent | Stage::Abandoned => {}
        }
    }
}

/// The address of the first hop of a request inside a dialog: the first route (loose routing),
/// else the remote target. Only literal IP addresses are used; a name falls back to the target.
fn next_hop(routes: &[String], remote_target: &str) -> Option<SocketAddr> {
    let first = match routes.first() {
        Some(r) => NameAddr::parse(r).ok().map(|a| a.uri)?,
        None => remote_target,
    };
    let uri = SipUri::parse(first).ok()?;
    let ip: IpAddr = match uri.host {
        Host::V4(a) => a.into(),
        Host::V6(a) => a.into(),
        Host::Name(_) => return None,
    };
    Some(SocketAddr::new(ip, uri.port.unwrap_or(5060)))
}
