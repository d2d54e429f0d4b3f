//! `pbxlab plan --size`: the smallest server count per role that meets the SLOs with any one
//! server of that role down (N+1), and a bill of materials for those servers.
//!
//! The search starts from the analytic answer where one exists (Erlang B for media and IVR
//! pools) and then lets the simulator decide: a candidate count is run with one of its servers
//! disabled for the whole run, on the scenario's seed, and the count moves down while the SLO
//! still holds or up until it does. Servers of a pool are identical, so which one is down does
//! not matter.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pbxlab_balancer::Role;
use serde::Serialize;

use crate::erlang::{self, QueueModel};
use crate::simulate::{Options, simulate};
use crate::{Error, Report};
use pbxlab_scenario::{Codec, FaultSpec, PoolSpec, Scenario, ServerSpec, SizingCosts, Verb};

/// Candidates tried per role before giving up.
const SEARCH_STEPS: u32 = 64;

/// Bandwidth of one RTP stream direction at 20 ms packetisation on Ethernet (IP + UDP + RTP +
/// Ethernet framing), kbit/s: G.711 87.2, G.729 31.2, Opus (24 kbit/s payload) 47.2.
pub fn kbps_per_direction(codec: Codec) -> f64 {
    match codec {
        Codec::G711 => 87.2,
        Codec::G729 => 31.2,
        Codec::Opus => 47.2,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sizing {
    pub scenario: String,
    pub seed: u64,
    /// The search was stopped (Ctrl-C, SIGTERM) before every role was decided.
    pub interrupted: bool,
    /// Every role found a size that meets its SLO within the search bound (false when
    /// interrupted: a role not decided has met nothing).
    pub all_met: bool,
    pub roles: Vec<RoleSizing>,
    pub agents: Option<AgentSizing>,
    pub assumptions: Assumptions,
}

/// How the search for one role ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// `servers_needed` meets the SLO with one server down.
    Met,
    /// No count within the search bound meets it.
    NotMet,
    /// Not decided: the search was stopped during this role or before it.
    Interrupted,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Met => "ok",
            Status::NotMet => "NOT MET",
            Status::Interrupted => "not decided (interrupted)",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RoleSizing {
    pub role: String,
    pub servers_now: usize,
    pub status: Status,
    /// Servers to buy: enough that the SLO holds with one of them down; null unless `met`.
    pub servers_needed: Option<u32>,
    pub capacity_per_server: u32,
    pub met: bool,
    pub blocking_target: f64,
    /// Blocking simulated at `servers_needed` with one server down (when not met: at the
    /// largest count tried; null when nothing was decided).
    pub blocking_one_down: Option<f64>,
    pub blocking_one_down_ci95: Option<f64>,
    /// Where the search started, and from what.
    pub start: u32,
    pub start_basis: String,
    /// Each candidate tried: (servers, blocking with one down).
    pub tried: Vec<(u32, f64)>,
    /// Null unless `met`.
    pub per_server: Option<Bom>,
    pub total: Option<Bom>,
}

/// Hardware for one server (or a role's total).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bom {
    /// Peak concurrent sessions the server carried with one server of its role down.
    pub peak_sessions: u64,
    pub cores: u32,
    pub ram_gb: u32,
    pub disk_gb: u32,
    pub network_in_mbps: f64,
    pub network_out_mbps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentSizing {
    pub queues: u32,
    pub agents_now: u32,
    /// Agents per queue for the service-level SLO (Erlang A with patience, else Erlang C).
    pub agents_needed: Option<u32>,
    pub service_level_target: f64,
    pub service_level_s: f64,
    pub model: String,
}

/// The costs a sizing used: the scenario's `[sizing]` over the defaults, and the bandwidth its
/// codec implies.
#[derive(Debug, Clone, Serialize)]
pub struct Assumptions {
    #[serde(flatten)]
    pub costs: SizingCosts,
    pub kbps_per_direction: f64,
}

/// Sizes every role of the scenario.
pub fn size(sc: &Scenario, options: Options<'_>) -> Result<Sizing, Error> {
    let target = sc.slo.blocking.unwrap_or(0.01);
    let mut roles = Vec::new();
    let mut interrupted = false;
    for pool in &sc.pools {
        // A role the search did not finish is listed as not decided, never with the count
        // it had reached: a partial run establishes nothing.
        interrupted = interrupted || stopped(options);
        let role = match interrupted {
            true => None,
            false => size_role(sc, pool, target, options)?,
        };
        roles.push(role.unwrap_or_else(|| {
            interrupted = true;
            not_decided(sc, pool, target)
        }));
    }
    let agents = sc.traffic.queue.as_ref().map(|q| {
        let ivr = sc
            .traffic
            .ivr
            .as_ref()
            .map_or(0.0, |i| i.rate_per_s * i.then_queue);
        let model = QueueModel {
            arrival_per_s: (q.rate_per_s + ivr) / f64::from(q.queues.max(1)),
            handle_s_mean: q.handle.mean_s(),
            agents: q.agents,
            patience_s_mean: q.patience_s,
            service_level_s: q.service_level_s,
        };
        let goal = sc.slo.queue_service_level.unwrap_or(0.8);
        AgentSizing {
            queues: q.queues,
            agents_now: q.agents,
            agents_needed: erlang::agents_for_service_level(&model, goal),
            service_level_target: goal,
            service_level_s: q.service_level_s,
            model: if q.patience_s.is_some() {
                "Erlang A"
            } else {
                "Erlang C"
            }
            .into(),
        }
    });
    Ok(Sizing {
        scenario: sc.name.clone(),
        seed: options.seed.unwrap_or(sc.seed),
        interrupted,
        all_met: !interrupted && roles.iter().all(|r| r.met),
        roles,
        agents,
        assumptions: Assumptions {
            costs: sc.sizing.clone(),
            kbps_per_direction: kbps_per_direction(sc.sizing.codec),
        },
    })
}

/// The analytic (or load-based) starting count, and what it was based on.
fn start(sc: &Scenario, role: Role, capacity: u32, target: f64) -> (u32, String) {
    let t = &sc.traffic;
    let per_server = |load: f64| ((load / f64::from(capacity)).ceil() as u32).max(1);
    let (servers, basis) = match role {
        Role::Media | Role::Ivr => {
            let erlangs = match role {
                Role::Media => t.calls.as_ref().map(|c| c.rate_per_s * c.hold.mean_s()),
                _ => t.ivr.as_ref().map(|i| i.rate_per_s * i.hold.mean_s()),
            };
            match erlangs.and_then(|a| erlang::erlang_b_servers_for(a, target).map(|m| (a, m))) {
                Some((a, slots)) => (
                    per_server(f64::from(slots)),
                    format!("Erlang B: {a:.0} erlangs need {slots} slots for {target} blocking"),
                ),
                None => (1, "no traffic".into()),
            }
        }
        Role::Meeting => {
            let load = t.meetings.as_ref().map_or(0.0, |m| {
                m.rate_per_s * m.duration.mean_s() * m.participants_mean
            });
            (
                per_server(load),
                format!("mean load {load:.0} participants"),
            )
        }
        Role::Queue => {
            let load = t.queue.as_ref().map_or(0.0, |q| {
                let ivr = t.ivr.as_ref().map_or(0.0, |i| i.rate_per_s * i.then_queue);
                (q.rate_per_s + ivr) * q.handle.mean_s()
            });
            (
                per_server(load),
                format!("mean load {load:.0} callers talking"),
            )
        }
        Role::Im => {
            let users = t.registrations.as_ref().map_or(0, |r| r.users);
            (
                per_server(f64::from(users)),
                format!("{users} online users"),
            )
        }
    };
    // One more than the load needs is the N+1 starting point.
    ((servers + 1).max(2), basis)
}

/// The scenario with `role`'s pool resized to `n` servers, one of them disabled for the whole
/// run, and the scenario's own fault timeline removed.
fn candidate(sc: &Scenario, role: Role, n: u32) -> Scenario {
    let mut s = sc.clone();
    s.faults.clear();
    s.warnings.clear();
    if let Some(pool) = s.pools.iter_mut().find(|p| p.role == role) {
        pool.servers = (1..=n)
            .map(|i| ServerSpec {
                name: format!("{}-{i}", role.name()),
                weight: 1,
            })
            .collect();
    }
    s.faults.push(FaultSpec {
        at: Duration::ZERO,
        action: Verb::Disable,
        server: format!("{}-{n}", role.name()),
    });
    s
}

fn stopped(options: Options<'_>) -> bool {
    options.stop.is_some_and(|s| s.load(Ordering::Relaxed))
}

/// A role the search did not decide.
fn not_decided(sc: &Scenario, pool: &PoolSpec, target: f64) -> RoleSizing {
    let (start, start_basis) = start(sc, pool.role, pool.capacity, target);
    RoleSizing {
        role: pool.role.name().into(),
        servers_now: pool.servers.len(),
        status: Status::Interrupted,
        servers_needed: None,
        capacity_per_server: pool.capacity,
        met: false,
        blocking_target: target,
        blocking_one_down: None,
        blocking_one_down_ci95: None,
        start,
        start_basis,
        tried: Vec::new(),
        per_server: None,
        total: None,
    }
}

/// Searches one role; `None` when the search was stopped before it decided.
fn size_role(
    sc: &Scenario,
    pool: &PoolSpec,
    target: f64,
    options: Options<'_>,
) -> Result<Option<RoleSizing>, Error> {
    let role = pool.role;
    let (first, basis) = start(sc, role, pool.capacity, target);
    let opts = Options {
        no_wall_clock: true,
        ..options
    };
    let mut tried = Vec::new();
    // `None`: the run was interrupted, so its figures are of a part of the scenario only.
    let mut eval = |n: u32| -> Result<Option<(bool, Report)>, Error> {
        if stopped(opts) {
            return Ok(None);
        }
        let report = simulate(&candidate(sc, role, n), opts)?;
        if report.interrupted {
            return Ok(None);
        }
        let blocking = report.roles.get(role.name()).map_or(0.0, |r| r.blocking);
        tried.push((n, blocking));
        Ok(Some((blocking <= target, report)))
    };
    let Some((mut met, mut report)) = eval(first)? else {
        return Ok(None);
    };
    let mut n = first;
    if met {
        while n > 2 {
            let Some((ok, r)) = eval(n - 1)? else {
                return Ok(None);
            };
            if !ok {
                break;
            }
            n -= 1;
            report = r;
        }
    } else {
        for _ in 0..SEARCH_STEPS {
            n += 1;
            let Some((ok, r)) = eval(n)? else {
                return Ok(None);
            };
            report = r;
            if ok {
                met = true;
                break;
            }
        }
    }
    let r = report.roles.get(role.name());
    let peak = report
        .servers
        .iter()
        .filter(|s| s.role == role.name() && s.state != "disabled")
        .map(|s| s.peak_sessions)
        .max()
        .unwrap_or(0);
    let per_server = bom(role, peak, &sc.sizing);
    Ok(Some(RoleSizing {
        role: role.name().into(),
        servers_now: pool.servers.len(),
        status: if met { Status::Met } else { Status::NotMet },
        servers_needed: met.then_some(n),
        capacity_per_server: pool.capacity,
        met,
        blocking_target: target,
        blocking_one_down: r.map(|r| r.blocking),
        blocking_one_down_ci95: r.and_then(|r| r.blocking_ci95),
        start: first,
        start_basis: basis,
        tried,
        total: met.then(|| per_server.times(n)),
        per_server: met.then_some(per_server),
    }))
}

/// Hardware for one server carrying `peak` sessions of `role`.
pub fn bom(role: Role, peak: u64, c: &SizingCosts) -> Bom {
    let peak_f = peak as f64;
    let kbps = kbps_per_direction(c.codec);
    let ghz = c.core_ghz * c.target_cpu;
    // RTP legs a session relays: a media server anchors both legs of a call.
    let (cores, legs, ram_mb) = match role {
        Role::Media => (
            peak_f / (c.media_calls_per_ghz * ghz),
            2.0,
            peak_f * c.ram_mb_per_session,
        ),
        Role::Ivr => (
            peak_f / (c.ivr_sessions_per_ghz * ghz),
            1.0,
            peak_f * c.ram_mb_per_session,
        ),
        Role::Queue => (
            peak_f / (c.queue_sessions_per_ghz * ghz),
            1.0,
            peak_f * c.ram_mb_per_session,
        ),
        Role::Meeting => (
            peak_f * c.meeting_cores_per_participant / c.target_cpu,
            1.0,
            peak_f * c.ram_mb_per_session,
        ),
        // The vendor's IM figure is already a sizing (50,000 users on 20 cores), not a cost.
        Role::Im => (
            peak_f / c.im_users_per_core,
            0.0,
            peak_f * c.im_ram_mb_per_user,
        ),
    };
    let mbps = if role == Role::Im {
        peak_f * c.im_kbps_per_user / 1000.0
    } else {
        peak_f * legs * kbps / 1000.0
    };
    Bom {
        peak_sessions: peak,
        cores: (cores.ceil() as u32).max(2),
        ram_gb: (c.ram_gb_base + ram_mb / 1024.0).ceil() as u32,
        disk_gb: c.disk_gb_base.ceil() as u32,
        network_in_mbps: (mbps * 10.0).ceil() / 10.0,
        network_out_mbps: (mbps * 10.0).ceil() / 10.0,
    }
}

impl Bom {
    /// The figures of `n` such servers.
    fn times(&self, n: u32) -> Bom {
        Bom {
            peak_sessions: self.peak_sessions * u64::from(n),
            cores: self.cores * n,
            ram_gb: self.ram_gb * n,
            disk_gb: self.disk_gb * n,
            network_in_mbps: self.network_in_mbps * f64::from(n),
            network_out_mbps: self.network_out_mbps * f64::from(n),
        }
    }
}

impl Sizing {
    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "N+1 sizing of {:?} (seed {}): each role must meet its SLO with one of its servers down\n",
            self.scenario, self.seed
        );
        if self.interrupted {
            let undecided: Vec<&str> = self
                .roles
                .iter()
                .filter(|r| r.status == Status::Interrupted)
                .map(|r| r.role.as_str())
                .collect();
            let _ = writeln!(
                o,
                "INTERRUPTED: the search was stopped; not decided: {}. Only the roles marked ok \
                 were established.\n",
                undecided.join(", ")
            );
        }
        let _ = writeln!(
            o,
            "{:<8} {:>4} {:>7} {:>9} {:>22} {:>7} {:>6} {:>6} {:>6} {:>14} {:>7}",
            "role",
            "now",
            "needed",
            "cap/srv",
            "blocking 1 down ±95%",
            "peak",
            "cores",
            "RAM GB",
            "disk",
            "Mbit/s in/out",
            "status"
        );
        let dash = || "-".to_string();
        for r in &self.roles {
            let blocking = match (r.blocking_one_down, r.blocking_one_down_ci95) {
                (Some(b), Some(ci)) => format!("{b:.5} ±{ci:.5}"),
                (Some(b), None) => format!("{b:.5}"),
                (None, _) => dash(),
            };
            let b = r.per_server.as_ref();
            let _ = writeln!(
                o,
                "{:<8} {:>4} {:>7} {:>9} {:>22} {:>7} {:>6} {:>6} {:>6} {:>14} {:>7}",
                r.role,
                r.servers_now,
                r.servers_needed.map_or_else(dash, |n| n.to_string()),
                r.capacity_per_server,
                blocking,
                b.map_or_else(dash, |b| b.peak_sessions.to_string()),
                b.map_or_else(dash, |b| b.cores.to_string()),
                b.map_or_else(dash, |b| b.ram_gb.to_string()),
                b.map_or_else(dash, |b| b.disk_gb.to_string()),
                b.map_or_else(dash, |b| format!(
                    "{:.1}/{:.1}",
                    b.network_in_mbps, b.network_out_mbps
                )),
                r.status.name()
            );
        }
        let _ = writeln!(
            o,
            "\nbill of materials (per role: servers x per-server figures above)"
        );
        for r in &self.roles {
            let (Some(n), Some(p), Some(t)) = (r.servers_needed, &r.per_server, &r.total) else {
                let _ = writeln!(o, "  {:<8} none: {}", r.role, r.status.name());
                continue;
            };
            let _ = writeln!(
                o,
                "  {:<8} {} x ({} cores, {} GB RAM, {} GB disk) = {} cores, {} GB RAM, {:.0} Mbit/s each way",
                r.role, n, p.cores, p.ram_gb, p.disk_gb, t.cores, t.ram_gb, t.network_in_mbps
            );
        }
        let _ = writeln!(
            o,
            "\nsearch (servers tried: blocking with one of them down)"
        );
        for r in &self.roles {
            let tried: Vec<String> = r
                .tried
                .iter()
                .map(|(n, b)| format!("{n}: {b:.5}"))
                .collect();
            let _ = writeln!(
                o,
                "  {:<8} start {} ({}); tried {}",
                r.role,
                r.start,
                r.start_basis,
                tried.join(", ")
            );
        }
        if let Some(a) = &self.agents {
            let needed = a
                .agents_needed
                .map_or("unreachable".into(), |n| n.to_string());
            let _ = writeln!(
                o,
                "\nagents: {} per queue for {:.0}% answered within {:.0} s ({}); the scenario has {} x {}",
                needed,
                a.service_level_target * 100.0,
                a.service_level_s,
                a.model,
                a.queues,
                a.agents_now
            );
        }
        let (s, kbps) = (&self.assumptions.costs, self.assumptions.kbps_per_direction);
        let _ = writeln!(
            o,
            "\nassumptions (override in [sizing]): {} at {} kbit/s per direction; {} GHz cores at {:.0}% target;\n  \
             media {} calls/GHz, IVR {} and queue {} sessions/GHz, meetings {} cores/participant;\n  \
             IM {} users/core, {} MB and {} kbit/s per user; RAM {} GB + {} MB/session; disk {} GB",
            pbxlab_scenario::codec_name(s.codec),
            kbps,
            s.core_ghz,
            s.target_cpu * 100.0,
            s.media_calls_per_ghz,
            s.ivr_sessions_per_ghz,
            s.queue_sessions_per_ghz,
            s.meeting_cores_per_participant,
            s.im_users_per_core,
            s.im_ram_mb_per_user,
            s.im_kbps_per_user,
            s.ram_gb_base,
            s.ram_mb_per_session,
            s.disk_gb_base
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn scenario(text: &str) -> Scenario {
        Scenario::from_toml("<test>", text).expect("valid scenario")
    }

    const TWO_ROLES: &str = r#"
name = "two roles"
seed = 3
duration = "2h"
[[pool]]
role = "media"
servers = 3
capacity = 100
[[pool]]
role = "ivr"
servers = 2
capacity = 50
[traffic.calls]
rate = "1.5/s"
hold = "60s"
[traffic.ivr]
rate = "0.5/s"
hold = "30s"
[slo]
blocking = 0.01
"#;

    #[test]
    fn a_stopped_sizing_decides_no_role() {
        let stop = AtomicBool::new(true);
        let sizing = size(
            &scenario(TWO_ROLES),
            Options {
                stop: Some(&stop),
                ..Options::default()
            },
        )
        .expect("runs");
        assert!(sizing.interrupted);
        assert!(!sizing.all_met, "nothing was established");
        assert_eq!(sizing.roles.len(), 2, "every role is listed");
        for r in &sizing.roles {
            assert_eq!(r.status, Status::Interrupted, "{r:?}");
            assert_eq!(r.servers_needed, None);
            assert!(r.per_server.is_none() && r.tried.is_empty());
        }
        let text = sizing.render_text();
        assert!(
            text.contains("INTERRUPTED") && text.contains("not decided: media, ivr"),
            "{text}"
        );
    }

    #[test]
    fn bill_of_materials_follows_the_documented_costs() {
        let c = SizingCosts::default();
        // 5,000 relayed G.711 calls: 2 legs x 87.2 kbit/s each way = 872 Mbit/s.
        let media = bom(Role::Media, 5000, &c);
        assert!((media.network_in_mbps - 872.0).abs() < 0.2, "{media:?}");
        // 5,000 / (100 calls/GHz x 3 GHz x 0.7) = 23.8 -> 24 cores.
        assert_eq!(media.cores, 24);
        // The vendor's IM node: 50,000 users on 20 cores.
        let im = bom(Role::Im, 50_000, &c);
        assert_eq!(im.cores, 20);
        let g729 = bom(
            Role::Media,
            5000,
            &SizingCosts {
                codec: Codec::G729,
                ..c
            },
        );
        assert!(g729.network_in_mbps < media.network_in_mbps / 2.0);
    }
}
