//! The health prober: when to probe each server, which answers count, when a silence becomes a
//! timed-out probe, and when a silence of most of the cluster says more about the prober's own
//! host than about the servers.
//!
//! Sans-IO like the rest of the crate: the driver asks for the next deadline, calls
//! [`Prober::advance`] at it, sends the probes it is told to (an OPTIONS over UDP live, nothing
//! in virtual time), hands back answers with [`Prober::answer`], and gives every result that
//! comes out to [`crate::Balancer::probe`]. The Call Manager and the planner both drive this one
//! model, so `plan` predicts the detection a drill measures.
//!
//! Rounds keep to a fixed grid (`k × interval` from the prober's start): every watched server is
//! probed at a round's start and judged `timeout` later. Timed from when each round actually
//! ran, a driver woken a millisecond late would stretch every interval and detection would
//! drift past its bound; a driver that misses whole rounds (a stalled thread) skips them rather
//! than bursting to catch up.

use std::time::Duration;

use crate::{HealthConfig, Probe, ServerId};

/// Rounds in a row that may be put down to the prober's own trouble before a mass silence is
/// believed (a load balancer's panic threshold).
pub const MAX_INCONCLUSIVE_ROUNDS: u32 = 5;
/// Below this many watched servers every silence counts: with one or two servers "most of the
/// cluster" is no evidence about the prober.
pub const PANIC_MIN_WATCHED: usize = 3;

/// What the driver must do after [`Prober::advance`].
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeAction {
    /// Send probe number `seq` to the server.
    Send { server: ServerId, seq: u32 },
    /// Give this result to the balancer (`Balancer::probe`).
    Record { server: ServerId, result: Probe },
}

/// Counters a status page shows beside the servers.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProberStats {
    /// Rounds not counted because most of the cluster was silent at once.
    pub rounds_ignored: u64,
    /// Answers that came after their probe had been judged timed out.
    pub late: u64,
    /// Answers that matched no probe sent to that server (a stale or a forged one).
    pub unmatched: u64,
    pub rtt_max: Duration,
}

/// Where a server's latest probe stands.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Latest {
    #[default]
    None,
    Pending,
    Answered,
    /// Judged silent: an answer to it now is late.
    TimedOut,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, Default)]
struct Target {
    watched: bool,
    seq: u32,
    latest: Latest,
    last_rtt: Option<Duration>,
}

/// The health prober of one Call Manager (or one simulated one). See the module docs.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct Prober {
    cfg: HealthConfig,
    targets: Vec<Target>,
    next_round: Duration,
    /// The open round's start, until it is judged.
    open: Option<Duration>,
    inconclusive: u32,
    stats: ProberStats,
}

impl Prober {
    /// A prober whose first round is at `first_round` (the grid is `first_round + k × interval`).
    pub fn new(cfg: HealthConfig, first_round: Duration) -> Prober {
        Prober {
            cfg,
            targets: Vec::new(),
            next_round: first_round,
            open: None,
            inconclusive: 0,
            stats: ProberStats::default(),
        }
    }

    pub fn health(&self) -> HealthConfig {
        self.cfg
    }

    /// Starts probing a server from the next round on.
    pub fn watch(&mut self, server: ServerId) {
        let i = server.0 as usize;
        if self.targets.len() <= i {
            self.targets.resize(i + 1, Target::default());
        }
        let t = &mut self.targets[i];
        t.watched = true;
        t.latest = Latest::None;
    }

    /// Stops probing a server (removed from the cluster); an answer still in flight is ignored.
    pub fn forget(&mut self, server: ServerId) {
        if let Some(t) = self.targets.get_mut(server.0 as usize) {
            t.watched = false;
            t.latest = Latest::None;
        }
    }

    pub fn is_watched(&self, server: ServerId) -> bool {
        self.targets
            .get(server.0 as usize)
            .is_some_and(|t| t.watched)
    }

    /// When [`Prober::advance`] next has something to do.
    pub fn next_deadline(&self) -> Duration {
        match self.open {
            // The next round waits until this one is judged.
            Some(sent) => sent + self.cfg.timeout,
            None => self.next_round,
        }
    }

    /// A round has started and not been judged yet.
    pub fn round_open(&self) -> bool {
        self.open.is_some()
    }

    /// The start of the next round on the grid.
    pub fn next_round(&self) -> Duration {
        self.next_round
    }

    /// Judges the open round if its timeout has passed, then starts a round if one is due.
    /// Probes to send and results to record are appended to `out`, results first.
    pub fn advance(&mut self, now: Duration, out: &mut Vec<ProbeAction>) {
        if let Some(sent) = self.open {
            if now < sent + self.cfg.timeout {
                // Its answers still have time: the next round waits until it is judged.
                return;
            }
            self.judge(out);
        }
        if now < self.next_round {
            return;
        }
        for (i, t) in self.targets.iter_mut().enumerate() {
            if !t.watched {
                continue;
            }
            t.seq = t.seq.wrapping_add(1);
            t.latest = Latest::Pending;
            out.push(ProbeAction::Send {
                server: ServerId(i as u32),
                seq: t.seq,
            });
        }
        // Judged `timeout` after the probes actually left: a driver that runs late must not
        // eat into the time its nodes have to answer (nor inflate their round-trip times).
        self.open = Some(now);
        let interval = self.cfg.interval.max(Duration::from_nanos(1));
        // The first grid point after `now`: missed rounds are skipped, not sent in a burst.
        let behind = (now - self.next_round).as_nanos() / interval.as_nanos();
        self.next_round += interval * (behind as u32 + 1);
    }

    /// Declares that every watched server answered every round up to `now` without the driver
    /// having run them, and moves the grid on. For a driver that knows the outcomes (the
    /// planner, while every server is up and healthy); results it would have recorded are all
    /// `Ok` to servers already counted healthy, which change nothing in the balancer.
    /// Rounds that start at `now` or later are left to [`Prober::advance`].
    pub fn skip_to(&mut self, now: Duration) {
        if self.open.is_some() || now <= self.next_round {
            return;
        }
        let interval = self.cfg.interval.max(Duration::from_nanos(1)).as_nanos();
        let skipped = (now - self.next_round).as_nanos().div_ceil(interval) as u64;
        for t in self.targets.iter_mut().filter(|t| t.watched) {
            t.seq = t.seq.wrapping_add(skipped as u32);
            t.latest = Latest::Answered;
        }
        self.inconclusive = 0;
        self.next_round += Duration::from_nanos((interval * u128::from(skipped)) as u64);
    }

    /// An answer from `server` to probe `seq`, `healthy` if it said so (a 2xx to OPTIONS).
    /// Returns the result to record, if the answer counts: it must match the server's open
    /// probe and come within the timeout. Late and unmatched answers are only counted.
    pub fn answer(
        &mut self,
        now: Duration,
        server: ServerId,
        seq: u32,
        healthy: bool,
    ) -> Option<Probe> {
        let Some(t) = self.targets.get_mut(server.0 as usize) else {
            self.stats.unmatched += 1;
            return None;
        };
        if !t.watched || t.seq != seq {
            self.stats.unmatched += 1;
            return None;
        }
        let start = match (t.latest, self.open) {
            (Latest::Pending, Some(start)) => start,
            (Latest::TimedOut, _) => {
                self.stats.late += 1;
                return None;
            }
            // A repeated answer, or one to a probe never sent.
            _ => return None,
        };
        let rtt = now.saturating_sub(start);
        self.stats.rtt_max = self.stats.rtt_max.max(rtt);
        if rtt > self.cfg.timeout {
            // Its timeout has passed but the round has not been judged yet: it still timed out.
            return None;
        }
        t.latest = Latest::Answered;
        t.last_rtt = Some(rtt);
        Some(if healthy { Probe::Ok } else { Probe::Failed })
    }

    /// Round-trip time of the server's last answered probe.
    pub fn rtt(&self, server: ServerId) -> Option<Duration> {
        self.targets.get(server.0 as usize)?.last_rtt
    }

    pub fn stats(&self) -> ProberStats {
        self.stats
    }

    fn judge(&mut self, out: &mut Vec<ProbeAction>) {
        self.open = None;
        let watched = self.targets.iter().filter(|t| t.watched).count();
        let first = out.len();
        for (i, t) in self.targets.iter_mut().enumerate() {
            if t.latest == Latest::Pending {
                t.latest = Latest::TimedOut;
                if t.watched {
                    out.push(ProbeAction::Record {
                        server: ServerId(i as u32),
                        result: Probe::Timeout,
                    });
                }
            }
        }
        let silent = out.len() - first;
        // More than half the cluster silent in the same round says more about the prober's own
        // host or network (a stalled thread, a saturated machine) than about the servers: such
        // a round is not counted, for a few rounds. Longer, it is a real outage and counts.
        // The count restarts only on a round that is not a mass silence, so a real outage,
        // once believed, keeps counting.
        if watched >= PANIC_MIN_WATCHED && silent * 2 > watched {
            if self.inconclusive < MAX_INCONCLUSIVE_ROUNDS {
                self.inconclusive += 1;
                self.stats.rounds_ignored += 1;
                out.truncate(first);
            }
            return;
        }
        self.inconclusive = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> HealthConfig {
        HealthConfig::new(100 * MS, 40 * MS, 3, 2).expect("valid")
    }

    fn prober(servers: u32) -> Prober {
        let mut p = Prober::new(cfg(), Duration::ZERO);
        for s in 0..servers {
            p.watch(ServerId(s));
        }
        p
    }

    /// Runs rounds up to `until`, answering every probe at once except those of `silent`;
    /// returns the recorded results with their times.
    fn run(p: &mut Prober, until: Duration, silent: &[u32]) -> Vec<(Duration, ServerId, Probe)> {
        let mut results = Vec::new();
        let mut out = Vec::new();
        while p.next_deadline() <= until {
            let now = p.next_deadline();
            p.advance(now, &mut out);
            for a in out.drain(..) {
                match a {
                    ProbeAction::Send { server, seq } if !silent.contains(&server.0) => {
                        if let Some(r) = p.answer(now + MS, server, seq, true) {
                            results.push((now + MS, server, r));
                        }
                    }
                    ProbeAction::Send { .. } => {}
                    ProbeAction::Record { server, result } => results.push((now, server, result)),
                }
            }
        }
        results
    }

    #[test]
    fn a_silent_server_times_out_once_per_round_on_the_grid() {
        let mut p = prober(3);
        let r = run(&mut p, 350 * MS, &[1]);
        let timeouts: Vec<Duration> = r
            .iter()
            .filter(|(_, s, res)| *s == ServerId(1) && *res == Probe::Timeout)
            .map(|(t, ..)| *t)
            .collect();
        assert_eq!(timeouts, [40 * MS, 140 * MS, 240 * MS, 340 * MS]);
        let oks = r.iter().filter(|(_, _, res)| *res == Probe::Ok).count();
        assert_eq!(oks, 8, "two servers answered in each of four rounds");
    }

    #[test]
    fn only_an_answer_to_the_open_probe_within_the_timeout_counts() {
        let mut p = prober(1);
        let mut out = Vec::new();
        p.advance(Duration::ZERO, &mut out);
        assert_eq!(
            out,
            [ProbeAction::Send {
                server: ServerId(0),
                seq: 1
            }]
        );
        assert_eq!(
            p.answer(5 * MS, ServerId(0), 2, true),
            None,
            "wrong sequence"
        );
        assert_eq!(
            p.answer(5 * MS, ServerId(7), 1, true),
            None,
            "no such server"
        );
        assert_eq!(p.stats().unmatched, 2);
        assert_eq!(
            p.answer(41 * MS, ServerId(0), 1, true),
            None,
            "after its timeout"
        );
        out.clear();
        p.advance(40 * MS, &mut out);
        assert_eq!(
            out,
            [ProbeAction::Record {
                server: ServerId(0),
                result: Probe::Timeout
            }]
        );
        assert_eq!(p.answer(45 * MS, ServerId(0), 1, true), None);
        assert_eq!(p.stats().late, 1);
        out.clear();
        p.advance(100 * MS, &mut out);
        assert_eq!(
            p.answer(110 * MS, ServerId(0), 2, false),
            Some(Probe::Failed)
        );
        assert_eq!(
            p.answer(111 * MS, ServerId(0), 2, true),
            None,
            "a repeat changes nothing"
        );
        assert_eq!(p.rtt(ServerId(0)), Some(10 * MS));
    }

    #[test]
    fn a_mass_silence_is_ignored_for_a_few_rounds_then_believed() {
        let mut p = prober(4);
        let r = run(&mut p, 1_000 * MS, &[0, 1, 2]);
        let first = r
            .iter()
            .find(|(_, _, res)| *res == Probe::Timeout)
            .map(|(t, ..)| *t);
        let skipped = u64::from(MAX_INCONCLUSIVE_ROUNDS);
        assert_eq!(first, Some(MS * (skipped as u32 * 100 + 40)));
        assert_eq!(
            p.stats().rounds_ignored,
            skipped,
            "and then every round counts"
        );
        let timeouts = r
            .iter()
            .filter(|(_, _, res)| *res == Probe::Timeout)
            .count();
        assert_eq!(timeouts, 3 * (10 - skipped as usize));
        // Two of four silent is not "most": counted at once.
        let mut p = prober(4);
        let r = run(&mut p, 50 * MS, &[0, 1]);
        assert_eq!(
            r.iter()
                .filter(|(_, _, res)| *res == Probe::Timeout)
                .count(),
            2
        );
    }

    #[test]
    fn a_late_driver_skips_missed_rounds_and_stays_on_the_grid() {
        let mut p = prober(1);
        let mut out = Vec::new();
        p.advance(Duration::ZERO, &mut out);
        out.clear();
        // Woken 250 ms late: the open round is judged and one new round starts, not three.
        p.advance(350 * MS, &mut out);
        let sends = out
            .iter()
            .filter(|a| matches!(a, ProbeAction::Send { .. }))
            .count();
        assert_eq!(sends, 1);
        assert!(out.contains(&ProbeAction::Record {
            server: ServerId(0),
            result: Probe::Timeout
        }));
        assert_eq!(p.next_round(), 400 * MS);
    }

    #[test]
    fn skipping_rounds_of_known_answers_keeps_the_grid_and_the_detection() {
        let mut lazy = prober(3);
        lazy.skip_to(730 * MS);
        assert_eq!(lazy.next_round(), 800 * MS);
        lazy.skip_to(800 * MS);
        assert_eq!(
            lazy.next_round(),
            800 * MS,
            "a round due now is not skipped"
        );
        let mut full = prober(3);
        run(&mut full, 730 * MS, &[]);
        assert_eq!(full.next_round(), lazy.next_round());
        let a = run(&mut lazy, 1_200 * MS, &[2]);
        let b = run(&mut full, 1_200 * MS, &[2]);
        assert_eq!(a, b);
    }

    /// A driver 30 ms late for a round (of a 40 ms timeout) still gives its nodes the whole
    /// timeout from when the probes left, and the next round waits for the judgement.
    #[test]
    fn the_timeout_runs_from_when_the_probes_left() {
        let mut p = prober(1);
        let mut out = Vec::new();
        p.advance(Duration::ZERO, &mut out);
        assert_eq!(p.answer(MS, ServerId(0), 1, true), Some(Probe::Ok));
        out.clear();
        p.advance(130 * MS, &mut out);
        assert_eq!(
            out,
            [ProbeAction::Send {
                server: ServerId(0),
                seq: 2
            }]
        );
        assert_eq!(p.next_deadline(), 170 * MS);
        assert_eq!(p.answer(160 * MS, ServerId(0), 2, true), Some(Probe::Ok));
        assert_eq!(p.rtt(ServerId(0)), Some(30 * MS));
        // Sent at 195 ms, the round due at 200 ms waits until 235 ms, when this one is judged.
        let mut p = prober(1);
        p.advance(Duration::ZERO, &mut out);
        p.advance(40 * MS, &mut out);
        out.clear();
        p.advance(195 * MS, &mut out);
        p.advance(200 * MS, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        p.advance(235 * MS, &mut out);
        assert_eq!(
            out[1..],
            [
                ProbeAction::Record {
                    server: ServerId(0),
                    result: Probe::Timeout
                },
                ProbeAction::Send {
                    server: ServerId(0),
                    seq: 3
                },
            ]
        );
    }
}
