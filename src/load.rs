//! `pbxlab load`: its flags read into [`Settings`], the run with its progress output, the
//! reports and the exit code. What the settings and a scenario make of the load is
//! [`pbxlab_loadgen::settings`].

use std::io::{IsTerminal as _, Read as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pbxlab_loadgen::engine::{Arrivals, Grid};
use pbxlab_loadgen::settings::{self, DEFAULT_FIRST_USER, Settings};
use pbxlab_loadgen::{
    Appender, Config, Draining, Hold, LoadReport, Password, Progress, RunOptions, Threshold,
    UsersFile,
};
use pbxlab_scenario::{Scenario, parse_duration, parse_rate};

use crate::BadInput;

/// Exit code when thresholds are breached (k6 uses 99 too).
pub const EXIT_THRESHOLDS: u8 = 99;
/// Exit code when the target never sent a single datagram back.
pub const EXIT_NO_ANSWER: u8 = 3;

/// With a scenario, `pbxlab load` runs one workload per table of its [traffic]: [traffic.calls]
/// (our users call each other), [traffic.ivr] (`ivr-1` calls; a then_queue fraction presses a
/// digit 1..queues to be transferred to that queue), [traffic.queue] (`queue-Q` calls, Q uniform
/// over the queues, with the scenario's patience) and [traffic.meetings] (`meeting-N` calls
/// filling rooms of round(participants) people, each held for the meeting's duration), each at
/// its own rate, Poisson arrivals by default. --service replaces the mix with one workload.
///
/// Queue agents are our registered users: the agents of queue q are users
/// first_user + (q-1)*agents .. first_user + q*agents - 1 (the cluster numbers them the same
/// way), or the rows in those places of --users-file. They only answer the calls the cluster
/// places to them; none of our own calls uses them.
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
    /// Users listed in a SIPp injection file (-inf): a first line SEQUENTIAL, RANDOM or USER
    /// (who places and who receives each call: in file order, or drawn from the seed; USER as
    /// SEQUENTIAL), then a row per user, `user;[authentication username=U password=P]`, other
    /// fields ignored, `#` comments. Every row registers, in file order. Replaces --users,
    /// --first-user and the scenario's users.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["users", "first_user", "password_prefix"]
    )]
    users_file: Option<PathBuf>,
    /// Domain of the users' addresses of record (default: the target's host).
    #[arg(long)]
    domain: Option<String>,
    /// Digest password of user N is this prefix followed by N [default: pw-].
    #[arg(long, value_name = "PREFIX", conflicts_with = "password")]
    password_prefix: Option<String>,
    /// One digest password for every user; with --users-file, for the rows that give none
    /// [default: $PBXLAB_PASSWORD, unless --password-prefix is given].
    #[arg(long)]
    password: Option<String>,
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
    /// Write the report as one self-contained HTML page to FILE: percentiles of each metric,
    /// attempt rates, failures and calls in progress over time (one point per --interval), and
    /// the totals with RTP loss, jitter and MOS.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Write an HdrHistogram interval log (one compressed histogram per metric per interval,
    /// tagged with its name, in µs), as HdrHistogram's Java, Python and Go tools read it. Written
    /// as each interval closes: a run that is killed leaves the intervals it closed.
    #[arg(long, value_name = "FILE")]
    hlog: Option<PathBuf>,
    /// Write the run interval by interval as CSV (the JSON's intervals: counts, failures by
    /// class, concurrent calls, rates, p50/p90/p99 per metric in ms). Appended as each interval
    /// closes, then rewritten whole at the end.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Run slice i of n (0-based): a disjoint part of the users and 1/n of the rates. auto/n
    /// takes i from $JOB_COMPLETION_INDEX, as Kubernetes sets it in an Indexed Job's pods.
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// The run this report is part of, for `pbxlab merge` to refuse shards of other runs
    /// (default: a hash of the settings every shard shares; give one, e.g. the Job's uid, to
    /// tell apart two runs of the same command).
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
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

/// The users' passwords: `--password`, else `--password-prefix`, else $PBXLAB_PASSWORD (which
/// keeps a shared password off the command line, where every user of the machine sees it),
/// else the prefix `pw-`.
fn password(args: &LoadArgs) -> Password {
    match (&args.password, &args.password_prefix) {
        (Some(p), _) => Password::Shared(p.clone()),
        (None, Some(prefix)) => Password::Prefix(prefix.clone()),
        (None, None) => match std::env::var("PBXLAB_PASSWORD") {
            Ok(p) if !p.is_empty() => Password::Shared(p),
            _ => Password::Prefix("pw-".into()),
        },
    }
}

/// Reads `--users-file`; every error names the file, and the line where there is one.
fn users_file(path: &Path, password: &Password) -> anyhow::Result<UsersFile> {
    let name = path.display();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            // One byte past the limit, for the parser to refuse.
            f.take(UsersFile::MAX_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| bad(format!("--users-file {name}: {e}")))?;
    let shared = match password {
        Password::Shared(p) => Some(p.as_str()),
        Password::Prefix(_) => None,
    };
    UsersFile::parse(&bytes, shared).map_err(|e| match e {
        pbxlab_loadgen::Error::UsersFile {
            line: Some(line),
            reason,
        } => bad(format!("--users-file {name}:{line}: {reason}")),
        e => bad(format!("--users-file {name}: {e}")),
    })
}

fn rate(flag: &str, text: &str) -> anyhow::Result<f64> {
    parse_rate(text).map_err(|e| bad(format!("--{flag} {text:?}: {e}")))
}

/// Where `--shard auto/N` reads its index: Kubernetes sets it in each pod of an Indexed Job.
pub const SHARD_INDEX_VAR: &str = "JOB_COMPLETION_INDEX";

/// `--shard i/n`, or `auto/n` with i from `index` (the value of [`SHARD_INDEX_VAR`], `None`
/// when it is not set).
fn shard(text: &str, index: Option<&str>) -> anyhow::Result<(u32, u32)> {
    let usage = || {
        bad(format!(
            "--shard {text:?}: write i/n with 0 <= i < n, e.g. 0/2, or auto/n"
        ))
    };
    let (i, n) = text.split_once('/').ok_or_else(usage)?;
    let n = n.parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(usage)?;
    if i != "auto" {
        return i
            .parse::<u32>()
            .ok()
            .filter(|&i| i < n)
            .map(|i| (i, n))
            .ok_or_else(usage);
    }
    let index = index.ok_or_else(|| {
        bad(format!(
            "--shard {text}: ${SHARD_INDEX_VAR} is not set (Kubernetes sets it in the pods of an \
             Indexed Job; elsewhere give the index, e.g. --shard 0/{n})"
        ))
    })?;
    match index.trim().parse::<u32>() {
        Ok(i) if i < n => Ok((i, n)),
        Ok(i) => Err(bad(format!(
            "--shard {text}: ${SHARD_INDEX_VAR} is {i}, not below {n}: the Job's completions \
             and the shard count must be equal"
        ))),
        Err(_) => Err(bad(format!(
            "--shard {text}: ${SHARD_INDEX_VAR} is {index:?}, not a shard index"
        ))),
    }
}

/// The run identity a report carries for `pbxlab merge` (`--run-id`, else this): the same in
/// every shard of one command, different when anything that shapes the load differs. A hash
/// (FNV-1a, 64 bits) of the target as given, the scenario file's bytes, and every setting but
/// those that vary by shard or by machine: the shard, the seed (picked per shard when not
/// given), the local addresses and the resolved target (pods may resolve a name apart). The
/// password rule is left out too: the hash is written into reports, and two runs that differ
/// only by password are the same load.
pub(crate) fn run_identity(target: &str, scenario: Option<&[u8]>, s: &Settings) -> String {
    let mut same = s.clone();
    same.shard = (0, 1);
    same.seed = None;
    same.bind = SocketAddr::from(([0, 0, 0, 0], 0));
    same.rtp_bind = same.bind;
    same.target = same.bind;
    same.password = Password::Prefix(String::new());
    /// FNV-1a over what is written to it: a users file of millions of rows is hashed as it
    /// is formatted, never held as one string.
    struct Fnv(u64);
    impl Fnv {
        fn bytes(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    impl std::fmt::Write for Fnv {
        fn write_str(&mut self, text: &str) -> std::fmt::Result {
            self.bytes(text.as_bytes());
            Ok(())
        }
    }
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    // Writing to it cannot fail.
    let _ = std::fmt::Write::write_fmt(&mut hash, format_args!("{target}\n{same:?}\n"));
    hash.bytes(scenario.unwrap_or_default());
    format!("{:016x}", hash.0)
}

/// Reads the flags; every error names its flag.
pub(crate) fn from_args(args: &LoadArgs) -> anyhow::Result<Settings> {
    let target = args
        .target
        .to_socket_addrs()
        .map_err(|e| bad(format!("--target {:?}: {e}", args.target)))?
        .next()
        .ok_or_else(|| bad(format!("--target {:?} resolves to no address", args.target)))?;
    let shard = shard(&args.shard, std::env::var(SHARD_INDEX_VAR).ok().as_deref())?;
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
    let password = password(args);
    let users_file = match &args.users_file {
        Some(path) => Some(users_file(path, &password)?),
        None => None,
    };
    Ok(Settings {
        target,
        shard,
        users: args.users,
        first_user: args.users.map(|_| args.first_user),
        users_file,
        domain: args.domain.clone(),
        password,
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

/// The configuration of this shard and the thresholds to check, as
/// [`pbxlab_loadgen::configure`] gives them, with its warnings printed.
pub(crate) fn configure(
    s: &Settings,
    scenario: Option<&Scenario>,
    default_seed: Option<u64>,
) -> anyhow::Result<(Config, Vec<Threshold>)> {
    for w in settings::warnings(s, scenario) {
        eprintln!("pbxlab: warning: {w}");
    }
    settings::configure(s, scenario, default_seed).map_err(|e| bad(e.to_string()))
}

pub fn load(args: LoadArgs, stop: &AtomicBool) -> anyhow::Result<ExitCode> {
    crate::writable("--json", args.json.as_ref())?;
    crate::writable("--hlog", args.hlog.as_ref())?;
    crate::writable("--csv", args.csv.as_ref())?;
    not_stdout("--hlog", args.hlog.as_deref())?;
    not_stdout("--csv", args.csv.as_deref())?;
    crate::html::writable(args.html.as_ref())?;
    let scenario = match &args.scenario {
        Some(p) => Some(Scenario::load(p).map_err(|e| bad(e.to_string()))?),
        None => None,
    };
    let settings = from_args(&args)?;
    let run = match &args.run_id {
        Some(id) if id.trim().is_empty() => {
            return Err(bad(
                "--run-id: empty; give a name or leave the flag out".into()
            ));
        }
        Some(id) => id.clone(),
        None => {
            let bytes = match &args.scenario {
                Some(p) => {
                    Some(std::fs::read(p).map_err(|e| bad(format!("{}: {e}", p.display())))?)
                }
                None => None,
            };
            run_identity(&args.target, bytes.as_deref(), &settings)
        }
    };
    // Making millions of users takes seconds: done aside, so Ctrl-C is heard meanwhile.
    let setup = std::thread::spawn(move || configure(&settings, scenario.as_ref(), None));
    while !setup.is_finished() {
        if stop.load(Ordering::Relaxed) {
            eprintln!("pbxlab: stopped while setting up the users: nothing was sent");
            return Ok(ExitCode::from(crate::plan::EXIT_INTERRUPTED));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (cfg, thresholds) = setup
        .join()
        .map_err(|_| anyhow::anyhow!("setting up the load failed"))??;
    if let Some(w) = pbxlab_loadgen::settings::memory_warning(&cfg) {
        eprintln!("pbxlab: warning: {w}");
    }
    let interval = duration("interval", &args.interval)?;
    let on_terminal = std::io::stderr().is_terminal();
    let bar = on_terminal.then(indicatif::ProgressBar::new_spinner);
    // Said once, when the schedule is over and calls are still up: what the run waits for.
    let mut told_waiting = false;
    let mut progress = |p: &Progress| {
        let line = progress_line(p);
        let waiting = p
            .draining
            .filter(|_| !told_waiting)
            .map(|d| waiting_line(&d));
        match &bar {
            Some(b) => b.set_message(line),
            None => eprintln!("{line}"),
        }
        if let Some(w) = waiting {
            told_waiting = true;
            match &bar {
                Some(b) => b.println(w),
                None => eprintln!("{w}"),
            }
        }
    };
    let drain_limit = cfg.drain_limit;
    let mut hlog = appender("--hlog", args.hlog.as_deref())?;
    let mut csv = appender("--csv", args.csv.as_deref())?;
    let mut report = pbxlab_loadgen::run(
        cfg,
        RunOptions {
            bind: args.bind,
            rtp_bind: args.rtp_bind,
            interval,
            thresholds,
            stop,
            progress: &mut progress,
            hlog: hlog.as_mut(),
            csv: csv.as_mut(),
        },
    )?;
    report.run = run;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    for line in given_up_lines(&report, drain_limit) {
        eprintln!("{line}");
    }
    let json_to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if !json_to_stdout {
        crate::show(&report.render_text());
    }
    if args.json.is_some() || args.html.is_some() {
        let value = serde_json::to_value(&report)?;
        crate::write_json(args.json.as_ref(), &value)?;
        crate::html::write(args.html.as_ref(), &value, crate::html::load)?;
    }
    // The CSV as a whole, in one step: the same rows it was appended as it went.
    if let Some(path) = &args.csv {
        crate::write_atomic(
            path,
            pbxlab_loadgen::csv::file(&report.intervals).as_bytes(),
        )?;
    }
    if let (Some(path), Some(e)) = (&args.hlog, hlog.as_ref().and_then(|h| h.error())) {
        anyhow::bail!(
            "--hlog {}: writing failed ({e}); the log stops at the interval before",
            path.display()
        );
    }
    Ok(exit_code(&report))
}

/// Refuses `-` for a file the run appends to: standard output has the report's tables (or its
/// JSON), and the two would interleave.
fn not_stdout(flag: &str, path: Option<&Path>) -> anyhow::Result<()> {
    match path {
        Some(p) if p.as_os_str() == "-" => Err(bad(format!(
            "{flag} -: give a file (standard output has the report)"
        ))),
        _ => Ok(()),
    }
}

/// The file a run appends to as it goes (`--hlog`, `--csv`), created (emptied) now.
fn appender(flag: &str, path: Option<&Path>) -> anyhow::Result<Option<Appender>> {
    not_stdout(flag, path)?;
    let Some(path) = path else { return Ok(None) };
    let file = std::fs::File::create(path).map_err(|e| {
        bad(format!(
            "{flag} {}: cannot be written ({e})",
            path.display()
        ))
    })?;
    Ok(Some(Appender::new(Box::new(file))))
}

/// The line that says what a run whose schedule is over still waits for.
pub(crate) fn waiting_line(d: &Draining) -> String {
    let c = &d.calls;
    let parts: Vec<String> = [
        (c.setting_up, "setting up"),
        (c.holding, "holding"),
        (c.in_menu, "waiting for an IVR transfer"),
        (c.queued, "queued"),
        (c.hanging_up, "hanging up"),
        (c.answered, "answered by our users"),
    ]
    .into_iter()
    .filter(|&(n, _)| n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    format!(
        "pbxlab: every attempt has started; waiting up to {:.0} s for {} in progress ({})",
        d.left.as_secs_f64(),
        crate::count(c.total(), "call leg"),
        parts.join(", ")
    )
}

/// What a run gave up on, said plainly: the call legs still in progress at the drain limit,
/// those ended when the target fell silent, and the legs we answered that the far end never
/// hung up.
pub(crate) fn given_up_lines(report: &LoadReport, drain_limit: Duration) -> Vec<String> {
    use pbxlab_loadgen::engine::{DRAINED, NOT_HUNG_UP, TARGET_SILENT};
    let failed = |reason: &str| report.failures.get(reason).copied().unwrap_or_default();
    let legs = |n: u64| crate::count(usize::try_from(n).unwrap_or(usize::MAX), "call leg");
    let mut lines = Vec::new();
    let n = failed(TARGET_SILENT);
    if n > 0 {
        lines.push(format!(
            "pbxlab: the target fell silent after the last attempt (a request timed out with nothing heard for 64 x T1): {} in progress ended then, counted as \"{TARGET_SILENT}\"",
            legs(n)
        ));
    }
    let n = failed(DRAINED);
    if n > 0 {
        lines.push(format!(
            "pbxlab: gave up on {} still in progress {:.0} s after the last attempt started (the drain limit: the longest a call of this run may take), counted as \"{DRAINED}\"",
            legs(n),
            drain_limit.as_secs_f64()
        ));
    }
    let n = failed(NOT_HUNG_UP);
    if n > 0 {
        lines.push(format!(
            "pbxlab: the far end never hung up {} answered by our users after the last of our own calls ended: ended 64 x T1 later, counted as \"{NOT_HUNG_UP}\"",
            legs(n)
        ));
    }
    lines
}

pub(crate) fn exit_code(report: &LoadReport) -> ExitCode {
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
        if report.saturated() {
            eprintln!(
                "pbxlab: thresholds broke while pbxlab itself fell behind on this machine: the run is invalid (exit {})",
                crate::EXIT_INVALID
            );
            return ExitCode::from(crate::EXIT_INVALID);
        }
        return ExitCode::from(EXIT_THRESHOLDS);
    }
    ExitCode::SUCCESS
}

pub(crate) fn progress_line(p: &Progress) -> String {
    format!("{:>6.1}s  {}", p.elapsed.as_secs_f64(), progress_figures(p))
}

/// The progress line without its time, for lines that give the time their own way (the drill).
pub(crate) fn progress_figures(p: &Progress) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let i = &p.interval;
    format!(
        "reg {} ({} failed)  calls {} ({} failed, {} active)  setup p99 {:.1} ms  register p99 {:.1} ms",
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

    fn read(flags: &[&str]) -> anyhow::Result<Settings> {
        let mut argv = vec!["load", "--target", "127.0.0.1:5060"];
        argv.extend_from_slice(flags);
        from_args(&Cli::try_parse_from(argv).expect("flags parse").load)
    }

    #[test]
    fn no_flags_give_the_librarys_defaults() {
        // A drill's load starts from `Settings::new`: the flags' defaults must not drift from it.
        let target = SocketAddr::from(([127, 0, 0, 1], 5060));
        assert_eq!(read(&[]).expect("reads"), Settings::new(target));
    }

    #[test]
    fn flags_land_in_their_settings() {
        let s = read(&[
            "--shard",
            "1/2",
            "--users",
            "10",
            "--hold",
            "20s",
            "--hold-dist",
            "exponential",
            "--call-rate",
            "30000/min",
            "--arrivals",
            "poisson",
            "--tick",
            "2ms",
            "--threshold",
            "calls.failed==0",
        ])
        .expect("reads");
        assert_eq!(s.shard, (1, 2));
        assert_eq!(
            (s.users, s.first_user),
            (Some(10), Some(DEFAULT_FIRST_USER))
        );
        assert_eq!(s.hold, Some(Hold::Exponential(Duration::from_secs(20))));
        assert_eq!(s.call_rate_per_s, Some(500.0));
        assert_eq!(s.arrivals, Some(Arrivals::Poisson));
        assert_eq!(s.tick, Grid::Every(Duration::from_millis(2)));
        assert_eq!(s.thresholds.len(), 1);
    }

    #[test]
    fn password_flags_give_the_password_rule() {
        assert_eq!(
            read(&["--password", "s3cret"]).expect("reads").password,
            Password::Shared("s3cret".into())
        );
        assert_eq!(
            read(&["--password-prefix", "x-"]).expect("reads").password,
            Password::Prefix("x-".into())
        );
    }

    #[test]
    fn flags_that_say_the_same_thing_twice_are_refused() {
        for flags in [
            &["--password", "a", "--password-prefix", "b"][..],
            &["--users-file", "u.csv", "--users", "10"],
            &["--users-file", "u.csv", "--first-user", "2000"],
            &["--users-file", "u.csv", "--password-prefix", "b"],
        ] {
            let mut argv = vec!["load", "--target", "127.0.0.1:5060"];
            argv.extend_from_slice(flags);
            let e = Cli::try_parse_from(argv).err().expect("refused");
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{flags:?}"
            );
            assert!(e.to_string().contains("cannot be used with"), "{e}");
        }
    }

    /// A users file in a scratch directory of its own.
    fn users_file_at(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pbxlab-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn a_users_file_is_read_and_a_bad_one_named_with_its_line() {
        let good = users_file_at(
            "good.csv",
            "RANDOM\nalice;[authentication username=a password=x]\nbob\n",
        );
        let path = good.to_str().expect("utf-8");
        let s = read(&["--users-file", path, "--password", "shared"]).expect("reads");
        let file = s.users_file.expect("read");
        assert_eq!(file.order, pbxlab_loadgen::UserOrder::Random);
        let users: Vec<(&str, &str, &str)> = file
            .users
            .iter()
            .map(|u| (u.name, u.username, u.password))
            .collect();
        assert_eq!(users, [("alice", "a", "x"), ("bob", "bob", "shared")]);
        // Without --password, bob has none.
        let e = read(&["--users-file", path]).expect_err("refused");
        assert!(e.downcast_ref::<BadInput>().is_some(), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("--users-file {path}:3: ")),
            "{e}"
        );
        let e = read(&["--users-file", "/nonexistent/users.csv"]).expect_err("refused");
        assert!(e.downcast_ref::<BadInput>().is_some(), "{e}");
        assert!(e.to_string().contains("/nonexistent/users.csv"), "{e}");
    }

    #[test]
    fn shard_auto_takes_its_index_from_the_jobs_variable_and_names_it_when_wrong() {
        assert_eq!(shard("1/3", None).expect("reads"), (1, 3));
        assert_eq!(shard("auto/3", Some("2")).expect("reads"), (2, 3));
        assert_eq!(shard("auto/3", Some("0")).expect("reads"), (0, 3));
        for (index, says) in [
            (None, "is not set"),
            (Some("two"), "\"two\", not a shard index"),
            (Some(""), "not a shard index"),
            (Some("-1"), "not a shard index"),
            (Some("3"), "is 3, not below 3"),
        ] {
            let e = shard("auto/3", index).expect_err("refused");
            assert!(e.downcast_ref::<BadInput>().is_some(), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("$JOB_COMPLETION_INDEX") && text.contains(says),
                "{index:?}: {text}"
            );
        }
        for text in ["auto/0", "auto", "auto/x", "3/3", "a/b"] {
            let e = shard(text, Some("0")).expect_err("refused");
            assert!(e.to_string().contains("--shard"), "{text}: {e}");
        }
    }

    #[test]
    fn every_shard_of_one_command_has_one_run_identity_and_other_loads_another() {
        let base = read(&["--users", "30", "--call-rate", "10/s"]).expect("reads");
        let id = run_identity("127.0.0.1:5060", None, &base);
        assert_eq!(id.len(), 16, "{id}");
        // What varies by shard or by machine leaves it as it is.
        let mut other =
            read(&["--users", "30", "--call-rate", "10/s", "--shard", "2/3"]).expect("reads");
        other.seed = Some(7);
        other.bind = SocketAddr::from(([127, 0, 0, 2], 5070));
        other.rtp_bind = SocketAddr::from(([127, 0, 0, 2], 5072));
        other.target = SocketAddr::from(([127, 0, 0, 9], 5060));
        assert_eq!(run_identity("127.0.0.1:5060", None, &other), id);
        // What shapes the load changes it: a rate, the target named, the scenario's bytes.
        let faster = read(&["--users", "30", "--call-rate", "11/s"]).expect("reads");
        assert_ne!(run_identity("127.0.0.1:5060", None, &faster), id);
        assert_ne!(run_identity("pbx.example:5060", None, &base), id);
        assert_ne!(
            run_identity("127.0.0.1:5060", Some(b"[traffic]\n"), &base),
            id
        );
        assert_ne!(
            run_identity("127.0.0.1:5060", Some(b"[traffic]\n"), &base),
            run_identity("127.0.0.1:5060", Some(b"[traffic] \n"), &base)
        );
    }

    #[test]
    fn the_files_a_run_appends_to_are_files() {
        let e = appender("--csv", Some(Path::new("-")))
            .err()
            .expect("refused");
        assert!(e.downcast_ref::<BadInput>().is_some(), "{e}");
        assert!(e.to_string().starts_with("--csv -: give a file"), "{e}");
        let e = appender("--hlog", Some(Path::new("/nonexistent/run.hlog")))
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains("--hlog /nonexistent/run.hlog"),
            "{e}"
        );
        assert!(appender("--csv", None).expect("none").is_none());
    }

    #[test]
    fn bad_flags_are_named_in_the_error() {
        for (flags, named) in [
            (&["--shard", "2/2"][..], "--shard"),
            (&["--rtp", "1.5"], "--rtp"),
            (&["--hold", "5s", "--hold-dist", "pareto"], "--hold-dist"),
            (&["--tick", "1s"], "--tick"),
        ] {
            let e = read(flags).expect_err("refused");
            assert!(e.downcast_ref::<BadInput>().is_some(), "{e}");
            assert!(e.to_string().contains(named), "{flags:?}: {e}");
        }
    }

    #[test]
    fn a_run_past_its_schedule_says_what_it_waits_for_and_what_it_gave_up() {
        let line = waiting_line(&Draining {
            left: Duration::from_secs(264),
            calls: pbxlab_loadgen::engine::InProgress {
                holding: 32,
                queued: 1,
                answered: 34,
                ..Default::default()
            },
        });
        assert_eq!(
            line,
            "pbxlab: every attempt has started; waiting up to 264 s for 67 call legs in progress \
             (32 holding, 1 queued, 34 answered by our users)"
        );
        let mut report = LoadReport::default();
        assert!(given_up_lines(&report, Duration::from_secs(264)).is_empty());
        report.failures.insert("BYE timeout".into(), 1);
        report
            .failures
            .insert(pbxlab_loadgen::engine::TARGET_SILENT.into(), 75);
        report
            .failures
            .insert(pbxlab_loadgen::engine::DRAINED.into(), 2);
        let lines = given_up_lines(&report, Duration::from_secs(264));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("75 call legs in progress ended"),
            "{lines:?}"
        );
        assert!(lines[1].contains("gave up on 2 call legs"), "{lines:?}");
        assert!(
            lines[1].contains("264 s after the last attempt"),
            "{lines:?}"
        );
    }
}
