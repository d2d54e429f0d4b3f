//! Registrations: each user's REGISTER client transaction, its refreshes, and the answers to
//! digest challenges (for INVITEs too), whose round trip tells the driver when to read again.

use std::ops::{Index, IndexMut};
use std::time::Duration;

use pbxlab_proto::digest;
use pbxlab_proto::sip::{HeaderName, Message};

use super::{Engine, Nanos, REG_TIMER, ns, status_reason};
use crate::messages::MessageKind;
use crate::metrics::Metric;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RegState {
    Idle,
    Sent,
    Done,
}

#[derive(Debug, Clone)]
pub(super) struct Registration {
    pub(super) state: RegState,
    pub(super) intended: Nanos,
    pub(super) cseq: u32,
    pub(super) authed: bool,
    pub(super) retransmit_at: Nanos,
    pub(super) rto: Nanos,
    pub(super) timeout_at: Nanos,
    pub(super) armed_at: Nanos,
    pub(super) auth: String,
    /// When the binding is refreshed (at 80% of its lifetime, as phones do), while the run
    /// goes on; `Nanos::MAX` when not yet registered.
    pub(super) refresh_at: Nanos,
    /// This attempt is a refresh, not the user's first registration.
    pub(super) refreshing: bool,
    /// When this attempt's first REGISTER left.
    pub(super) sent: Nanos,
    /// The last attempt ended in a 2xx: the binding is in force (a failed refresh or
    /// unregistration clears it).
    pub(super) bound: bool,
}

/// How long after a request its digest challenge (401/407) comes back: smoothed as RFC 6298
/// smooths TCP's round trip, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChallengeRtt {
    srtt: u64,
    rttvar: u64,
}

impl ChallengeRtt {
    fn first(sample: Nanos) -> ChallengeRtt {
        ChallengeRtt {
            srtt: sample,
            rttvar: sample / 2,
        }
    }

    /// Takes one round trip into `rtt` (the first one starts it).
    pub(super) fn sample(rtt: &mut Option<ChallengeRtt>, sample: Nanos) {
        match rtt {
            Some(r) => {
                r.rttvar = (3 * r.rttvar + r.srtt.abs_diff(sample)) / 4;
                r.srtt = (7 * r.srtt + sample) / 8;
            }
            None => *rtt = Some(ChallengeRtt::first(sample)),
        }
    }

    /// By then most challenges to a request sent now have come back.
    fn expected(&self) -> Nanos {
        self.srtt + 2 * self.rttvar
    }
}

/// The registrations of this shard's users, in the order of `Config::users`.
#[derive(Debug)]
pub(super) struct Registrations {
    list: Vec<Registration>,
    /// First registrations started, and finished (either way).
    pub(super) started: usize,
    pub(super) finished: usize,
    /// When the registration phase began.
    pub(super) phase: Nanos,
}

impl Registrations {
    pub(super) fn new(users: usize) -> Registrations {
        let list = (0..users)
            .map(|_| Registration {
                state: RegState::Idle,
                intended: 0,
                cseq: 0,
                authed: false,
                retransmit_at: Nanos::MAX,
                rto: 0,
                timeout_at: Nanos::MAX,
                armed_at: Nanos::MAX,
                auth: String::new(),
                refresh_at: Nanos::MAX,
                bound: false,
                refreshing: false,
                sent: 0,
            })
            .collect();
        Registrations {
            list,
            started: 0,
            finished: 0,
            phase: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn get(&self, i: usize) -> Option<&Registration> {
        self.list.get(i)
    }

    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut Registration> {
        self.list.get_mut(i)
    }
}

impl Index<usize> for Registrations {
    type Output = Registration;

    fn index(&self, i: usize) -> &Registration {
        &self.list[i]
    }
}

impl IndexMut<usize> for Registrations {
    fn index_mut(&mut self, i: usize) -> &mut Registration {
        &mut self.list[i]
    }
}

/// The timing of digest challenges: how long they take to come back, per kind of request, and
/// when those to the requests sent last are due.
#[derive(Debug, Default)]
pub(super) struct Challenges {
    /// Challenge round trips of REGISTERs and of INVITEs, once one has been challenged.
    pub(super) register: Option<ChallengeRtt>,
    pub(super) invite: Option<ChallengeRtt>,
    /// When the challenges to the requests sent last are due back (see
    /// `Engine::challenges_due`).
    due: Option<Nanos>,
}

impl Challenges {
    /// A request that may be challenged left at `now`: its challenge, if it comes back as the
    /// others did, is due at `now` plus their round trip.
    pub(super) fn expect(&mut self, now: Nanos, rtt: Option<ChallengeRtt>) {
        let Some(rtt) = rtt else { return };
        let at = now.saturating_add(rtt.expected());
        self.due = Some(match self.due {
            Some(due) if due > now => due.min(at),
            _ => at,
        });
    }
}

impl Engine {
    pub(super) fn start_register(&mut self, now: Nanos, intended: Nanos, i: usize) {
        self.begin_register(now, intended, i, 1, false);
    }

    /// Renews a binding before it lapses: the same Call-ID, the next CSeq (RFC 3261 10.2.4).
    fn refresh_register(&mut self, now: Nanos, i: usize) {
        let cseq = self.regs.get(i).map_or(1, |r| r.cseq + 1);
        self.begin_register(now, now, i, cseq, true);
    }

    fn begin_register(&mut self, now: Nanos, intended: Nanos, i: usize, cseq: u32, refresh: bool) {
        self.metrics.registrations.attempted += 1;
        if !refresh {
            self.metrics.register_starts.at(now);
        }
        let t1 = self.t1();
        let r = &mut self.regs[i];
        r.state = RegState::Sent;
        r.refreshing = refresh;
        r.intended = intended;
        r.cseq = cseq;
        r.authed = false;
        r.auth.clear();
        r.rto = t1;
        r.retransmit_at = now + t1;
        r.timeout_at = now + 64 * t1;
        r.sent = now;
        self.wire.register(&self.cfg, i, &self.regs[i]);
        self.arm(REG_TIMER + i as u32);
        self.challenges.expect(now, self.challenges.register);
    }

    /// When the driver should read once more before its next tick, to answer the digest
    /// challenges to requests it has just sent: the challenges of the run so far came back by
    /// then. `None` until a request has been challenged. Answered at the next tick instead, a
    /// challenge would add up to a tick of the generator's own turnaround to `register` (or
    /// `setup`), which run from the first request to the final response.
    pub fn challenges_due(&self) -> Option<Nanos> {
        self.challenges.due
    }

    pub(super) fn reg_timer(&mut self, now: Nanos, i: usize) {
        let t2 = ns(self.cfg.t2);
        let stopping = self.stopping;
        let Some(r) = self.regs.get_mut(i) else {
            return;
        };
        if r.state == RegState::Done && now >= r.refresh_at {
            r.refresh_at = Nanos::MAX;
            if !stopping {
                self.refresh_register(now, i);
            }
            return;
        }
        if r.state != RegState::Sent {
            return;
        }
        if now >= r.timeout_at {
            self.messages.timed_out(MessageKind::Request("REGISTER"));
            self.timed_out(now);
            self.finish_register(i, Err("REGISTER timeout"));
            return;
        }
        if now >= r.retransmit_at {
            self.messages
                .retransmitted(MessageKind::Request("REGISTER"));
            r.rto = (r.rto * 2).min(t2);
            r.retransmit_at = now + r.rto;
            self.wire.register(&self.cfg, i, &self.regs[i]);
            self.arm(REG_TIMER + i as u32);
        }
    }

    fn finish_register(&mut self, i: usize, result: Result<Nanos, &str>) {
        let lifetime = u64::from(self.cfg.expires_s) * 800_000_000;
        let r = &mut self.regs[i];
        r.state = RegState::Done;
        r.bound = result.is_ok();
        r.auth = String::new();
        let intended = r.intended;
        let refreshed = std::mem::take(&mut r.refreshing);
        if let Ok(now) = result
            && lifetime > 0
        {
            r.refresh_at = now.saturating_add(lifetime);
        }
        match result {
            Ok(now) => {
                self.metrics.registrations.succeeded += 1;
                if refreshed {
                    self.metrics.registrations_refreshed += 1;
                }
                self.metrics.record(
                    Metric::Register,
                    Duration::from_nanos(now.saturating_sub(intended)),
                );
            }
            Err(reason) => {
                self.metrics.registrations.failed += 1;
                self.metrics.fail(reason);
            }
        }
        if refreshed {
            // A refresh is not a first registration: the phase bookkeeping below is done.
            return;
        }
        self.regs.finished += 1;
        if self.regs.finished == self.regs.len() && self.call_phase.is_none() {
            self.call_phase = Some(match result {
                Ok(now) => now,
                Err(_) => self.regs.list.iter().map(|r| r.intended).max().unwrap_or(0),
            });
        }
    }

    pub(super) fn on_register_response(&mut self, now: Nanos, i: usize, msg: &Message<'_>) {
        let Some(code) = msg.code() else { return };
        let Some(r) = self.regs.get(i) else { return };
        if r.state != RegState::Sent || msg.cseq().map(|c| c.seq) != Some(r.cseq) || code < 200 {
            return;
        }
        match code {
            200..=299 => self.finish_register(i, Ok(now)),
            401 | 407 if !r.authed => {
                // Only a request sent once times its challenge (Karn's rule).
                if r.rto == self.t1() {
                    ChallengeRtt::sample(&mut self.challenges.register, now.saturating_sub(r.sent));
                }
                let header = if code == 401 {
                    HeaderName::WwwAuthenticate
                } else {
                    HeaderName::ProxyAuthenticate
                };
                let uri = format!("sip:{}", self.cfg.domain);
                let Some(line) = self.authorization(msg, header, code, i, "REGISTER", &uri) else {
                    self.finish_register(i, Err("unusable digest challenge"));
                    return;
                };
                let t1 = self.t1();
                let r = &mut self.regs[i];
                r.authed = true;
                r.auth = line;
                r.cseq += 1;
                r.rto = t1;
                r.retransmit_at = now + t1;
                self.wire.register(&self.cfg, i, &self.regs[i]);
                self.arm(REG_TIMER + i as u32);
            }
            _ => self.finish_register(i, Err(&status_reason(code))),
        }
    }

    /// The Authorization (or Proxy-Authorization) header line answering a challenge with the
    /// credentials of our user `user` (an index into `Config::users`).
    pub(super) fn authorization(
        &mut self,
        msg: &Message<'_>,
        header: HeaderName,
        code: u16,
        user: usize,
        method: &str,
        uri: &str,
    ) -> Option<String> {
        let value = msg.header(header)?;
        let challenge = digest::parse_challenge(value).ok()?;
        let cnonce = format!("{:016x}", self.rng.next());
        // Without a table of users, callers are numbers (`wire::UserPart`), their passwords
        // the rule's.
        let numbered;
        let (username, password) = match self.cfg.users.get(user) {
            Some(u) => (u.username, u.password),
            None if self.cfg.users.is_empty() => {
                let n = 1000 + u64::try_from(user).ok()?;
                numbered = (n.to_string(), self.cfg.callers_password.of(n));
                (numbered.0.as_str(), numbered.1.as_str())
            }
            None => return None,
        };
        let mut out = String::with_capacity(300);
        out.push_str(if code == 401 {
            "Authorization: "
        } else {
            "Proxy-Authorization: "
        });
        digest::write_authorization(
            &mut out, &challenge, username, password, method, uri, &cnonce, 1,
        );
        out.push_str("\r\n");
        Some(out)
    }
}
