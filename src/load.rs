//! `pbxlab load`: flags and scenario to a load configuration, progress output, reports and the
//! exit code.

use std::io::IsTerminal as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use pbxlab_loadgen::engine::{Arrivals, Dtmf, Grid, Workload, run_id};
use pbxlab_loadgen::{Callee, Config, Hold, LoadReport, Progress, RunOptions, Threshold};
use pbxlab_scenario::Scenario;
use pbxlab_scenario::{DrillLoad, HoldDist, Service, Traffic, parse_duration, parse_rate};

use crate::BadInput;

/// Exit code when thresholds are breached (k6 uses 99 too).
pub const EXIT_THRESHOLDS: u8 = 99;
/// Exit code when the target never sent a single datagram back.
pub const EXIT_NO_ANSWER: u8 = 3;
/// `--first-user`'s default, and the first user when a scenario's [traffic] has no
/// registrations.
const DEFAULT_FIRST_USER: u32 = 1000;

/// With a scenario, `pbxlab load` runs one workload per table of its [traffic]: [traffic.calls]
/// (our users call each other), [traffic.ivr] (`ivr-1` calls; a then_queue fraction presses a
/// digit 1..queues to be transferred to that queue), [traffic.queue] (`queue-Q` calls, Q uniform
/// over the queues, with the scenario's patience) and [traffic.meetings] (`meeting-N` calls
/// filling rooms of round(participants) people, each held for the meeting's duration), each at
/// its own rate, Poisson arrivals by default. --service replaces the mix with one workload.
///
/// Queue agents are our registered users: the agents of queue q are users
/// first_user + (q-1)*agents .. first_user + q*agents - 1 (the cluster numbers them the same
/// way). They only answer the calls the cluster places to them; none of our own calls uses them.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// The SIP server to load: a registrar, proxy or UAS (HOST:PORT, UDP).
    #[arg(long)]
    target: String,
    /// Scenario file: users, the workload mix with its rates and hold times, and SLOs from its
    /// [traffic] and [slo].
    scenario: Option<PathBuf>,
    /// Users to register with digest authentication (0: place calls without registering).
    #[arg(long)]
    users: Option<u32>,
    /// Number of the first user; users are FIRST..FIRST+USERS-1.
    #[arg(long, default_value_t = DEFAULT_FIRST_USER)]
    first_user: u32,
    /// Domain of the users' addresses of record (default: the target's host).
    #[arg(long)]
    domain: Option<String>,
    /// Digest password of user N is this prefix followed by N.
    #[arg(long, default_value = "pw-")]
    password_prefix: String,
    /// REGISTER attempts per second ("500/s", "30000/min").
    #[arg(long, default_value = "500/s")]
    register_rate: String,
    /// Expires of each registration, seconds.
    #[arg(long, default_value_t = 3600)]
    expires: u32,
    /// Call attempts in all (default: rate x duration per workload); with several workloads,
    /// shared in proportion to their rates.
    #[arg(long)]
    calls: Option<u64>,
    /// Call attempts per second ("100/s") of the user-to-user (or --service) workload.
    #[arg(long)]
    call_rate: Option<String>,
    /// How long each call of the user-to-user (or --service) workload is held before the BYE
    /// ("20s"); for queue calls, the talk once an agent answered.
    #[arg(long)]
    hold: Option<String>,
    /// fixed (as SIPp's pause) or exponential with --hold as the mean.
    #[arg(long, default_value = "fixed")]
    hold_dist: String,
    /// How long calls are started for, when --calls is not given (default 10s).
    #[arg(long)]
    duration: Option<String>,
    /// At most this many calls at once (as SIPp's -l); attempts beyond wait, and the wait counts
    /// in `setup` (measured from each attempt's intended start).
    #[arg(long)]
    max_concurrent: Option<usize>,
    /// Fraction of calls with G.711 RTP in both directions (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    rtp: f64,
    /// Call this user part at the target instead of another of our registered users, as the
    /// only workload. pbxlab's cluster services: echo; ivr-N (with --dtmf; a first digit 1-9
    /// asks for that queue, '#' makes the IVR hang up); queue-N (waits for an agent, abandons
    /// after --patience); meeting-N (rooms of N participants: call k joins meeting-(k/N+1)).
    #[arg(long)]
    service: Option<String>,
    /// Mean of queue callers' exponential patience ("30s"; default: the scenario's, else
    /// callers never abandon). A caller whose patience runs out hangs up: abandoned.
    #[arg(long)]
    patience: Option<String>,
    /// Queue callers answered within this wait count as within the service level (default:
    /// the scenario's [traffic.queue] service_level, else 20s).
    #[arg(long)]
    service_level: Option<String>,
    /// Arrival schedule: fixed (attempt k at k / rate) or poisson (default: poisson for a
    /// scenario's workload mix, fixed otherwise).
    #[arg(long)]
    arrivals: Option<String>,
    /// How long our users let an incoming call ring before answering.
    #[arg(long, default_value = "1s")]
    ring_delay: String,
    /// The generator's clock while calls are in progress, like SIPp's -timer_resol: it wakes
    /// once a tick, attempts start on the tick (latency counts from there), and ACKs and
    /// answers to the far end wait up to a tick (answers to digest challenges are timed by their
    /// round trip instead). A longer tick costs less CPU per call at low rates and bunches more
    /// attempts on each tick. auto: per phase (registrations, then calls), the time two
    /// attempts take at its rate, between 1ms and 2ms; or 0.1ms to 100ms.
    #[arg(long, default_value = "auto")]
    tick: String,
    /// Digits to send as RFC 4733 events once a call is answered; calls that send digits
    /// always have RTP. With a scenario's mix, the IVR calls send these instead of choosing a
    /// queue by then_queue.
    #[arg(long, default_value = "")]
    dtmf: String,
    /// Pass/fail threshold, k6-style: 'setup.p99<200ms', 'calls.failed==0' (repeatable).
    #[arg(long = "threshold")]
    thresholds: Vec<String>,
    /// Write the report as JSON to FILE ("-": standard output instead of the tables).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write an HdrHistogram interval log (one histogram per metric per interval).
    #[arg(long, value_name = "FILE")]
    hlog: Option<PathBuf>,
    /// Run slice i of n (0-based): a disjoint part of the users and 1/n of the rates.
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Local address of the SIP socket.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Local address of the RTP socket.
    #[arg(long, default_value = "127.0.0.1:0")]
    rtp_bind: SocketAddr,
    /// RFC 3261 T1 (retransmission base).
    #[arg(long, default_value = "500ms")]
    t1: String,
    /// Progress and interval-log period.
    #[arg(long, default_value = "1s")]
    interval: String,
    /// Seed of every random choice of the load (hold and patience times, which calls carry RTP,
    /// IVR callers' digits, Poisson gaps, digest cnonces) and of the run id in its Call-IDs;
    /// with --shard, each shard draws its own. Default: a random seed, printed in the report and
    /// its JSON, so the run can be repeated. Runs with one seed and shard send the same Call-IDs,
    /// so runs against one target at once need different seeds; for that reason a scenario's
    /// seed (which `plan` uses) is not the default.
    #[arg(long)]
    seed: Option<u64>,
}

fn bad(msg: String) -> anyhow::Error {
    BadInput(msg).into()
}

fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    parse_duration(text).map_err(|e| bad(format!("--{flag} {text:?}: {e}")))
}

fn tick(text: &str) -> anyhow::Result<Grid> {
    if text == "auto" {
        return Ok(Grid::Auto);
    }
    let tick = duration("tick", text)?;
    if !(Duration::from_micros(100)..=Duration::from_millis(100)).contains(&tick) {
        return Err(bad(format!(
            "--tick {text:?}: must be auto or between 0.1ms and 100ms"
        )));
    }
    Ok(Grid::Every(tick))
}

fn rate(flag: &str, text: &str) -> anyhow::Result<f64> {
    parse_rate(text).map_err(|e| bad(format!("--{flag} {text:?}: {e}")))
}

/// `pbxlab load`'s settings, typed: the flags once read, or a drill's `[drill.load]` on top of
/// the flags' defaults. What is `None` comes from the scenario's [traffic], else a default.
pub(crate) struct Settings {
    pub(crate) target: SocketAddr,
    /// Slice i of n.
    pub(crate) shard: (u32, u32),
    pub(crate) users: Option<u32>,
    /// Only with `users`; otherwise the scenario's [traffic.registrations] first_user.
    pub(crate) first_user: Option<u32>,
    pub(crate) domain: Option<String>,
    pub(crate) password_prefix: String,
    pub(crate) register_rate_per_s: f64,
    pub(crate) expires_s: u32,
    pub(crate) calls: Option<u64>,
    pub(crate) call_rate_per_s: Option<f64>,
    pub(crate) hold: Option<Hold>,
    pub(crate) duration: Option<Duration>,
    pub(crate) max_concurrent: Option<usize>,
    pub(crate) rtp_fraction: f64,
    pub(crate) service: Option<String>,
    pub(crate) patience: Option<Duration>,
    pub(crate) service_level: Option<Duration>,
    pub(crate) arrivals: Option<Arrivals>,
    pub(crate) ring_delay: Duration,
    pub(crate) tick: Grid,
    pub(crate) dtmf: String,
    pub(crate) thresholds: Vec<Threshold>,
    pub(crate) bind: SocketAddr,
    pub(crate) rtp_bind: SocketAddr,
    pub(crate) t1: Duration,
    pub(crate) seed: Option<u64>,
}

impl Settings {
    /// Reads the flags; every error names its flag.
    pub(crate) fn from_args(args: &LoadArgs) -> anyhow::Result<Settings> {
        let target = args
            .target
            .to_socket_addrs()
            .map_err(|e| bad(format!("--target {:?}: {e}", args.target)))?
            .next()
            .ok_or_else(|| bad(format!("--target {:?} resolves to no address", args.target)))?;
        let shard = args
            .shard
            .split_once('/')
            .and_then(|(i, n)| Some((i.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
            .filter(|&(i, n)| n > 0 && i < n)
            .ok_or_else(|| {
                bad(format!(
                    "--shard {:?}: write i/n with 0 <= i < n, e.g. 0/2",
                    args.shard
                ))
            })?;
        let call_rate_per_s = match &args.call_rate {
            Some(r) => Some(rate("call-rate", r)?),
            None => None,
        };
        let hold = match &args.hold {
            Some(h) => {
                let d = duration("hold", h)?;
                Some(match args.hold_dist.as_str() {
                    "fixed" => Hold::Fixed(d),
                    "exponential" => Hold::Exponential(d),
                    other => {
                        return Err(bad(format!(
                            "--hold-dist {other:?}: use fixed or exponential"
                        )));
                    }
                })
            }
            None => None,
        };
        let run_for = match &args.duration {
            Some(d) => Some(duration("duration", d)?),
            None => None,
        };
        if !(0.0..=1.0).contains(&args.rtp) {
            return Err(bad(format!("--rtp {}: a fraction from 0 to 1", args.rtp)));
        }
        let patience = match &args.patience {
            Some(p) => Some(duration("patience", p)?),
            None => None,
        };
        let service_level = match &args.service_level {
            Some(d) => Some(duration("service-level", d)?),
            None => None,
        };
        let arrivals = match args.arrivals.as_deref() {
            Some("fixed") => Some(Arrivals::Fixed),
            Some("poisson") => Some(Arrivals::Poisson),
            Some(other) => {
                return Err(bad(format!("--arrivals {other:?}: use fixed or poisson")));
            }
            None => None,
        };
        let thresholds = args
            .thresholds
            .iter()
            .map(|t| Threshold::parse(t).map_err(|e| bad(e.to_string())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Settings {
            target,
            shard,
            users: args.users,
            first_user: args.users.map(|_| args.first_user),
            domain: args.domain.clone(),
            password_prefix: args.password_prefix.clone(),
            register_rate_per_s: rate("register-rate", &args.register_rate)?,
            expires_s: args.expires,
            calls: args.calls,
            call_rate_per_s,
            hold,
            duration: run_for,
            max_concurrent: args.max_concurrent,
            rtp_fraction: args.rtp,
            service: args.service.clone(),
            patience,
            service_level,
            arrivals,
            ring_delay: duration("ring-delay", &args.ring_delay)?,
            tick: tick(&args.tick)?,
            dtmf: args.dtmf.clone(),
            thresholds,
            bind: args.bind,
            rtp_bind: args.rtp_bind,
            t1: duration("t1", &args.t1)?,
            seed: args.seed,
        })
    }

    /// A drill's load against `target`: `pbxlab load`'s defaults (read from no flags, so the
    /// two cannot drift apart) with `[drill.load]`'s keys on top.
    pub(crate) fn drill(target: SocketAddr, load: &DrillLoad) -> anyhow::Result<Settings> {
        #[derive(clap::Parser)]
        #[command(name = "load", no_binary_name = true)]
        struct Defaults {
            #[command(flatten)]
            load: LoadArgs,
        }
        let target = target.to_string();
        let args = <Defaults as clap::Parser>::try_parse_from(["--target", target.as_str()])
            .map_err(|e| anyhow::anyhow!("pbxlab load's defaults: {e}"))?
            .load;
        let mut s = Settings::from_args(&args)?;
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
        Ok(s)
    }
}

/// The configuration of this shard, and the thresholds to check. The seed is `--seed`, else
/// `default_seed` (a drill's, which its report names), else a random one.
pub(crate) fn configure(
    s: &Settings,
    scenario: Option<&Scenario>,
    default_seed: Option<u64>,
) -> anyhow::Result<(Config, Vec<Threshold>)> {
    let target = s.target;
    let (shard, shards) = s.shard;
    let traffic = scenario.map(|s| &s.traffic);
    let reg = traffic.and_then(|t| t.registrations.as_ref());
    let calls_traffic = traffic.and_then(|t| t.calls.as_ref());
    let users = s.users.or(reg.map(|r| r.users)).unwrap_or(0);
    let first_user = s
        .first_user
        .or(reg.map(|r| r.first_user))
        .unwrap_or(DEFAULT_FIRST_USER);
    // Shard i takes every n-th user, so shards never share a user.
    let my_users: Vec<u32> = (0..users)
        .filter(|k| k % shards == shard)
        .map(|k| first_user + k)
        .collect();
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
        return Err(bad(format!(
            "--rtp {}: a fraction from 0 to 1",
            s.rtp_fraction
        )));
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
    // The cluster takes queue q's agents from the users: keep them out of our own calls.
    let reserved = match queue_traffic {
        Some(q) if users > 0 => {
            let agents = q.queues.saturating_mul(q.agents);
            if agents > users {
                eprintln!(
                    "pbxlab: warning: the queues have {agents} agents but only {users} users register"
                );
            }
            first_user..first_user.saturating_add(agents.min(users))
        }
        _ => 0..0,
    };
    let mut thresholds = s.thresholds.clone();
    let mut slo = Vec::new();
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
    }
    for expr in slo {
        thresholds.push(Threshold::parse(&expr).map_err(|e| bad(e.to_string()))?);
    }
    let seed = s.seed.or(default_seed).unwrap_or_else(random_seed);
    let cfg = Config {
        target,
        local: s.bind,
        rtp_local: s.rtp_bind,
        domain: s.domain.clone().unwrap_or_else(|| target.ip().to_string()),
        users: my_users,
        password_prefix: s.password_prefix.clone(),
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
    };
    Ok((cfg, thresholds))
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
    pbxlab_sim::rng::Rng::stream(entropy, "load seed").next_u64() >> 11
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

pub fn load(args: LoadArgs, stop: &AtomicBool) -> anyhow::Result<ExitCode> {
    let scenario = match &args.scenario {
        Some(p) => Some(Scenario::load(p).map_err(|e| bad(e.to_string()))?),
        None => None,
    };
    let (cfg, thresholds) = configure(&Settings::from_args(&args)?, scenario.as_ref(), None)?;
    let interval = duration("interval", &args.interval)?;
    let on_terminal = std::io::stderr().is_terminal();
    let bar = on_terminal.then(indicatif::ProgressBar::new_spinner);
    let mut progress = |p: &Progress| {
        let line = progress_line(p);
        match &bar {
            Some(b) => b.set_message(line),
            None => eprintln!("{line}"),
        }
    };
    let drain_limit = drain_limit(&cfg);
    let (report, log) = pbxlab_loadgen::run(
        cfg,
        RunOptions {
            bind: args.bind,
            rtp_bind: args.rtp_bind,
            interval,
            thresholds,
            stop,
            progress: &mut progress,
            drain_limit,
        },
    )?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let json_to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if !json_to_stdout {
        print!("{}", report.render_text());
    }
    if let Some(path) = &args.json {
        crate::write_json(Some(path), &serde_json::to_value(&report)?)?;
    }
    if let Some(path) = &args.hlog {
        std::fs::write(path, log).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(exit_code(&report))
}

/// Long enough for nearly every call to finish: a call may wait for an IVR transfer, then for
/// an agent, then talk.
pub(crate) fn drain_limit(cfg: &Config) -> Duration {
    let bound = |h: Hold| match h {
        Hold::Fixed(d) => d,
        Hold::Exponential(m) => m * 10,
    };
    cfg.t1 * 128
        + cfg
            .workloads
            .iter()
            .map(|w| {
                bound(w.hold)
                    + w.agent_hold.map_or(Duration::ZERO, bound)
                    + w.patience.unwrap_or_default() * 10
            })
            .max()
            .unwrap_or_default()
}

fn exit_code(report: &LoadReport) -> ExitCode {
    let attempted = report.calls.attempted + report.registrations.attempted;
    if attempted > 0 && report.messages_received == 0 {
        // The kernel reports ICMP port unreachable on the socket connected to the target.
        let refused = report.failures.keys().any(|r| r.contains("refused"));
        eprintln!(
            "pbxlab: no answer from {}: nothing came back to any of {attempted} attempts{}",
            report.target,
            if refused {
                " (the host refused them: nothing listens on that port)"
            } else {
                ""
            }
        );
        return ExitCode::from(EXIT_NO_ANSWER);
    }
    if !report.thresholds_pass() {
        return ExitCode::from(EXIT_THRESHOLDS);
    }
    ExitCode::SUCCESS
}

pub(crate) fn progress_line(p: &Progress) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let i = &p.interval;
    format!(
        "{:>6.1}s  reg {} ({} failed)  calls {} ({} failed, {} active)  setup p99 {:.1} ms  register p99 {:.1} ms",
        p.elapsed.as_secs_f64(),
        p.registrations_attempted,
        p.registrations_failed,
        p.calls_attempted,
        p.calls_failed,
        p.active_calls,
        ms(i.p99_us[pbxlab_loadgen::metrics::Metric::Setup as usize]),
        ms(i.p99_us[pbxlab_loadgen::metrics::Metric::Register as usize]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn configured(flags: &[&str]) -> (Config, Vec<Threshold>) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/reference.toml");
        let scenario = Scenario::load(std::path::Path::new(path)).expect("shipped scenario");
        let mut argv = vec!["load", "--target", "127.0.0.1:5060", path];
        argv.extend_from_slice(flags);
        let cli = Cli::try_parse_from(argv).expect("flags parse");
        let settings = Settings::from_args(&cli.load).expect("flags read");
        configure(&settings, Some(&scenario), None).expect("configures")
    }

    #[test]
    fn a_scenario_runs_one_workload_per_traffic_table_at_its_rate() {
        let (cfg, thresholds) = configured(&[]);
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
        assert_eq!(cfg.reserved, 1000..2000);
        assert_eq!(cfg.service_level, Duration::from_secs(20));
        assert!(
            thresholds
                .iter()
                .any(|t| t.expr == "queue.service_level>=0.8"),
            "{thresholds:?}"
        );
        // The scenario's two hours at 55/s.
        assert_eq!(cfg.workloads[0].calls, 396_000);
    }

    #[test]
    fn a_seed_gives_the_run_id_and_without_one_each_run_picks_its_own() {
        let (a, _) = configured(&["--seed", "7"]);
        let (b, _) = configured(&["--seed", "7"]);
        assert_eq!(
            (a.seed, a.run_id),
            (b.seed, b.run_id),
            "nothing from the clock or the pid"
        );
        assert_eq!(a.run_id, run_id(7, 0));
        let (shard, _) = configured(&["--seed", "7", "--shard", "1/2"]);
        assert_eq!(shard.seed, 7);
        assert_ne!(shard.run_id, a.run_id, "shards keep their Call-IDs apart");
        let (c, _) = configured(&[]);
        let (d, _) = configured(&[]);
        assert_ne!(c.seed, d.seed, "a seed picked per run");
        assert_ne!(
            c.seed, 7,
            "not the scenario's, which every run of it would share"
        );
        assert!(c.seed < 1 << 53, "exact as a JSON double: {}", c.seed);
        assert_eq!(c.run_id, run_id(c.seed, 0));
    }

    #[test]
    fn flags_select_one_workload_and_shards_split_each_one() {
        let (cfg, _) = configured(&["--service", "queue-2", "--patience", "5s"]);
        assert_eq!(cfg.workloads.len(), 1);
        let w = &cfg.workloads[0];
        assert_eq!(w.callee, Callee::Service("queue-2".into()));
        assert_eq!((w.rate, w.arrivals), (55.0, Arrivals::Fixed));
        assert_eq!(w.patience, Some(Duration::from_secs(5)));
        let (cfg, _) = configured(&["--calls", "1001", "--shard", "1/2"]);
        let calls: u64 = cfg.workloads.iter().map(|w| w.calls).sum();
        assert!((499..=502).contains(&calls), "about half of 1001: {calls}");
        assert_eq!(cfg.workloads[0].rate, 27.5);
        assert_eq!(cfg.shard, (1, 2));
    }

    #[test]
    fn a_drill_lays_its_load_keys_over_the_flags_defaults() {
        let scenario = pbxlab_scenario::drill_scenario().expect("the embedded drill");
        let spec = scenario.drill.clone().expect("[drill]");
        let target = SocketAddr::from(([127, 0, 0, 1], 5060));
        let settings = Settings::drill(target, &spec.load).expect("settings");
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
        // What [drill.load] does not set is `pbxlab load`'s default.
        assert_eq!(cfg.t1, Duration::from_millis(500));
        assert_eq!(cfg.ring_delay, Duration::from_secs(1));
        assert_eq!(cfg.expires_s, 3600);
    }
}
