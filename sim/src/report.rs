//! What `pbxlab plan` reports: the stable JSON schema (field names are an interface; add, never
//! rename) and its rendering as tables for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Estimate;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub batches: u32,
    /// How far virtual time got: the duration, or less when the run was interrupted.
    pub simulated_s: f64,
    pub interrupted: bool,
    pub events: u64,
    /// Wall-clock seconds and events per second; null with `--no-wall-clock`, so a report can
    /// be compared byte for byte.
    pub wall_s: Option<f64>,
    pub events_per_s: Option<f64>,
    pub roles: BTreeMap<String, RoleReport>,
    pub registrations: Option<RegistrationReport>,
    /// The length of a bucket of the servers' `timeline`s, simulated seconds.
    pub timeline_bucket_s: f64,
    pub servers: Vec<ServerReport>,
    pub faults: Vec<FaultReport>,
    pub slo: Vec<SloVerdict>,
    pub warnings: Vec<String>,
}

/// One role's pool. Counts are of sessions offered after warm-up (meetings: whole meetings;
/// im: user log-ins); `*_ci95` are batch-means half-widths.
#[derive(Debug, Clone, Serialize)]
pub struct RoleReport {
    pub servers: usize,
    pub capacity: u64,
    pub offered: u64,
    pub admitted: u64,
    pub blocked: u64,
    pub blocking: f64,
    pub blocking_ci95: Option<f64>,
    /// Sessions ended by a failover that found no room for them.
    pub dropped: u64,
    pub offered_erlangs: Option<f64>,
    /// Erlang B blocking for the pool's total capacity; null where the model does not apply
    /// (multi-slot meetings, queues, IM, a daily profile).
    pub erlang_b: Option<f64>,
    pub mean_sessions: f64,
    pub peak_sessions: u64,
    pub utilisation: f64,
    #[serde(flatten)]
    pub queue: Option<QueueReport>,
    #[serde(skip)]
    pub blocking_est: Estimate,
}

/// Callers offered to agents (admitted by the queue pool), resolved by the end of the run.
#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    pub queues: u32,
    pub agents_per_queue: u32,
    pub callers: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub p_wait: f64,
    pub p_wait_ci95: Option<f64>,
    pub asa_s: f64,
    pub asa_s_ci95: Option<f64>,
    pub service_level_s: f64,
    pub service_level: f64,
    pub service_level_ci95: Option<f64>,
    pub abandoned_fraction: f64,
    pub abandoned_fraction_ci95: Option<f64>,
    pub erlang_c_p_wait: Option<f64>,
    pub erlang_c_asa_s: Option<f64>,
    pub erlang_c_service_level: Option<f64>,
    pub erlang_a_p_wait: Option<f64>,
    pub erlang_a_asa_s: Option<f64>,
    pub erlang_a_service_level: Option<f64>,
    pub erlang_a_abandoned_fraction: Option<f64>,
    #[serde(skip)]
    pub estimates: QueueEstimates,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueEstimates {
    pub p_wait: Estimate,
    pub asa_s: Estimate,
    pub service_level: Estimate,
    pub abandoned_fraction: Estimate,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegistrationReport {
    pub users: u32,
    pub expires_s: f64,
    /// REGISTER transactions per second after warm-up (refreshes).
    pub register_per_s: f64,
    /// SIP requests per second at the registrar: each REGISTER is challenged once (401).
    pub requests_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    pub name: String,
    pub role: String,
    pub capacity: u32,
    pub state: String,
    pub peak_sessions: u64,
    pub mean_sessions: f64,
    pub utilisation: f64,
    /// Mean sessions in each bucket of `timeline_bucket_s` from the run's start (warm-up
    /// included) to where it got: at most 200 buckets.
    pub timeline: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub at_s: f64,
    pub server: String,
    pub action: String,
    /// Sessions on the server when the balancer acted (for `fail`: when it noticed).
    pub sessions_affected: u64,
    pub reassigned: u64,
    pub dropped: u64,
    /// For `fail`: virtual seconds from the fault to the balancer marking the server down.
    pub detected_after_s: Option<f64>,
    pub alert: bool,
    /// For a fault of a Call Manager: what its takeover cost.
    pub takeover: Option<TakeoverReport>,
}

/// What a Call Manager fault costs in the planner's model: while no Call Manager answers,
/// new attempts are lost and sent again on SIP's timers (an INVITE 0.5, 1.5, 3.5 ... s after
/// its first try, until Timer B's 32 s), and are placed when a retransmission finds the new
/// active; calls already up are unaffected (the standbys hold their state).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TakeoverReport {
    /// Seconds without a Call Manager answering (0: the fault did not hit the active).
    pub outage_s: f64,
    /// The Call Manager serving afterwards, if any.
    pub next: Option<String>,
    /// Attempts that arrived during the outage, placed late by a retransmission, and given
    /// up (Timer B ran out before any Call Manager answered).
    pub attempts_delayed: u64,
    pub attempts_failed: u64,
    /// How late the delayed attempts were placed, mean and worst.
    pub delay_mean_s: f64,
    pub delay_max_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SloVerdict {
    pub name: String,
    pub target: f64,
    pub value: f64,
    pub pass: bool,
}

/// A length of (virtual or wall) time for people: "45 s", "12.5 min", "2 h", "3.1 d".
pub fn human_duration(s: f64) -> String {
    let (value, unit) = if !s.is_finite() {
        return "-".into();
    } else if s < 120.0 {
        (s, "s")
    } else if s < 7_200.0 {
        (s / 60.0, "min")
    } else if s < 172_800.0 {
        (s / 3_600.0, "h")
    } else {
        (s / 86_400.0, "d")
    };
    let text = format!("{value:.1}");
    format!("{} {unit}", text.strip_suffix(".0").unwrap_or(&text))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "-".into(),
    }
}

fn pm(v: f64, ci: Option<f64>, digits: usize) -> String {
    match ci {
        Some(c) if c.is_finite() => format!("{v:.digits$} ±{c:.digits$}"),
        _ => format!("{v:.digits$}"),
    }
}

impl Report {
    /// The report as tables for a terminal.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "scenario {:?}  seed {}  simulated {:.0} s (warm-up {:.0} s, {} batches){}",
            self.scenario,
            self.seed,
            self.simulated_s,
            self.warmup_s,
            self.batches,
            if self.interrupted {
                "  INTERRUPTED"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "\n{:<8} {:>4} {:>8} {:>9} {:>9} {:>8} {:>16} {:>9} {:>9} {:>7} {:>6} {:>7}",
            "role",
            "srv",
            "capacity",
            "offered",
            "admitted",
            "blocked",
            "blocking ±95%",
            "erlang B",
            "mean",
            "peak",
            "util",
            "dropped"
        );
        for (name, r) in &self.roles {
            let _ = writeln!(
                o,
                "{:<8} {:>4} {:>8} {:>9} {:>9} {:>8} {:>16} {:>9} {:>9.1} {:>7} {:>5.1}% {:>7}",
                name,
                r.servers,
                r.capacity,
                r.offered,
                r.admitted,
                r.blocked,
                pm(r.blocking, r.blocking_ci95, 5),
                opt(r.erlang_b, 5),
                r.mean_sessions,
                r.peak_sessions,
                r.utilisation * 100.0,
                r.dropped
            );
        }
        if let Some(q) = self.roles.get("queue").and_then(|r| r.queue.as_ref()) {
            let _ = writeln!(
                o,
                "\nqueues: {} x {} agents, {} callers, {} answered, {} abandoned",
                q.queues, q.agents_per_queue, q.callers, q.answered, q.abandoned
            );
            let _ = writeln!(
                o,
                "{:<20} {:>18} {:>10} {:>10}",
                "", "simulated ±95%", "erlang C", "erlang A"
            );
            let rows = [
                (
                    "P(wait)",
                    pm(q.p_wait, q.p_wait_ci95, 4),
                    opt(q.erlang_c_p_wait, 4),
                    opt(q.erlang_a_p_wait, 4),
                ),
                (
                    "ASA s",
                    pm(q.asa_s, q.asa_s_ci95, 2),
                    opt(q.erlang_c_asa_s, 2),
                    opt(q.erlang_a_asa_s, 2),
                ),
                (
                    &format!("service level {:.0}s", q.service_level_s),
                    pm(q.service_level, q.service_level_ci95, 4),
                    opt(q.erlang_c_service_level, 4),
                    opt(q.erlang_a_service_level, 4),
                ),
                (
                    "abandoned",
                    pm(q.abandoned_fraction, q.abandoned_fraction_ci95, 4),
                    "0".into(),
                    opt(q.erlang_a_abandoned_fraction, 4),
                ),
            ];
            for (label, sim, c, a) in rows {
                let _ = writeln!(o, "{label:<20} {sim:>18} {c:>10} {a:>10}");
            }
        }
        if let Some(r) = &self.registrations {
            let _ = writeln!(
                o,
                "\nregistrations: {} users, expires {:.0} s: {:.1} REGISTER/s, {:.1} requests/s with digest challenges",
                r.users, r.expires_s, r.register_per_s, r.requests_per_s
            );
        }
        let _ = writeln!(
            o,
            "\n{:<14} {:<8} {:>9} {:<9} {:>9} {:>10} {:>6}",
            "server", "role", "capacity", "state", "peak", "mean", "util"
        );
        for s in &self.servers {
            let _ = writeln!(
                o,
                "{:<14} {:<8} {:>9} {:<9} {:>9} {:>10.1} {:>5.1}%",
                s.name,
                s.role,
                s.capacity,
                s.state,
                s.peak_sessions,
                s.mean_sessions,
                s.utilisation * 100.0
            );
        }
        if !self.faults.is_empty() {
            let _ = writeln!(
                o,
                "\n{:>9} {:<14} {:<8} {:>9} {:>9} {:>10} {:>8} {:>6}",
                "at s",
                "server",
                "action",
                "detected",
                "affected",
                "reassigned",
                "dropped",
                "alert"
            );
            for f in &self.faults {
                let _ = writeln!(
                    o,
                    "{:>9.1} {:<14} {:<8} {:>9} {:>9} {:>10} {:>8} {:>6}",
                    f.at_s,
                    f.server,
                    f.action,
                    f.detected_after_s
                        .or(f.takeover.as_ref().map(|t| t.outage_s).filter(|&o| o > 0.0))
                        .map_or("-".into(), |d| format!("+{d:.1}s")),
                    f.sessions_affected,
                    f.reassigned,
                    f.dropped,
                    if f.alert { "yes" } else { "" }
                );
            }
            for f in &self.faults {
                let Some(t) = &f.takeover else { continue };
                if t.outage_s == 0.0 {
                    let _ = writeln!(
                        o,
                        "{:>9.1} {} {}: no outage of its own (serving after it: {})",
                        f.at_s,
                        f.action,
                        f.server,
                        t.next.as_deref().unwrap_or("none")
                    );
                    continue;
                }
                let _ = writeln!(
                    o,
                    "{:>9.1} {} {}: {} without a Call Manager answering{}; {} attempts in it \
                     placed by a retransmission (late by {:.2} s on average, {:.2} s at worst), \
                     {} given up; calls up unaffected",
                    f.at_s,
                    f.action,
                    f.server,
                    if t.outage_s > 0.0 {
                        format!("{:.3} s", t.outage_s)
                    } else {
                        "no time".to_owned()
                    },
                    t.next
                        .as_ref()
                        .map_or(String::new(), |n| format!(", then {n}")),
                    t.attempts_delayed,
                    t.delay_mean_s,
                    t.delay_max_s,
                    t.attempts_failed
                );
            }
        }
        if !self.slo.is_empty() {
            let _ = writeln!(o, "\nSLO");
            for v in &self.slo {
                let _ = writeln!(
                    o,
                    "  {:<28} {:>10.5} target {:>8} {}",
                    v.name,
                    v.value,
                    v.target,
                    if v.pass { "pass" } else { "FAIL" }
                );
            }
        }
        let _ = match (self.wall_s, self.events_per_s) {
            (Some(w), Some(r)) => writeln!(
                o,
                "\n{} events in {:.2} s wall: {:.2} M events/s",
                self.events,
                w,
                r / 1e6
            ),
            _ => writeln!(o, "\n{} events", self.events),
        };
        o
    }
}
