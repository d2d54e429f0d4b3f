//! `pbxlab node`: one node in its own process. It joins a running `pbxlab cluster` over the
//! control link, then serves like an in-process node until Ctrl-C or SIGTERM.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pbxlab_balancer::Role;
use pbxlab_cluster::Error;
use pbxlab_cluster::node::{self, Node, NodeHandle};
use pbxlab_cluster::remote::{self, JoinSpec, Member};
use pbxlab_scenario::parse_duration;

use crate::BadInput;

/// Run one node in its own process, joined to a running `pbxlab cluster`.
///
/// The node binds one UDP socket (RTP, the Call Manager's OPTIONS probes and the control
/// link), asks the Call Manager to join until it answers, then serves. Exit codes: 0 stopped
/// by Ctrl-C or SIGTERM; 1 the Call Manager never answered (--join-timeout); 2 refused (wrong
/// token, no pool for the role, a name or address already taken) or bad flags.
#[derive(clap::Args)]
pub(crate) struct NodeArgs {
    /// The node's role: media, meeting, ivr, queue or im. The scenario must have its pool.
    #[arg(long)]
    role: String,
    /// Its name in the cluster. A restarted node rejoins under its name from the same address.
    #[arg(long)]
    name: String,
    /// The Call Manager's SIP address (its --sip).
    #[arg(long, value_name = "CM_IP:PORT")]
    join: SocketAddr,
    /// The cluster's join token (the Call Manager's --join-token) [default:
    /// $PBXLAB_JOIN_TOKEN]. It never travels: the node proves it.
    #[arg(long, value_name = "T")]
    join_token: Option<String>,
    /// Read the join token from FILE (its one line; read once, at start).
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<std::path::PathBuf>,
    /// Deprecated: the join token, like --join-token; so is $PBXLAB_TOKEN.
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// Local address of the node's socket (default: any address, any port; give a port for
    /// an address that survives a restart).
    #[arg(long, value_name = "IP:PORT")]
    bind: Option<SocketAddr>,
    /// Give up (exit 1) if the Call Manager has not answered within this long.
    #[arg(long, default_value = "10s")]
    join_timeout: String,
    /// How often the status line is printed.
    #[arg(long, default_value = "10s")]
    status_every: String,
}

pub(crate) fn node(args: NodeArgs, stop: &AtomicBool) -> anyhow::Result<ExitCode> {
    let bad = |what: &str, e: String| BadInput(format!("{what}: {e}"));
    let role = Role::from_name(&args.role).ok_or_else(|| {
        bad(
            "--role",
            format!("{:?}: one of media, meeting, ivr, queue, im", args.role),
        )
    })?;
    let timeout = parse_duration(&args.join_timeout).map_err(|e| bad("--join-timeout", e))?;
    let every = parse_duration(&args.status_every).map_err(|e| bad("--status-every", e))?;
    let token = crate::token::join_token(
        args.join_token.as_deref(),
        args.join_token_file.as_deref(),
        args.token.as_deref(),
    )?
    .ok_or_else(|| {
        BadInput(
            "no join token: give --join-token, --join-token-file or set PBXLAB_JOIN_TOKEN".into(),
        )
    })?;
    let spec = JoinSpec::new(args.join, &args.name, role, &token).map_err(BadInput)?;
    let bind = args.bind.unwrap_or_else(|| {
        let any = match args.join.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        SocketAddr::new(any, 0)
    });
    let socket = UdpSocket::bind(bind).with_context(|| format!("cannot bind {bind}"))?;
    let local = socket.local_addr().context("the socket's address")?;
    eprintln!(
        "pbxlab node {} ({role}) on {local}: joining the Call Manager at {}",
        args.name, args.join
    );
    let epoch = Instant::now();
    let mut member = Member::new(spec);
    let id = match remote::join(&socket, &mut member, epoch, timeout, stop) {
        Ok(id) => id,
        Err(e @ Error::Refused { .. }) => return Err(BadInput(e.to_string()).into()),
        Err(Error::Interrupted) => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "joined as server {id} after {:.2} s",
        epoch.elapsed().as_secs_f64()
    );
    let node = Node::new(id, role, args.name.clone(), local);
    let (handle, control) = node::channel(&node);
    let halt = Arc::new(AtomicBool::new(false));
    let thread = node::spawn_member(node, socket, control, member, Arc::clone(&halt), epoch)
        .context("cannot start serving")?;
    let mut next = every;
    while !stop.load(Ordering::Relaxed) && !thread.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if epoch.elapsed() >= next {
            next += every;
            eprintln!("{}", status_line(&args.name, &handle, epoch.elapsed()));
        }
    }
    halt.store(true, Ordering::Relaxed);
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the node's thread panicked"))?;
    eprintln!("{}", status_line(&args.name, &handle, epoch.elapsed()));
    Ok(ExitCode::SUCCESS)
}

fn status_line(name: &str, h: &NodeHandle, elapsed: Duration) -> String {
    let s = h.counters.load();
    format!(
        "[{:>6.1}s] {}: sessions {} | packets in {} out {} unknown {} | probes answered {} | send errors {}",
        elapsed.as_secs_f64(),
        name,
        s.sessions,
        s.packets_in,
        s.packets_out,
        s.unknown_packets,
        s.options_answered,
        h.counters.io_errors()
    )
}
