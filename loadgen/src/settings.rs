//! The scenario-to-load mapping: [`Settings`] (what `pbxlab load`'s flags or a drill's
//! `[drill.load]` ask for, typed) and [`configure`], which lays them over a scenario's
//! [traffic] and [slo] to give one shard's [`Config`] and the [`Threshold`]s to check.
//!
//! With a scenario, the load runs one workload per table of its [traffic]: [traffic.calls]
//! (our users call each other), [traffic.ivr] (`ivr-1` calls; a then_queue fraction presses a
//! digit 1..queues to be transferred to that queue), [traffic.queue] (`queue-Q` calls, Q uniform
//! over the queues, with the scenario's patience) and [traffic.meetings] (`meeting-N` calls
//! filling rooms of round(participants) people, each held for the meeting's duration), each at
//! its own rate, Poisson arrivals by default. A `service` replaces the mix with one workload.
//!
//! Our users are numbered (`users` from `first_user`, with a password rule) unless a users
//! file lists them, in which case the file's rows replace both and the scenario's
//! [traffic.registrations].
//!
//! Queue agents are our registered users: the agents of queue q are users
//! first_user + (q-1)*agents .. first_user + q*agents - 1 (the cluster numbers them the same
//! way), or the rows in those places of a users file. They only answer the calls the cluster
//! places to them; none of our own calls uses them.
//!
//! Nothing here reads flags or files; the only outside input is the clock and process id that
//! pick a seed when neither the settings nor the caller give one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pbxlab_scenario::{DrillLoad, HoldDist, Scenario, Service, Traffic};

use crate::engine::{Arrivals, Callee, Config, Dtmf, Grid, Hold, Workload, run_id};
use crate::users::{Password, UserOrder, Users, UsersFile};
use crate::{Error, Threshold};

/// The first user when neither the settings nor a scenario's [traffic.registrations] name one
/// (`pbxlab load --first-user`'s default).
pub const DEFAULT_FIRST_USER: u32 = 1000;

/// A load's settings, typed: `pbxlab load`'s flags once read, or a drill's `[drill.load]` on
/// top of [`Settings::new`]'s defaults. What is `None` comes from the scenario's [traffic],
/// else a default.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub target: SocketAddr,
    /// Slice i of n: a disjoint part of the users and 1/n of the rates.
    pub shard: (u32, u32),
    pub users: Option<u32>,
    /// Only with `users`; otherwise the scenario's [traffic.registrations] first_user.
    pub first_user: Option<u32>,
    /// Our users, listed: they replace `users`, `first_user` and the scenario's users.
    pub users_file: Option<UsersFile>,
    /// Domain of the users' addresses of record (default: the target's host).
    pub domain: Option<String>,
    /// The digest passwords of numbered users.
    pub password: Password,
    pub register_rate_per_s: f64,
    pub expires_s: u32,
    /// Attempts in all, shared among the workloads in proportion to their rates.
    pub calls: Option<u64>,
    pub call_rate_per_s: Option<f64>,
    pub hold: Option<Hold>,
    pub duration: Option<Duration>,
    pub max_concurrent: Option<usize>,
    pub rtp_fraction: f64,
    /// A user part at the target to call as the only workload.
    pub service: Option<String>,
    pub patience: Option<Duration>,
    pub service_level: Option<Duration>,
    pub arrivals: Option<Arrivals>,
    pub ring_delay: Duration,
    pub tick: Grid,
    pub dtmf: String,
    pub thresholds: Vec<Threshold>,
    pub bind: SocketAddr,
    pub rtp_bind: SocketAddr,
    pub t1: Duration,
    pub seed: Option<u64>,
}

impl Settings {
    /// A load against `target` with `pbxlab load`'s defaults: one shard, numbered users, 500
    /// REGISTERs a second with expires 3600 and passwords `pw-N`, no RTP, a 1 s ring delay, T1 500 ms, the
    /// automatic tick, sockets on 127.0.0.1, and the rest from the scenario.
    pub fn new(target: SocketAddr) -> Settings {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Settings {
            target,
            shard: (0, 1),
            users: None,
            first_user: None,
            users_file: None,
            domain: None,
            password: Password::Prefix("pw-".to_owned()),
            register_rate_per_s: 500.0,
            expires_s: 3600,
            calls: None,
            call_rate_per_s: None,
            hold: None,
            duration: None,
            max_concurrent: None,
            rtp_fraction: 0.0,
            service: None,
            patience: None,
            service_level: None,
            arrivals: None,
            ring_delay: Duration::from_secs(1),
            tick: Grid::Auto,
            dtmf: String::new(),
            thresholds: Vec::new(),
            bind: loopback,
            rtp_bind: loopback,
            t1: Duration::from_millis(500),
            seed: None,
        }
    }

    /// A drill's load against `target`: [`Settings::new`]'s defaults with `[drill.load]`'s
    /// keys on top.
    pub fn drill(target: SocketAddr, load: &DrillLoad) -> Settings {
        let mut s = Settings::new(target);
        s.service = load.service.map(Service::user);
        s.users = load.users.or(s.users);
        s.register_rate_per_s = load.register_rate_per_s.unwrap_or(s.register_rate_per_s);
        s.calls = load.calls.or(s.calls);
        s.call_rate_per_s = load.call_rate_per_s.or(s.call_rate_per_s);
        s.hold = load.hold.map(hold_of).or(s.hold);
        s.rtp_fraction = load.rtp_fraction;
        s.max_concurrent = load
            .max_concurrent
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .or(s.max_concurrent);
        s.arrivals = load
            .arrivals
            .map(|a| match a {
                pbxlab_scenario::Arrivals::Fixed => Arrivals::Fixed,
                pbxlab_scenario::Arrivals::Poisson => Arrivals::Poisson,
            })
            .or(s.arrivals);
        if let Some(digits) = &load.dtmf {
            s.dtmf.clone_from(digits);
        }
        s
    }
}

/// What is odd about these settings with this scenario but does not stop a run: the queues
/// need more agents than there are users to register.
pub fn warnings(s: &Settings, scenario: Option<&Scenario>) -> Vec<String> {
    let traffic = scenario.map(|s| &s.traffic);
    let users = user_count(s, scenario);
    let mut out = Vec::new();
    if let Some(q) = traffic.and_then(|t| t.queue.as_ref())
        && users > 0
    {
        let agents = q.queues.saturating_mul(q.agents);
        if agents > users {
            out.push(format!(
                "the queues have {agents} agents but only {users} users register"
            ));
        }
    }
    out
}

/// Refuses, before anything is sent, a target and local addresses that cannot reach each other:
/// port 0, an unspecified target, families that differ, a loopback socket and a target off this
/// host (the kernel would refuse every datagram, or nothing would come back).
fn check_addresses(s: &Settings) -> Result<(), Error> {
    let target = s.target;
    let refuse = |why: String| Err(Error::Address(why));
    if target.port() == 0 {
        return refuse(format!(
            "--target {target}: port 0 is not a port one can send to"
        ));
    }
    if target.ip().is_unspecified() {
        return refuse(format!(
            "--target {target}: {} is no host's address (it means \"any\" only when binding)",
            target.ip()
        ));
    }
    for (flag, local) in [("--bind", s.bind), ("--rtp-bind", s.rtp_bind)] {
        if local.is_ipv4() != target.is_ipv4() {
            return refuse(format!(
                "--target {target} is IPv{} but {flag} {local} is IPv{}: give {flag} {}",
                if target.is_ipv4() { 4 } else { 6 },
                if local.is_ipv4() { 4 } else { 6 },
                if target.is_ipv4() {
                    "127.0.0.1:0 (or 0.0.0.0:0)"
                } else {
                    "[::1]:0 (or [::]:0)"
                }
            ));
        }
        if local.ip().is_loopback() && !target.ip().is_loopback() {
            return refuse(format!(
                "--target {target} is not on this host's loopback but {flag} {local} is: \
                 datagrams from a loopback address never leave the host; give {flag} 0.0.0.0:0 \
                 (or an interface's address)"
            ));
        }
    }
    Ok(())
}

/// How many users register in all shards: the users file's rows, else `users`, else the
/// scenario's.
fn user_count(s: &Settings, scenario: Option<&Scenario>) -> u32 {
    let reg = scenario.and_then(|s| s.traffic.registrations.as_ref());
    match &s.users_file {
        Some(f) => u32::try_from(f.users.len()).unwrap_or(u32::MAX),
        None => s.users.or(reg.map(|r| r.users)).unwrap_or(0),
    }
}

/// The configuration of this shard, and the thresholds to check. The seed is `--seed`, else
/// `default_seed` (a drill's, which its report names), else a random one.
pub fn configure(
    s: &Settings,
    scenario: Option<&Scenario>,
    default_seed: Option<u64>,
) -> Result<(Config, Vec<Threshold>), Error> {
    check_addresses(s)?;
    let target = s.target;
    let (shard, shards) = s.shard;
    let traffic = scenario.map(|s| &s.traffic);
    let reg = traffic.and_then(|t| t.registrations.as_ref());
    let calls_traffic = traffic.and_then(|t| t.calls.as_ref());
    let users = user_count(s, scenario);
    // Refused before the table is made: 10^9 users would be 135 GB of it.
    let users_bytes = u64::from(users / shards.max(1)).saturating_mul(USER_BYTES);
    if let Some(available) = memory_available()
        && users_bytes > available
    {
        return Err(Error::TooLarge(format!(
            "{users} users would take about {} of memory, and this machine has {} available: \
             give fewer --users, or split them with --shard over several machines",
            gigabytes(users_bytes),
            gigabytes(available)
        )));
    }
    // Shard i takes every n-th user, so shards never share a user.
    let my_users = match &s.users_file {
        Some(f) => f.users.slice(shard, shards),
        None => {
            let first = s
                .first_user
                .or(reg.map(|r| r.first_user))
                .unwrap_or(DEFAULT_FIRST_USER);
            if users > 0 && first.checked_add(users - 1).is_none() {
                return Err(Error::UserNumbers { first, users });
            }
            Users::numbered(
                (0..users)
                    .filter(|k| k % shards == shard)
                    .map(|k| first + k),
                &s.password,
            )
        }
    };
    let call_rate = match (s.call_rate_per_s, calls_traffic) {
        (Some(r), _) => r,
        (None, Some(c)) => c.rate_per_s,
        (None, None) => 10.0,
    };
    let hold = match (s.hold, calls_traffic) {
        (Some(h), _) => h,
        (None, Some(c)) => hold_of(c.hold),
        (None, None) => Hold::Fixed(Duration::from_secs(5)),
    };
    let run_for = match (s.duration, scenario) {
        (Some(d), _) => d,
        (None, Some(s)) => s.duration,
        (None, None) => Duration::from_secs(10),
    };
    if !(0.0..=1.0).contains(&s.rtp_fraction) {
        return Err(Error::RtpFraction(s.rtp_fraction));
    }
    let queue_traffic = traffic.and_then(|t| t.queue.as_ref());
    let patience = s.patience.or_else(|| {
        queue_traffic
            .and_then(|q| q.patience_s)
            .map(Duration::from_secs_f64)
    });
    let service_level = s.service_level.unwrap_or_else(|| {
        queue_traffic.map_or(Duration::from_secs(20), |q| {
            Duration::from_secs_f64(q.service_level_s)
        })
    });
    // Our users call each other; with fewer than two, a placeholder user part at the target.
    let (users_name, users_callee) = if users >= 2 {
        ("users", Callee::Users)
    } else {
        ("service", Callee::Service("service".into()))
    };
    let dtmf = (!s.dtmf.is_empty()).then(|| Dtmf::Digits(s.dtmf.clone()));
    let mix = match (&s.service, traffic) {
        (None, Some(t)) => {
            let calls = (calls_traffic.is_some() || s.call_rate_per_s.is_some())
                .then(|| Workload::new(users_name, users_callee.clone(), 0, call_rate, hold));
            Some(mixed_workloads(t, calls, dtmf.clone(), patience))
        }
        _ => None,
    };
    let arrivals = match s.arrivals {
        Some(a) => a,
        None if mix.is_some() => Arrivals::Poisson,
        None => Arrivals::Fixed,
    };
    let mut workloads = mix.unwrap_or_else(|| {
        let (name, callee) = match &s.service {
            Some(service) => (service.as_str(), Callee::Service(service.clone())),
            None => (users_name, users_callee),
        };
        let mut w = Workload::new(name, callee, 0, call_rate, hold);
        w.dtmf = dtmf.unwrap_or(Dtmf::None);
        w.patience = patience;
        vec![w]
    });
    let totals = call_totals(&workloads, s.calls, run_for);
    for (w, total) in workloads.iter_mut().zip(totals) {
        w.calls =
            total / u64::from(shards) + u64::from(u64::from(shard) < total % u64::from(shards));
        w.rate /= f64::from(shards);
        w.arrivals = arrivals;
    }
    // The cluster takes queue q's agents from the first users: keep them out of our own calls.
    // Of the first `agents` users, this shard has every n-th from the i-th.
    let reserved = match queue_traffic {
        Some(q) if users > 0 => {
            let agents = u64::from(q.queues.saturating_mul(q.agents).min(users));
            let (i, n) = (u64::from(shard), u64::from(shards));
            usize::try_from((agents + n - 1).saturating_sub(i) / n).unwrap_or(usize::MAX)
        }
        _ => 0,
    };
    let mut thresholds = s.thresholds.clone();
    let mut slo = Vec::new();
    let sends_media = s.rtp_fraction > 0.0;
    if let Some(s) = scenario {
        slo.extend(
            s.slo
                .blocking
                .map(|b| format!("calls.failed_fraction<={b}")),
        );
        if workloads.iter().any(queued) {
            slo.extend(
                s.slo
                    .queue_service_level
                    .map(|x| format!("queue.service_level>={x}")),
            );
            slo.extend(
                s.slo
                    .queue_abandoned
                    .map(|x| format!("queue.abandoned_fraction<={x}")),
            );
            slo.extend(s.slo.queue_asa_s.map(|x| format!("queue.asa<={x}s")));
        }
        // Only a load that sends media has streams to rate.
        if sends_media {
            slo.extend(s.slo.mos_p5.map(|x| format!("mos.p5>={x}")));
        }
    }
    for expr in slo {
        thresholds.push(Threshold::parse(&expr)?);
    }
    let seed = s.seed.or(default_seed).unwrap_or_else(random_seed);
    let mut cfg = Config {
        target,
        local: s.bind,
        rtp_local: s.rtp_bind,
        domain: s.domain.clone().unwrap_or_else(|| target.ip().to_string()),
        users: my_users,
        user_order: s
            .users_file
            .as_ref()
            .map_or(UserOrder::Sequential, |f| f.order),
        register: users > 0,
        register_rate: s.register_rate_per_s / f64::from(shards),
        expires_s: s.expires_s,
        workloads,
        reserved,
        shard: (shard, shards),
        rtp_fraction: s.rtp_fraction,
        max_concurrent: s.max_concurrent,
        ring_delay: s.ring_delay,
        service_level,
        t1: s.t1,
        t2: Duration::from_secs(4),
        seed,
        // Call-IDs of different shards never collide, nor those of runs with different seeds
        // (but by a one in 2^32 chance).
        run_id: run_id(seed, shard),
        arrival_grid: s.tick,
        drain_limit: Duration::ZERO,
        callers_password: s.password.clone(),
    };
    cfg.drain_limit = cfg.longest_call();
    let need = memory_estimate(&cfg);
    if let Some(available) = memory_available()
        && need > available
    {
        return Err(Error::TooLarge(format!(
            "this load would take about {} of memory ({} users, {} calls up at once), and this \
             machine has {} available: give fewer --users, a lower --call-rate or shorter --hold, \
             or split it with --shard over several machines",
            gigabytes(need),
            cfg.users.len(),
            concurrent_calls(&cfg),
            gigabytes(available)
        )));
    }
    Ok((cfg, thresholds))
}

/// What the generator holds per user (its binding and digest state), and per call up at once
/// (both legs' dialogs, transactions and timers), as measured: 100,000 users took 26 MB of
/// resident memory, 1,000,000 took 146 MB; 10,500 calls with 50,000 users 33 MB.
const USER_BYTES: u64 = 135;
const CALL_BYTES: u64 = 2_048;
/// Memory a load may take before it is worth a warning.
const WARN_BYTES: u64 = 1 << 30;

/// Calls up at once at the peak: each workload's rate times how long a call lasts (ring, hold,
/// an agent's talk, a queue caller's patience), at most its attempts, at most `max_concurrent`.
fn concurrent_calls(cfg: &Config) -> u64 {
    let mean = |h: Hold| match h {
        Hold::Fixed(d) | Hold::Exponential(d) => d,
    };
    let up: f64 = cfg
        .workloads
        .iter()
        .map(|w| {
            let lasts = cfg.ring_delay
                + mean(w.hold)
                + w.agent_hold.map_or(Duration::ZERO, mean)
                + w.patience.unwrap_or_default()
                + Duration::from_secs(1);
            (w.rate * lasts.as_secs_f64()).min(w.calls as f64)
        })
        .sum();
    let up = up.min(u64::MAX as f64) as u64;
    cfg.max_concurrent.map_or(up, |m| up.min(m as u64))
}

/// About how much memory the generator will take for `cfg`.
pub fn memory_estimate(cfg: &Config) -> u64 {
    (cfg.users.len() as u64)
        .saturating_mul(USER_BYTES)
        .saturating_add(concurrent_calls(cfg).saturating_mul(CALL_BYTES))
}

/// A warning for a load that will take more than a gigabyte, with what it will take.
pub fn memory_warning(cfg: &Config) -> Option<String> {
    let need = memory_estimate(cfg);
    (need > WARN_BYTES).then(|| {
        format!(
            "this load will take about {} of memory ({} users, {} calls up at once)",
            gigabytes(need),
            cfg.users.len(),
            concurrent_calls(cfg)
        )
    })
}

fn gigabytes(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// `MemAvailable` from /proc/meminfo; `None` where it cannot be read.
fn memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// A seed for a run given none, from the clock and the process id (and a count, for two in one
/// process), so runs at once differ. It has 53 bits, so a JSON reader that keeps numbers as
/// doubles still reads back the seed the report gives.
fn random_seed() -> u64 {
    static PICKED: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let entropy = nanos
        ^ u64::from(std::process::id()).rotate_left(40)
        ^ PICKED.fetch_add(1, Ordering::Relaxed).rotate_left(20);
    // SplitMix64's finaliser: nearby clock readings give unrelated seeds.
    let mut z = entropy.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) >> 11
}

fn hold_of(dist: HoldDist) -> Hold {
    let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or_default();
    match dist {
        HoldDist::Fixed { s } => Hold::Fixed(secs(s)),
        HoldDist::Exponential { mean_s } | HoldDist::LogNormal { mean_s, .. } => {
            Hold::Exponential(secs(mean_s))
        }
    }
}

/// The workloads of a scenario's [traffic], at the whole run's rates: `users` (the
/// user-to-user calls, if any), then IVR, one per queue, meetings. Tables with a rate of 0
/// add nothing.
fn mixed_workloads(
    t: &Traffic,
    calls: Option<Workload>,
    dtmf: Option<Dtmf>,
    patience: Option<Duration>,
) -> Vec<Workload> {
    let mut out: Vec<Workload> = calls.into_iter().collect();
    if let Some(ivr) = t.ivr.as_ref().filter(|i| i.rate_per_s > 0.0) {
        let mut w = Workload::new(
            "ivr",
            Callee::Service("ivr-1".into()),
            0,
            ivr.rate_per_s,
            hold_of(ivr.hold),
        );
        w.dtmf = dtmf.unwrap_or(match &t.queue {
            Some(q) if ivr.then_queue > 0.0 => Dtmf::Queue {
                fraction: ivr.then_queue,
                queues: q.queues,
            },
            _ => Dtmf::None,
        });
        w.agent_hold = t.queue.as_ref().map(|q| hold_of(q.handle));
        w.patience = patience;
        out.push(w);
    }
    if let Some(q) = t.queue.as_ref().filter(|q| q.rate_per_s > 0.0) {
        // Callers pick a queue uniformly: a Poisson stream split at random is one independent
        // Poisson stream per queue, each with its share of the rate.
        for n in 1..=q.queues.max(1) {
            let name = format!("queue-{n}");
            let mut w = Workload::new(
                &name,
                Callee::Service(name.clone()),
                0,
                q.rate_per_s / f64::from(q.queues.max(1)),
                hold_of(q.handle),
            );
            w.patience = patience;
            out.push(w);
        }
    }
    if let Some(m) = t.meetings.as_ref().filter(|m| m.rate_per_s > 0.0) {
        // A meeting is round(mean) calls to one room, so the calls come that much faster.
        let size = m.participants_mean.round().max(1.0) as u32;
        out.push(Workload::new(
            "meetings",
            Callee::Service(format!("meeting-{size}")),
            0,
            m.rate_per_s * f64::from(size),
            hold_of(m.duration),
        ));
    }
    out
}

/// Whether a workload's callers go through a queue.
fn queued(w: &Workload) -> bool {
    matches!(&w.callee, Callee::Service(s) if s.starts_with("queue-"))
        || matches!(w.dtmf, Dtmf::Queue { fraction, .. } if fraction > 0.0)
}

/// Attempts of each workload over the whole run: `calls` shared in proportion to the rates
/// (the remainder to the first ones), or each rate times the duration.
fn call_totals(workloads: &[Workload], calls: Option<u64>, run_for: Duration) -> Vec<u64> {
    let Some(n) = calls else {
        return workloads
            .iter()
            .map(|w| (w.rate * run_for.as_secs_f64()).round() as u64)
            .collect();
    };
    let sum: f64 = workloads.iter().map(|w| w.rate).sum();
    let mut out: Vec<u64> = workloads
        .iter()
        .map(|w| {
            if sum > 0.0 {
                (n as f64 * w.rate / sum).floor() as u64
            } else {
                0
            }
        })
        .collect();
    // Flooring leaves less than one attempt per workload over, unless every rate is 0.
    let left = n.saturating_sub(out.iter().sum());
    let len = out.len() as u64;
    for (i, c) in out.iter_mut().enumerate() {
        *c += left / len + u64::from((i as u64) < left % len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::User;

    const TARGET: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
        5060,
    );

    fn reference() -> Scenario {
        pbxlab_scenario::reference_scenario().expect("the embedded reference scenario")
    }

    /// The reference scenario under settings `edit` makes of the defaults.
    fn configured(edit: impl FnOnce(&mut Settings)) -> (Config, Vec<Threshold>) {
        let mut s = Settings::new(TARGET);
        edit(&mut s);
        configure(&s, Some(&reference()), None).expect("configures")
    }

    #[test]
    fn a_scenario_runs_one_workload_per_traffic_table_at_its_rate() {
        let (cfg, thresholds) = configured(|_| {});
        let names: Vec<&str> = cfg.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["users", "ivr", "queue-1", "queue-2", "meetings"]);
        let rates: Vec<f64> = cfg.workloads.iter().map(|w| w.rate).collect();
        assert_eq!(rates, [55.0, 5.0, 1.0, 1.0, 0.4], "meetings of 8 at 0.05/s");
        assert!(
            cfg.workloads
                .iter()
                .all(|w| w.arrivals == Arrivals::Poisson)
        );
        assert_eq!(cfg.workloads[0].callee, Callee::Users);
        assert_eq!(
            cfg.workloads[1].dtmf,
            Dtmf::Queue {
                fraction: 0.4,
                queues: 2
            }
        );
        assert_eq!(cfg.workloads[4].callee, Callee::Service("meeting-8".into()));
        for w in &cfg.workloads[1..4] {
            assert_eq!(w.patience, Some(Duration::from_secs(120)), "{}", w.name);
        }
        // 2 queues of 500 agents: users 1000..=1999 stay free for the queues' calls.
        assert_eq!(cfg.reserved, 1000);
        assert_eq!(cfg.users.name(999), "1999");
        assert_eq!(cfg.service_level, Duration::from_secs(20));
        assert!(
            thresholds
                .iter()
                .any(|t| t.expr == "queue.service_level>=0.8"),
            "{thresholds:?}"
        );
        // The scenario's two hours at 55/s.
        assert_eq!(cfg.workloads[0].calls, 396_000);
        assert_eq!(cfg.users.len(), 50_000);
        assert_eq!(
            cfg.users.get(0),
            Some(User {
                name: "1000",
                username: "1000",
                password: "pw-1000"
            })
        );
        assert_eq!(cfg.user_order, UserOrder::Sequential);
    }

    #[test]
    fn each_traffic_table_gives_its_hold_and_the_agents_their_handle_time() {
        let (cfg, _) = configured(|_| {});
        let holds: Vec<(&str, Hold)> = cfg
            .workloads
            .iter()
            .map(|w| (w.name.as_str(), w.hold))
            .collect();
        // A scenario's bare hold time is an exponential mean.
        let s = Duration::from_secs;
        assert_eq!(
            holds,
            [
                ("users", Hold::Exponential(s(180))),
                ("ivr", Hold::Exponential(s(60))),
                ("queue-1", Hold::Exponential(s(240))),
                ("queue-2", Hold::Exponential(s(240))),
                ("meetings", Hold::Exponential(s(1800))),
            ]
        );
        // IVR callers transferred to a queue talk to the agent for the queue's handle time.
        assert_eq!(cfg.workloads[1].agent_hold, Some(Hold::Exponential(s(240))));
        let (cfg, _) = configured(|s| s.hold = Some(Hold::Fixed(Duration::from_secs(20))));
        assert_eq!(
            cfg.workloads[0].hold,
            Hold::Fixed(Duration::from_secs(20)),
            "a hold setting replaces [traffic.calls]' hold"
        );
        assert_eq!(
            cfg.workloads[1].hold,
            Hold::Exponential(s(60)),
            "but no other table's"
        );
    }

    #[test]
    fn a_seed_gives_the_run_id_and_without_one_each_run_picks_its_own() {
        let (a, _) = configured(|s| s.seed = Some(7));
        let (b, _) = configured(|s| s.seed = Some(7));
        assert_eq!(
            (a.seed, a.run_id),
            (b.seed, b.run_id),
            "nothing from the clock or the pid"
        );
        assert_eq!(a.run_id, run_id(7, 0));
        let (shard, _) = configured(|s| {
            s.seed = Some(7);
            s.shard = (1, 2);
        });
        assert_eq!(shard.seed, 7);
        assert_ne!(shard.run_id, a.run_id, "shards keep their Call-IDs apart");
        let (c, _) = configured(|_| {});
        let (d, _) = configured(|_| {});
        assert_ne!(c.seed, d.seed, "a seed picked per run");
        assert_ne!(
            c.seed, 7,
            "not the scenario's, which every run of it would share"
        );
        assert!(c.seed < 1 << 53, "exact as a JSON double: {}", c.seed);
        assert_eq!(c.run_id, run_id(c.seed, 0));
        // A caller's default seed (a drill's) is taken when the settings have none.
        let s = Settings::new(TARGET);
        let (e, _) = configure(&s, Some(&reference()), Some(11)).expect("configures");
        assert_eq!(e.seed, 11);
    }

    #[test]
    fn a_service_replaces_the_mix_with_one_workload() {
        let (cfg, _) = configured(|s| {
            s.service = Some("queue-2".into());
            s.patience = Some(Duration::from_secs(5));
        });
        assert_eq!(cfg.workloads.len(), 1);
        let w = &cfg.workloads[0];
        assert_eq!(w.callee, Callee::Service("queue-2".into()));
        assert_eq!((w.rate, w.arrivals), (55.0, Arrivals::Fixed));
        assert_eq!(w.patience, Some(Duration::from_secs(5)));
    }

    #[test]
    fn shard_1_of_2_halves_the_rates_and_takes_a_disjoint_slice_of_the_users() {
        let (whole, _) = configured(|s| s.calls = Some(1001));
        let (zero, _) = configured(|s| {
            s.calls = Some(1001);
            s.shard = (0, 2);
        });
        let (one, _) = configured(|s| {
            s.calls = Some(1001);
            s.shard = (1, 2);
        });
        assert_eq!(one.shard, (1, 2));
        for ((w, a), b) in whole
            .workloads
            .iter()
            .zip(&zero.workloads)
            .zip(&one.workloads)
        {
            assert_eq!(a.rate, w.rate / 2.0, "{}", w.name);
            assert_eq!(b.rate, w.rate / 2.0, "{}", w.name);
            assert_eq!(a.calls + b.calls, w.calls, "{}: every attempt once", w.name);
        }
        let calls: u64 = one.workloads.iter().map(|w| w.calls).sum();
        assert!((499..=502).contains(&calls), "about half of 1001: {calls}");
        assert_eq!(one.workloads[0].rate, 27.5);
        assert_eq!(one.register_rate, 250.0);
        // The two slices share no user and together are every user.
        assert_eq!(zero.users.len() + one.users.len(), whole.users.len());
        let names = |u: &Users| u.iter().map(|u| u.name.to_owned()).collect::<Vec<_>>();
        let mut both: Vec<String> = names(&zero.users);
        both.extend(names(&one.users));
        let mut all = names(&whole.users);
        both.sort_unstable();
        all.sort_unstable();
        assert_eq!(both, all);
        assert_eq!(one.users.name(0), (DEFAULT_FIRST_USER + 1).to_string());
        // The queues' 1,000 agents: 500 in each shard.
        assert_eq!((zero.reserved, one.reserved), (500, 500));
    }

    #[test]
    fn a_drill_lays_its_load_keys_over_the_defaults() {
        let scenario = pbxlab_scenario::drill_scenario().expect("the embedded drill");
        let spec = scenario.drill.clone().expect("[drill]");
        let settings = Settings::drill(TARGET, &spec.load);
        let (cfg, _) = configure(&settings, Some(&scenario), None).expect("configures");
        assert_eq!(cfg.workloads.len(), 1);
        let w = &cfg.workloads[0];
        assert_eq!(w.callee, Callee::Service("echo".into()));
        assert_eq!(w.hold, Hold::Fixed(Duration::from_secs(30)));
        // [traffic.calls] gives the rate, the scenario the duration: 80/s for 50 s.
        assert_eq!(
            (w.rate, w.calls, w.arrivals),
            (80.0, 4_000, Arrivals::Fixed)
        );
        assert_eq!(cfg.rtp_fraction, 1.0);
        assert_eq!(cfg.register_rate, 1000.0);
        assert_eq!(cfg.users.len(), 1000);
        // What [drill.load] does not set is the default.
        assert_eq!(cfg.t1, Duration::from_millis(500));
        assert_eq!(cfg.ring_delay, Duration::from_secs(1));
        assert_eq!(cfg.expires_s, 3600);
    }

    #[test]
    fn a_drill_load_overrides_only_the_keys_it_sets() {
        assert_eq!(
            Settings::drill(TARGET, &DrillLoad::default()),
            Settings::new(TARGET),
            "an empty [drill.load] is the defaults"
        );
        let load = DrillLoad {
            users: Some(10),
            hold: Some(HoldDist::Exponential { mean_s: 3.0 }),
            dtmf: Some("12#".into()),
            ..DrillLoad::default()
        };
        let mut expected = Settings::new(TARGET);
        expected.users = Some(10);
        expected.hold = Some(Hold::Exponential(Duration::from_secs(3)));
        expected.dtmf = "12#".into();
        assert_eq!(Settings::drill(TARGET, &load), expected);
    }

    #[test]
    fn slos_become_thresholds_after_the_settings_own() {
        let own = Threshold::parse("setup.p99<200ms").expect("parses");
        let (_, thresholds) = configured(|s| s.thresholds = vec![own.clone()]);
        let exprs: Vec<&str> = thresholds.iter().map(|t| t.expr.as_str()).collect();
        assert_eq!(
            exprs,
            [
                "setup.p99<200ms",
                "calls.failed_fraction<=0.01",
                "queue.service_level>=0.8"
            ]
        );
        // Without a queue among the workloads, the queue SLOs have nothing to measure.
        let (_, thresholds) = configured(|s| s.service = Some("echo".into()));
        let exprs: Vec<&str> = thresholds.iter().map(|t| t.expr.as_str()).collect();
        assert_eq!(exprs, ["calls.failed_fraction<=0.01"]);
        // No scenario, no SLOs.
        let (_, thresholds) = configure(&Settings::new(TARGET), None, Some(1)).expect("configures");
        assert!(thresholds.is_empty());
    }

    #[test]
    fn a_mos_slo_is_a_threshold_only_for_a_load_that_sends_media() {
        let mut sc = reference();
        sc.slo.mos_p5 = Some(4.0);
        let mut s = Settings::new(TARGET);
        s.service = Some("echo".into());
        let exprs = |s: &Settings| -> Vec<String> {
            let (_, thresholds) = configure(s, Some(&sc), None).expect("configures");
            thresholds.into_iter().map(|t| t.expr).collect()
        };
        assert_eq!(exprs(&s), ["calls.failed_fraction<=0.01"]);
        s.rtp_fraction = 0.5;
        assert_eq!(exprs(&s), ["calls.failed_fraction<=0.01", "mos.p5>=4"]);
    }

    #[test]
    fn settings_a_run_cannot_have_are_refused_and_oddities_reported() {
        let mut s = Settings::new(TARGET);
        s.rtp_fraction = 1.5;
        assert!(matches!(
            configure(&s, None, Some(1)),
            Err(Error::RtpFraction(_))
        ));
        let mut s = Settings::new(TARGET);
        s.users = Some(600);
        assert_eq!(
            warnings(&s, Some(&reference())),
            ["the queues have 1000 agents but only 600 users register"]
        );
        assert!(warnings(&Settings::new(TARGET), Some(&reference())).is_empty());
        let (cfg, _) = configure(&s, Some(&reference()), Some(1)).expect("configures");
        assert_eq!(cfg.reserved, 600, "every user is an agent");
        let mut s = Settings::new(TARGET);
        (s.users, s.first_user) = (Some(2), Some(u32::MAX));
        assert!(matches!(
            configure(&s, None, Some(1)),
            Err(Error::UserNumbers { .. })
        ));
    }

    #[test]
    fn a_users_file_replaces_the_numbered_users_and_orders_the_calls() {
        let file = UsersFile::parse(
            b"RANDOM\nalice;[authentication username=a password=x]\n\
              bob;[authentication password=y]\ncarol;[authentication password=z]\n",
            None,
        )
        .expect("reads");
        let mut s = Settings::new(TARGET);
        s.users_file = Some(file.clone());
        let (cfg, _) = configure(&s, None, Some(1)).expect("configures");
        assert_eq!(cfg.users, file.users);
        assert_eq!(cfg.user_order, UserOrder::Random);
        assert!(cfg.register);
        assert_eq!(
            cfg.workloads[0].callee,
            Callee::Users,
            "three users call each other"
        );
        // The scenario's 50,000 users give way to the file's three, sliced by shard.
        s.shard = (1, 2);
        let (cfg, _) = configure(&s, Some(&reference()), Some(1)).expect("configures");
        assert_eq!(
            cfg.users.iter().map(|u| u.name).collect::<Vec<_>>(),
            ["bob"]
        );
        assert_eq!(cfg.reserved, 1, "the queues' agents are the first rows");
        assert_eq!(
            warnings(&s, Some(&reference())),
            ["the queues have 1000 agents but only 3 users register"]
        );
    }

    #[test]
    fn a_shared_password_is_every_numbered_users_password() {
        let mut s = Settings::new(TARGET);
        s.users = Some(3);
        s.password = Password::Shared("s3cret".into());
        let (cfg, _) = configure(&s, None, Some(1)).expect("configures");
        let creds: Vec<(&str, &str, &str)> = cfg
            .users
            .iter()
            .map(|u| (u.name, u.username, u.password))
            .collect();
        assert_eq!(
            creds,
            [
                ("1000", "1000", "s3cret"),
                ("1001", "1001", "s3cret"),
                ("1002", "1002", "s3cret")
            ]
        );
    }

    #[test]
    fn addresses_that_cannot_reach_the_target_are_refused_before_the_run() {
        let refused = |target: &str, bind: &str| {
            let mut s = Settings::new(target.parse().expect("addr"));
            s.bind = bind.parse().expect("addr");
            match configure(&s, None, Some(1)) {
                Err(Error::Address(why)) => why,
                other => panic!("{target} from {bind}: {other:?}"),
            }
        };
        assert!(refused("127.0.0.1:0", "127.0.0.1:0").contains("port 0"));
        assert!(refused("0.0.0.0:5060", "127.0.0.1:0").contains("no host's address"));
        assert!(refused("[::1]:5060", "127.0.0.1:0").contains("IPv6 but --bind"));
        assert!(refused("192.0.2.1:5060", "127.0.0.1:0").contains("never leave the host"));
        // Anywhere on loopback from loopback, and off the host from an unspecified address.
        let mut s = Settings::new("127.0.0.2:5060".parse().expect("addr"));
        assert!(configure(&s, None, Some(1)).is_ok());
        s.target = "192.0.2.1:5060".parse().expect("addr");
        s.bind = "0.0.0.0:0".parse().expect("addr");
        s.rtp_bind = "0.0.0.0:0".parse().expect("addr");
        assert!(configure(&s, None, Some(1)).is_ok());
    }

    #[test]
    fn a_load_too_large_for_the_machine_is_refused_and_a_large_one_warned() {
        let mut s = Settings::new(TARGET);
        s.call_rate_per_s = Some(1e9);
        s.duration = Some(Duration::from_secs(10));
        match configure(&s, None, Some(1)) {
            Err(Error::TooLarge(why)) => assert!(why.contains("calls up at once"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut s = Settings::new(TARGET);
        s.users = Some(20_000_000);
        let (cfg, _) = configure(&s, None, Some(1)).expect("fits");
        let w = memory_warning(&cfg).expect("a warning");
        assert!(w.contains("2.7 GB") && w.contains("20000000 users"), "{w}");
        let (small, _) = configure(&Settings::new(TARGET), None, Some(1)).expect("fits");
        assert_eq!(memory_warning(&small), None);
    }

    #[test]
    fn attempts_are_shared_in_proportion_to_the_rates() {
        let w = |rate: f64| Workload::new("w", Callee::Users, 0, rate, Hold::Fixed(Duration::ZERO));
        let ws = [w(3.0), w(1.0)];
        assert_eq!(call_totals(&ws, Some(10), Duration::ZERO), [8, 2]);
        assert_eq!(call_totals(&ws, Some(9), Duration::ZERO), [7, 2]);
        assert_eq!(call_totals(&ws, None, Duration::from_secs(2)), [6, 2]);
        assert_eq!(
            call_totals(&[w(0.0), w(0.0)], Some(3), Duration::ZERO),
            [2, 1]
        );
    }
}
