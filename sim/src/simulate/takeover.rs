//! The Call Managers behind the virtual IP, as the planner models them: which one is active,
//! how long a fault of it leaves nobody answering, and what that does to the attempts that
//! arrive meanwhile (the figures a `TakeoverReport` gives).
//!
//! The model follows `pbxlab_cluster::ha`: a failed or cut-off active is replaced once the
//! standbys have missed `misses` heartbeats (on average half a heartbeat of that has passed
//! before the fault) and the first of them has waited its skew (a third of a heartbeat per
//! place in the order, of three); an upgraded active resigns, so only the skew is waited.
//! Without a majority of Call Managers up, nobody answers until one comes back. An attempt
//! lost meanwhile is sent again on SIP's timers, 0.5, 1.5, 3.5 ... s after its first try, and
//! given up once Timer B (32 s) has run; calls already up are unaffected (their state is the
//! standbys' too), and the hang-ups of the window are counted at their time.

use pbxlab_scenario::{UPGRADE_RESTART, Verb};

use super::{Ev, Sim, Stream};
use crate::Error;
use crate::des::{Nanos, nanos_to_secs, secs_to_nanos};
use crate::report::TakeoverReport;

/// RFC 3261's T1 and Timer B (64 x T1).
const T1: Nanos = 500_000_000;
const TIMER_B: Nanos = 64 * T1;

/// The Call Managers' state in a planned run.
#[derive(Debug, Clone)]
pub(super) struct CmModel {
    names: Vec<String>,
    heartbeat: Nanos,
    silence: Nanos,
    /// Running and reachable.
    up: Vec<bool>,
    /// Holding the cluster's state: a Call Manager that starts afresh holds none until an
    /// active hands it a snapshot, and until then neither stands nor votes.
    synced: Vec<bool>,
    pub(super) active: Option<usize>,
    /// The last Call Manager that served: with a majority back, it serves again.
    last: usize,
    /// Nobody answers at the virtual IP before this.
    pub(super) outage_until: Nanos,
    /// The fault whose takeover is counted, by its place in the report, and when it began.
    counting: Option<(usize, Nanos)>,
    delay_sum: Nanos,
}

impl CmModel {
    pub(super) fn new(sc: &pbxlab_scenario::Scenario) -> CmModel {
        let names = sc.callmanager.names();
        let heartbeat = secs_to_nanos(sc.callmanager.heartbeat.as_secs_f64());
        CmModel {
            up: vec![true; names.len()],
            synced: vec![true; names.len()],
            active: (!names.is_empty()).then_some(0),
            last: 0,
            names,
            heartbeat,
            silence: heartbeat * u64::from(sc.callmanager.misses),
            outage_until: 0,
            counting: None,
            delay_sum: 0,
        }
    }

    pub(super) fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    fn skew(&self, i: usize) -> Nanos {
        self.heartbeat * i as u64 / self.names.len().max(1) as u64
    }

    fn holders(&self) -> usize {
        (0..self.names.len())
            .filter(|&i| self.up[i] && self.synced[i])
            .count()
    }

    /// After a change at `now`: the active goes on, is replaced after `wait` and the new
    /// one's skew, or (without a majority holding the state) nobody answers until one is back.
    fn settle(&mut self, now: Nanos, wait: Nanos) {
        let majority = self.holders() > self.names.len() / 2;
        match self.active {
            Some(a) if self.up[a] && majority => {}
            Some(_) | None if !majority => {
                if self.active.take().is_some() || self.outage_until <= now {
                    self.outage_until = Nanos::MAX;
                }
            }
            Some(_) => {
                // The active is gone: the first holder in the order stands.
                let next = (0..self.names.len()).find(|&i| self.up[i] && self.synced[i]);
                self.active = next;
                if let Some(n) = next {
                    self.last = n;
                    self.outage_until = now + wait + self.skew(n);
                }
            }
            None => {
                // A majority again: the last active, if it still holds the state, serves on
                // (its standbys renew its lease); else the first holder stands.
                let next = if self.up[self.last] && self.synced[self.last] {
                    Some(self.last)
                } else {
                    (0..self.names.len()).find(|&i| self.up[i] && self.synced[i])
                };
                self.active = next;
                if let Some(n) = next {
                    let resumes = n == self.last;
                    self.last = n;
                    self.outage_until = now + if resumes { 0 } else { self.skew(n) };
                }
            }
        }
        if self.active.is_some() {
            // An active hands every Call Manager that starts afresh its snapshot.
            for i in 0..self.names.len() {
                if self.up[i] {
                    self.synced[i] = true;
                }
            }
        }
    }
}

impl Sim<'_> {
    /// A fault of Call Manager `i` (the fault's report row is the last one).
    pub(super) fn cm_fault(&mut self, i: usize, action: Verb, now: Nanos) -> Result<(), Error> {
        let row = self.faults.len() - 1;
        let before = self.cm.active;
        let serving = now >= self.cm.outage_until;
        let mut wait = 0;
        match action {
            Verb::Fail => {
                (self.cm.up[i], self.cm.synced[i]) = (false, false);
                wait = self.cm.silence.saturating_sub(self.cm.heartbeat / 2);
            }
            Verb::Partition => {
                self.cm.up[i] = false;
                wait = self.cm.silence.saturating_sub(self.cm.heartbeat / 2);
            }
            // It resigns: the standbys need not wait out its silence.
            Verb::Upgrade => {
                (self.cm.up[i], self.cm.synced[i]) = (false, false);
                let back = now + secs_to_nanos(UPGRADE_RESTART.as_secs_f64());
                self.schedule(back, Ev::CmBack(i as u32))?;
            }
            _ => self.cm.up[i] = true,
        }
        self.cm.settle(now, wait);
        let stopped = serving && now < self.cm.outage_until;
        if let Some(f) = self.faults.get_mut(row) {
            f.takeover = Some(TakeoverReport {
                outage_s: if stopped {
                    nanos_to_secs(self.cm.outage_until.min(self.end) - now)
                } else {
                    0.0
                },
                next: self.cm.active.map(|a| self.cm.names[a].clone()),
                ..TakeoverReport::default()
            });
        }
        if stopped {
            self.cm.counting = Some((row, now));
            self.cm.delay_sum = 0;
        } else if before.is_none() {
            self.end_outage();
        }
        Ok(())
    }

    /// An upgraded Call Manager runs again.
    pub(super) fn cm_back(&mut self, i: usize, now: Nanos) {
        let before = self.cm.active;
        self.cm.up[i] = true;
        self.cm.settle(now, 0);
        if before.is_none() {
            self.end_outage();
        }
    }

    /// An outage without a majority has ended: its row learns how long it was.
    fn end_outage(&mut self) {
        let (until, name) = (
            self.cm.outage_until,
            self.cm.active.map(|a| self.cm.names[a].clone()),
        );
        if until == Nanos::MAX || self.cm.active.is_none() {
            return;
        }
        let end = self.end;
        if let Some((row, at)) = self.cm.counting
            && let Some(t) = self.faults.get_mut(row).and_then(|f| f.takeover.as_mut())
        {
            t.outage_s = nanos_to_secs(until.min(end).saturating_sub(at));
            t.next = name;
        }
    }

    /// An attempt of `stream` first tried at `first` finds nobody answering at `now`: it is
    /// tried again at its next retransmission that comes after the outage, or given up.
    pub(super) fn retry_later(
        &mut self,
        stream: Stream,
        first: Nanos,
        now: Nanos,
    ) -> Result<(), Error> {
        // Retransmissions 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s after the first try, all
        // within Timer B; while nobody knows when a Call Manager will answer again (no
        // majority), each is tried.
        let until = self.cm.outage_until;
        let next = (1..=6u32)
            .map(|k| first + T1 * ((1 << k) - 1))
            .find(|&t| t > now && (t >= until || until == Nanos::MAX) && t < first + TIMER_B);
        match next {
            None => {
                if let Some(t) = self.counting_mut() {
                    t.attempts_failed += 1;
                }
                Ok(())
            }
            Some(at) if at > self.end => Ok(()),
            Some(at) => self.schedule(at, Ev::Retry { stream, first }),
        }
    }

    /// A retransmitted attempt reaches the virtual IP: placed if someone answers.
    pub(super) fn retried(
        &mut self,
        stream: Stream,
        first: Nanos,
        now: Nanos,
    ) -> Result<(), Error> {
        if now < self.cm.outage_until {
            return self.retry_later(stream, first, now);
        }
        let delay = now - first;
        self.cm.delay_sum += delay;
        let sum = self.cm.delay_sum;
        if let Some(t) = self.counting_mut() {
            t.attempts_delayed += 1;
            t.delay_max_s = t.delay_max_s.max(nanos_to_secs(delay));
            t.delay_mean_s = nanos_to_secs(sum) / t.attempts_delayed as f64;
        }
        self.place(stream, now)
    }

    fn counting_mut(&mut self) -> Option<&mut TakeoverReport> {
        let (row, _) = self.cm.counting?;
        self.faults.get_mut(row).and_then(|f| f.takeover.as_mut())
    }
}
