//! `pbxlab cluster`: run the emulated cluster live on loopback until Ctrl-C, SIGTERM or
//! `--for` runs out, printing a status line every interval.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pbxlab_cluster::alerts::AlertSink;
use pbxlab_cluster::cluster::{Cluster, Options, Status};
use pbxlab_cluster::ctl::node_json;
use pbxlab_loadgen::report::{DriverPace, render_pace};
use pbxlab_scenario::{parse_duration, parse_rate};

use crate::{BadInput, load_scenario};

/// Run the emulated cluster (Call Manager + nodes) live on loopback.
///
/// Users are those of the scenario's [traffic.registrations] (first_user..), each with the
/// digest password PREFIX+N. Services: `echo`, `ivr-N`, `queue-N` (agents of queue q are users
/// first_user + (q-1)*agents ..), `meeting-ROOM`; any registered user by number.
#[derive(clap::Args)]
pub(crate) struct ClusterArgs {
    /// Scenario file (default: the embedded reference cluster).
    scenario: Option<PathBuf>,
    /// The Call Manager's SIP address (UDP).
    #[arg(long, default_value = "127.0.0.1:5060")]
    sip: SocketAddr,
    /// Realm and domain of the users.
    #[arg(long, default_value = "pbxlab.test")]
    domain: String,
    /// Digest password of user N is this prefix followed by N.
    #[arg(long, default_value = "pw-")]
    password_prefix: String,
    /// Requests per second one source address may send before it gets 503s.
    #[arg(long, default_value = "200/s")]
    rate_limit: String,
    /// Requests a quiet source may send at once.
    #[arg(long, default_value_t = 400.0)]
    burst: f64,
    /// Requests per second all sources that are neither whitelisted nor nodes may send
    /// together before they get 503s (a burst of twice that passes at once). Default: five
    /// times --rate-limit.
    #[arg(long, value_name = "RATE")]
    global_rate_limit: Option<String>,
    /// Sources exempt from the rate limit (repeatable; the nodes always are).
    #[arg(long, default_value = "127.0.0.1")]
    whitelist: Vec<IpAddr>,
    /// Sources whose calls are never challenged, e.g. a proxy or trunk in front that
    /// authenticates its own users (repeatable; added to the scenario's `[cluster] trusted`).
    /// Not implied by --whitelist.
    #[arg(long, value_name = "IP")]
    trusted: Vec<IpAddr>,
    /// Services callers without credentials may reach, by user part: a name or a prefix
    /// ending in `*` (repeatable; replaces the scenario's `[cluster] public`, whose default is
    /// every service: echo, ivr-*, queue-*, meeting-*). Our users' numbers are never public.
    #[arg(long, value_name = "PATTERN")]
    public: Vec<String>,
    /// Stop by itself after this long ("90s"); default: run until stopped.
    #[arg(long = "for", value_name = "DURATION")]
    run_for: Option<String>,
    /// How often the status line is printed.
    #[arg(long, default_value = "1s")]
    status_every: String,
    /// End a call (BYE to both legs, its media session ended) this long after its INVITE;
    /// "0s" for no limit.
    #[arg(long, value_name = "DURATION", default_value = "3h")]
    max_call: String,
    /// Write the final status as JSON here ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Serve the HTTP control endpoint of `pbxlab ctl` on this address (TCP).
    #[arg(long, value_name = "ADDR")]
    ctl: Option<SocketAddr>,
    /// Append one JSON line per alert (an IVR, queue or meeting server down) to FILE.
    #[arg(long, value_name = "FILE")]
    alerts: Option<PathBuf>,
    /// POST each alert's JSON to this URL (http://HOST:PORT/PATH); failures are logged.
    #[arg(long, value_name = "URL")]
    alert_webhook: Option<String>,
    /// The join token [default: $PBXLAB_JOIN_TOKEN]: nodes in their own processes
    /// (`pbxlab node --join-token T`) that prove it join a pool of the scenario. It never
    /// travels on the link. Without one, no node may join.
    #[arg(long, value_name = "T")]
    join_token: Option<String>,
    /// Read the join token from FILE (its one line; read once, at start).
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<PathBuf>,
    /// The control endpoint's bearer token [default: $PBXLAB_ADMIN_TOKEN]; it must differ
    /// from the join token. Without one, `--ctl` makes a random token, printed at start.
    #[arg(long, value_name = "T")]
    admin_token: Option<String>,
    /// Read the admin token from FILE (its one line; read once, at start).
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Deprecated: the join token (only), like --join-token; so is $PBXLAB_TOKEN.
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// With [callmanager] nodes = N: run Call Manager K in network namespace NS_K (an `ip
    /// netns` name) at address IP_K there, as NS:IP, once per Call Manager in order. --sip is
    /// then the virtual IP, which a VRRP daemon (keepalived) in each namespace moves; see
    /// --vrrp-track.
    #[arg(long = "cm-netns", value_name = "NS:IP")]
    cm_netns: Vec<String>,
    /// Write each Call Manager's keepalived track file into DIR (DIR/cm-N: 0 while it serves
    /// the virtual IP, 1 otherwise), for a `vrrp_track_file` with weight 0.
    #[arg(long, value_name = "DIR")]
    vrrp_track: Option<PathBuf>,
    /// The nodes' address [default: the --sip address's].
    #[arg(long, value_name = "IP")]
    node_ip: Option<IpAddr>,
    /// Run only this Call Manager of the scenario's group (cm-1 ..), in this process; the others
    /// run in processes of their own (each started with its own --cm), and every server joins
    /// as `pbxlab node`. Needs --cm-peers, --cluster-key(-file) and --epoch, the same in every
    /// one of them.
    #[arg(long, value_name = "NAME", requires_all = ["cm_peers", "epoch"])]
    cm: Option<String>,
    /// With --cm: every Call Manager's replication address (UDP), in order, this one's
    /// included; comma-separated.
    #[arg(
        long,
        value_name = "IP:PORT,..",
        value_delimiter = ',',
        requires = "cm"
    )]
    cm_peers: Vec<SocketAddr>,
    /// With --cm: the group's clock's zero, a UNIX time in seconds (`date +%s` once, for all
    /// of them): the Call Managers compare their times.
    #[arg(long, value_name = "UNIX_SECONDS", requires = "cm")]
    epoch: Option<f64>,
    /// With --cm: start with no state and take it from the serving Call Manager, as a
    /// process started again after a crash or an upgrade must.
    #[arg(long, requires = "cm")]
    fresh: bool,
    /// With --cm: the cluster's key [default: $PBXLAB_CLUSTER_KEY], the same in every Call
    /// Manager process: it seals their replication and keys the digest nonces.
    #[arg(long, value_name = "K", requires = "cm")]
    cluster_key: Option<String>,
    /// Read the cluster's key from FILE (its one line; read once, at start).
    #[arg(long, value_name = "FILE", requires = "cm")]
    cluster_key_file: Option<PathBuf>,
}

/// `--cm` and the flags that go with it, as the cluster's options take them.
fn cm_process(args: &ClusterArgs) -> Result<Option<pbxlab_cluster::cluster::CmProcess>, BadInput> {
    let Some(name) = &args.cm else {
        return Ok(None);
    };
    let index = name
        .strip_prefix("cm-")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| BadInput(format!("--cm {name:?}: a Call Manager's name, cm-1 ..")))?;
    let key = crate::token::read(&crate::token::Sources {
        what: "cluster key",
        flag: ("--cluster-key", args.cluster_key.as_deref()),
        file: ("--cluster-key-file", args.cluster_key_file.as_deref()),
        env: "PBXLAB_CLUSTER_KEY",
        deprecated: None,
        max_len: crate::token::MAX_ADMIN_TOKEN,
    })?
    .ok_or_else(|| {
        BadInput(
            "--cm: no cluster key: give --cluster-key, --cluster-key-file or set \
             PBXLAB_CLUSTER_KEY, the same for every Call Manager process"
                .into(),
        )
    })?;
    let epoch = args
        .epoch
        .and_then(|e| Duration::try_from_secs_f64(e).ok())
        .and_then(|d| std::time::UNIX_EPOCH.checked_add(d))
        .ok_or_else(|| BadInput("--epoch: a UNIX time in seconds".into()))?;
    Ok(Some(pbxlab_cluster::cluster::CmProcess {
        index: index - 1,
        peers: args.cm_peers.clone(),
        key: pbxlab_cluster::cluster::CmProcess::key(&key),
        epoch,
        fresh: args.fresh,
    }))
}

pub(crate) fn cluster(args: ClusterArgs, stop: &AtomicBool) -> anyhow::Result<ExitCode> {
    crate::writable("--json", args.json.as_ref())?;
    let scenario = load_scenario(args.scenario.as_ref())?;
    let bad = |what: &str, e: String| BadInput(format!("{what}: {e}"));
    let rate = parse_rate(&args.rate_limit).map_err(|e| bad("--rate-limit", e))?;
    let every = parse_duration(&args.status_every).map_err(|e| bad("--status-every", e))?;
    let max_call = parse_duration(&args.max_call).map_err(|e| bad("--max-call", e))?;
    let run_for = args
        .run_for
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| bad("--for", e))?;
    let mut opts = Options::new(args.sip);
    opts.process = cm_process(&args)?;
    opts.domain = args.domain;
    opts.password_prefix = args.password_prefix;
    opts.rate_limit_per_s = rate;
    opts.rate_burst = args.burst.max(1.0);
    let global = match &args.global_rate_limit {
        Some(g) => parse_rate(g).map_err(|e| bad("--global-rate-limit", e))?,
        None => rate * pbxlab_cluster::cm::GLOBAL_RATE_FACTOR,
    };
    opts.global_rate_limit_per_s = global;
    // Whole seconds, rounded up: a limit below a second still ends calls.
    opts.max_call_s = max_call.as_secs() + u64::from(max_call.subsec_nanos() > 0);
    opts.global_rate_burst = (2.0 * global).max(1.0);
    opts.whitelist = args.whitelist;
    opts.trusted = args.trusted;
    opts.public = (!args.public.is_empty()).then_some(args.public);
    opts.cm_netns = args
        .cm_netns
        .iter()
        .map(|a| {
            a.rsplit_once(':')
                .and_then(|(ns, ip)| Some((ns.to_owned(), ip.parse::<IpAddr>().ok()?)))
                .filter(|(ns, _)| !ns.is_empty() && !ns.contains('/'))
                .ok_or_else(|| bad("--cm-netns", format!("{a:?} is not NAMESPACE:IP")))
        })
        .collect::<Result<_, _>>()?;
    opts.vrrp_track = args.vrrp_track;
    opts.node_ip = args.node_ip;
    let mut alerts =
        AlertSink::new(args.alerts, args.alert_webhook).map_err(|e| BadInput(e.to_string()))?;
    let join_token = crate::token::join_token(
        args.join_token.as_deref(),
        args.join_token_file.as_deref(),
        args.token.as_deref(),
    )?;
    let admin_token = crate::token::read(&crate::token::Sources {
        what: "admin token",
        flag: ("--admin-token", args.admin_token.as_deref()),
        file: ("--admin-token-file", args.admin_token_file.as_deref()),
        env: "PBXLAB_ADMIN_TOKEN",
        deprecated: None,
        max_len: crate::token::MAX_ADMIN_TOKEN,
    })?;
    if admin_token.is_some() && admin_token == join_token {
        return Err(BadInput(
            "the admin token must differ from the join token: a node's secret must not \
             operate the cluster"
                .into(),
        )
        .into());
    }
    opts.join_token = join_token;
    let cluster = Cluster::start(&scenario, &opts).context("cannot start the cluster")?;
    match &opts.process {
        Some(p) => eprintln!(
            "pbxlab cluster {:?}: Call Manager cm-{} of {} in this process, virtual IP {} (UDP), \
             replicating from {}{}",
            scenario.name,
            p.index + 1,
            p.peers.len(),
            cluster.sip_addr(),
            p.peers
                .get(p.index)
                .map_or_else(String::new, |a| a.to_string()),
            if p.fresh { ", starting afresh" } else { "" }
        ),
        None => eprintln!(
            "pbxlab cluster {:?}: Call Manager on {} (UDP)",
            scenario.name,
            cluster.sip_addr()
        ),
    }
    let endpoint = crate::ctl::serve(args.ctl, admin_token, cluster.control())?;
    for n in cluster
        .control()
        .select(&pbxlab_cluster::cluster::Filter::default())
    {
        eprintln!("  {:<12} {:<8} {}", n.name, n.role, n.addr);
    }
    if opts.join_token.is_some() {
        eprintln!(
            "  nodes in their own processes join with: pbxlab node --join {} --join-token-file F --role R --name N",
            cluster.sip_addr()
        );
    }
    let started = Instant::now();
    let mut next = every;
    let mut seen_events = 0;
    let control = cluster.control();
    while !stop.load(Ordering::Relaxed) && run_for.is_none_or(|d| started.elapsed() < d) {
        std::thread::sleep(Duration::from_millis(50));
        alerts.poll(&control);
        if started.elapsed() >= next {
            next += every;
            let s = cluster.status();
            for e in s.events.iter().skip(seen_events) {
                eprintln!("event: {e}");
            }
            seen_events = s.events.len();
            eprintln!("{}", status_line(&s));
        }
    }
    if let Some(endpoint) = endpoint {
        endpoint.stop();
    }
    let last = cluster.stop().context("the cluster did not stop cleanly")?;
    alerts.poll(&control);
    alerts.close(Duration::from_secs(5));
    eprintln!("{}", status_line(&last));
    crate::show(&render(&last));
    crate::write_json(args.json.as_ref(), &to_json(&last))?;
    Ok(ExitCode::SUCCESS)
}

fn status_line(s: &Status) -> String {
    let mut per_role: Vec<(&str, u32)> = Vec::new();
    for n in &s.nodes {
        match per_role.iter_mut().find(|(r, _)| *r == n.role) {
            Some((_, load)) => *load += n.load,
            None => per_role.push((n.role, n.load)),
        }
    }
    let roles: Vec<String> = per_role.iter().map(|(r, l)| format!("{r} {l}")).collect();
    let busy: Vec<String> = s
        .nodes
        .iter()
        .filter(|n| n.load > 0)
        .map(|n| format!("{} {}", n.name, n.load))
        .collect();
    let down: Vec<&str> = s
        .nodes
        .iter()
        .filter(|n| n.state != "online")
        .map(|n| n.name.as_str())
        .collect();
    format!(
        "[{:>6.1}s] registered {} | calls {} active, {} total, {} failed | sessions: {} ({}) | queue waiting {} | rate-limited {}{}{}{}",
        s.elapsed.as_secs_f64(),
        s.cm.registered,
        s.cm.calls_active,
        s.cm.calls_total,
        s.cm.failures.values().sum::<u64>(),
        roles.join(", "),
        if busy.is_empty() {
            "none busy".to_owned()
        } else {
            busy.join(", ")
        },
        s.cm.queue_waiting,
        s.cm.rate_limited + s.cm.global_rate_limited,
        if down.is_empty() {
            String::new()
        } else {
            format!(" | not online: {}", down.join(", "))
        },
        behind_note(&s.pace.drivers()),
        sessions_note(s)
    )
}

/// A status line's note of nodes whose own session count is not the Call Manager's although
/// they have applied every command sent to them: sessions lost or leaked.
fn sessions_note(s: &Status) -> String {
    let differ: Vec<String> = s
        .nodes
        .iter()
        .filter(|n| n.in_step && n.node_sessions != n.media_sessions)
        .map(|n| {
            format!(
                "{} holds {}, the Call Manager anchored {}",
                n.name, n.node_sessions, n.media_sessions
            )
        })
        .collect();
    if differ.is_empty() {
        String::new()
    } else {
        format!(" | SESSIONS DIFFER: {}", differ.join("; "))
    }
}

/// A status line's note of pbxlab's own threads that fell behind: empty while they keep up.
pub(crate) fn behind_note(drivers: &[DriverPace]) -> String {
    let late: Vec<String> = drivers
        .iter()
        .filter(|d| d.saturated)
        .map(|d| {
            format!(
                "{} {:.0} ms late{}",
                d.driver.trim_start_matches("the "),
                d.worst_ms,
                if d.kernel_drops > 0 {
                    format!(", {} kernel drops", d.kernel_drops)
                } else {
                    String::new()
                }
            )
        })
        .collect();
    if late.is_empty() {
        String::new()
    } else {
        format!(" | PBXLAB BEHIND: {}", late.join("; "))
    }
}

fn render(s: &Status) -> String {
    let mut out = String::new();
    out.push_str("node         role     address                state     sessions/capacity   anchored  node sessions  packets in  packets out  send errors\n");
    for n in &s.nodes {
        out.push_str(&format!(
            "{:<12} {:<8} {:<22} {:<9} {:>8}/{:<9} {:>9} {:>14} {:>11} {:>12} {:>12}\n",
            n.name,
            n.role,
            n.addr,
            crate::ctl::console_state(n.state),
            n.load,
            n.capacity,
            n.media_sessions,
            n.node_sessions,
            n.packets_in,
            n.packets_out,
            n.send_errors
        ));
    }
    let c = &s.cm;
    out.push_str(&format!(
        "registrations {} (auth failures {}, replays {}, stale nonces {}, forged nonces {}, bans: {} sources {} users, {} refused banned), calls {} (completed {}), queue answered {} abandoned {}, ivr digits {} routed {}, meetings {} ({} joins, {} split, largest {}), moved {} dropped {}, rate-limited {} (global {}), source-limited {}, malformed {}, unmatched in-dialog {}, Call Manager CPU {:.2} s, worst lateness: Call Manager thread {:.1} ms, node thread {:.1} ms\n",
        c.registrations,
        c.auth_failures,
        c.auth_replays,
        c.auth_stale,
        c.auth_forged_nonces,
        c.auth_banned_sources,
        c.auth_banned_users,
        c.auth_refused_banned,
        c.calls_total,
        c.calls_completed,
        c.queue_answered,
        c.queue_abandoned,
        c.ivr_digits,
        c.ivr_routed,
        c.meeting_rooms,
        c.meeting_joins,
        c.meeting_split_joins,
        c.meeting_largest,
        c.moved,
        c.dropped,
        c.rate_limited,
        c.global_rate_limited,
        c.source_limited,
        c.malformed,
        c.unmatched_in_dialog,
        s.cm_cpu.as_secs_f64(),
        s.pace.call_manager.worst.as_secs_f64() * 1000.0,
        s.pace.nodes.worst.as_secs_f64() * 1000.0
    ));
    for (reason, n) in &c.failures {
        out.push_str(&format!("  failed: {reason}: {n}\n"));
    }
    out.push_str(&render_pace(
        &s.pace.drivers(),
        "what the cluster did meanwhile says as much of this machine as of the cluster",
    ));
    out
}

fn to_json(s: &Status) -> serde_json::Value {
    let c = &s.cm;
    serde_json::json!({
        "elapsed_s": s.elapsed.as_secs_f64(),
        "cm_cpu_s": s.cm_cpu.as_secs_f64(),
        "registered": c.registered,
        "registrations": c.registrations,
        "auth_failures": c.auth_failures,
        "auth": {
            "failures": c.auth_failures,
            "replays": c.auth_replays,
            "stale": c.auth_stale,
            "forged_nonces": c.auth_forged_nonces,
            "banned_sources": c.auth_banned_sources,
            "banned_users": c.auth_banned_users,
            "refused_banned": c.auth_refused_banned,
        },
        "calls": {
            "active": c.calls_active,
            "total": c.calls_total,
            "completed": c.calls_completed,
        },
        "failures": c.failures,
        "queue": { "answered": c.queue_answered, "abandoned": c.queue_abandoned },
        "ivr": { "digits": c.ivr_digits, "routed": c.ivr_routed },
        "meetings": {
            "rooms": c.meeting_rooms,
            "joins": c.meeting_joins,
            "split_joins": c.meeting_split_joins,
            "largest": c.meeting_largest,
        },
        "moved": c.moved,
        "dropped": c.dropped,
        "rate_limited": c.rate_limited,
        "global_rate_limited": c.global_rate_limited,
        "rate_sources_evicted": c.rate_sources_evicted,
        "malformed": c.malformed,
        "unmatched_in_dialog": c.unmatched_in_dialog,
        "source_limited": c.source_limited,
        "responses_foreign": c.responses_foreign,
        "responses_forged": c.responses_forged,
        "probes": {
            "late": c.probes_late,
            "rtt_max_us": c.probe_rtt_max_us,
            "rounds_ignored": c.probe_rounds_ignored,
        },
        "send_errors": s.cm_send_errors,
        "link": pbxlab_cluster::ctl::link_json(&s.link),
        "callmanagers": s.callmanagers.iter().map(pbxlab_cluster::ctl::cm_json).collect::<Vec<_>>(),
        "emulator": s.pace.drivers(),
        "events": s.events,
        // As the control endpoint shows them, with the packets no session claimed.
        "nodes": s.nodes.iter().map(|n| {
            let mut v = node_json(n);
            v["unknown_packets"] = n.unknown_packets.into();
            v
        }).collect::<Vec<_>>(),
    })
}
