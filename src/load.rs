//! `pbxlab load`: flags and scenario to a load configuration, progress output, reports and the
//! exit code.

use std::io::IsTerminal as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use pbxlab_loadgen::{Callee, Config, Hold, LoadReport, Progress, RunOptions, Threshold};
use pbxlab_sim::Scenario;
use pbxlab_sim::scenario::{HoldDist, parse_duration, parse_rate};

use crate::BadInput;

/// Exit code when thresholds are breached (k6 uses 99 too).
pub const EXIT_THRESHOLDS: u8 = 99;
/// Exit code when the target never sent a single datagram back.
pub const EXIT_NO_ANSWER: u8 = 3;

#[derive(clap::Args)]
pub struct LoadArgs {
    /// The SIP server to load: a registrar, proxy or UAS (HOST:PORT, UDP).
    #[arg(long)]
    target: String,
    /// Scenario file: users, call rate, hold time and SLOs from its [traffic] and [slo].
    scenario: Option<PathBuf>,
    /// Users to register with digest authentication (0: place calls without registering).
    #[arg(long)]
    users: Option<u32>,
    /// Number of the first user; users are FIRST..FIRST+USERS-1.
    #[arg(long, default_value_t = 1000)]
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
    /// Call attempts in all (default: call rate x duration).
    #[arg(long)]
    calls: Option<u64>,
    /// Call attempts per second ("100/s").
    #[arg(long)]
    call_rate: Option<String>,
    /// How long each call is held before the BYE ("20s").
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
    /// Call this user part at the target (echo, ivr-N, queue-N, meeting-N, ...) instead of
    /// another of our registered users.
    #[arg(long)]
    service: Option<String>,
    /// How long our users let an incoming call ring before answering.
    #[arg(long, default_value = "1s")]
    ring_delay: String,
    /// Digits to send as RFC 4733 events once a call is answered (needs --rtp).
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
    /// Seed for hold times, RTP choice and nonces (default: the scenario's, or 1).
    #[arg(long)]
    seed: Option<u64>,
}

fn bad(msg: String) -> anyhow::Error {
    BadInput(msg).into()
}

fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    parse_duration(text).map_err(|e| bad(format!("--{flag} {text:?}: {e}")))
}

fn rate(flag: &str, text: &str) -> anyhow::Result<f64> {
    parse_rate(text).map_err(|e| bad(format!("--{flag} {text:?}: {e}")))
}

/// The configuration of this shard, and the thresholds to check.
fn configure(
    args: &LoadArgs,
    scenario: Option<&Scenario>,
) -> anyhow::Result<(Config, Vec<Threshold>)> {
    let target = args
        .target
        .to_socket_addrs()
        .map_err(|e| bad(format!("--target {:?}: {e}", args.target)))?
        .next()
        .ok_or_else(|| bad(format!("--target {:?} resolves to no address", args.target)))?;
    let (shard, shards) = args
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
    let traffic = scenario.map(|s| &s.traffic);
    let reg = traffic.and_then(|t| t.registrations.as_ref());
    let calls_traffic = traffic.and_then(|t| t.calls.as_ref());
    let users = args.users.or(reg.map(|r| r.users)).unwrap_or(0);
    let first_user = if args.users.is_none() {
        reg.map_or(args.first_user, |r| r.first_user)
    } else {
        args.first_user
    };
    // Shard i takes every n-th user, so shards never share a user.
    let my_users: Vec<u32> = (0..users)
        .filter(|k| k % shards == shard)
        .map(|k| first_user + k)
        .collect();
    let call_rate = match (&args.call_rate, calls_traffic) {
        (Some(r), _) => rate("call-rate", r)?,
        (None, Some(c)) => c.rate_per_s,
        (None, None) => 10.0,
    };
    let hold = match (&args.hold, calls_traffic) {
        (Some(h), _) => {
            let d = duration("hold", h)?;
            match args.hold_dist.as_str() {
                "fixed" => Hold::Fixed(d),
                "exponential" => Hold::Exponential(d),
                other => {
                    return Err(bad(format!(
                        "--hold-dist {other:?}: use fixed or exponential"
                    )));
                }
            }
        }
        (None, Some(c)) => match c.hold {
            HoldDist::Fixed { s } => Hold::Fixed(Duration::from_secs_f64(s)),
            HoldDist::Exponential { mean_s } | HoldDist::LogNormal { mean_s, .. } => {
                Hold::Exponential(Duration::from_secs_f64(mean_s))
            }
        },
        (None, None) => Hold::Fixed(Duration::from_secs(5)),
    };
    let run_for = match (&args.duration, scenario) {
        (Some(d), _) => duration("duration", d)?,
        (None, Some(s)) => s.duration,
        (None, None) => Duration::from_secs(10),
    };
    let total_calls = args
        .calls
        .unwrap_or_else(|| (call_rate * run_for.as_secs_f64()).round() as u64);
    let my_calls = total_calls / u64::from(shards)
        + u64::from(u64::from(shard) < total_calls % u64::from(shards));
    if !(0.0..=1.0).contains(&args.rtp) {
        return Err(bad(format!("--rtp {}: a fraction from 0 to 1", args.rtp)));
    }
    let callee = match &args.service {
        Some(s) => Callee::Service(s.clone()),
        None if users >= 2 => Callee::Users,
        None => Callee::Service("service".into()),
    };
    let mut thresholds = args
        .thresholds
        .iter()
        .map(|t| Threshold::parse(t).map_err(|e| bad(e.to_string())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(b) = scenario.and_then(|s| s.slo.blocking) {
        thresholds.push(
            Threshold::parse(&format!("calls.failed_fraction<={b}"))
                .map_err(|e| bad(e.to_string()))?,
        );
    }
    let seed = args.seed.or(scenario.map(|s| s.seed)).unwrap_or(1);
    let cfg = Config {
        target,
        local: args.bind,
        rtp_local: args.rtp_bind,
        domain: args
            .domain
            .clone()
            .unwrap_or_else(|| target.ip().to_string()),
        users: my_users,
        password_prefix: args.password_prefix.clone(),
        register: users > 0,
        register_rate: rate("register-rate", &args.register_rate)? / f64::from(shards),
        expires_s: args.expires,
        calls: my_calls,
        call_rate: call_rate / f64::from(shards),
        hold,
        callee,
        rtp_fraction: args.rtp,
        max_concurrent: args.max_concurrent,
        ring_delay: duration("ring-delay", &args.ring_delay)?,
        dtmf: args.dtmf.clone(),
        t1: duration("t1", &args.t1)?,
        t2: Duration::from_secs(4),
        seed,
        // Call-IDs of different shards and runs never collide.
        run_id: (seed as u32).wrapping_mul(2_654_435_761) ^ (std::process::id() << 8) ^ shard,
    };
    Ok((cfg, thresholds))
}

pub fn load(args: LoadArgs, stop: &AtomicBool) -> anyhow::Result<ExitCode> {
    let scenario = match &args.scenario {
        Some(p) => Some(Scenario::load(p).map_err(|e| bad(e.to_string()))?),
        None => None,
    };
    let (cfg, thresholds) = configure(&args, scenario.as_ref())?;
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
    let drain_limit = cfg.t1 * 64
        + match cfg.hold {
            Hold::Fixed(d) => d,
            Hold::Exponential(m) => m * 10,
        };
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

fn exit_code(report: &LoadReport) -> ExitCode {
    let attempted = report.calls.attempted + report.registrations.attempted;
    if attempted > 0 && report.messages_received == 0 {
        eprintln!(
            "pbxlab: no answer from {}: nothing came back to any of {attempted} attempts",
            report.target
        );
        return ExitCode::from(EXIT_NO_ANSWER);
    }
    if !report.thresholds_pass() {
        return ExitCode::from(EXIT_THRESHOLDS);
    }
    ExitCode::SUCCESS
}

fn progress_line(p: &Progress) -> String {
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
