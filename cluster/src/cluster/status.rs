//! What the running cluster shows of itself: the status snapshot, one row per node, and how
//! the emulator's own threads kept their schedules.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pbxlab_balancer::{Probe, ServerId, ServerState};
use pbxlab_loadgen::report::DriverPace;
use pbxlab_udp::pace::PaceFigures;

use crate::cm::{self, CallManager, NodeSpec};
use crate::hub::HubStats;
use crate::node::{NodeHandle, Place};

/// One node in the status.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    /// The balancer's number for it: the key of the Call Manager's node table.
    pub id: ServerId,
    pub name: String,
    pub role: &'static str,
    pub addr: SocketAddr,
    pub place: Place,
    /// As the vendor's console says it: online, offline (failed its probes), disabled or
    /// draining.
    pub state: &'static str,
    /// Sessions (weight) placed by the balancer, and the capacity.
    pub load: u32,
    pub capacity: u32,
    /// The last probe: how long before this snapshot it was judged, and how it went
    /// (ok, timeout, failed); its round-trip time if it was answered.
    pub last_probe: Option<(Duration, &'static str)>,
    pub probe_rtt: Option<Duration>,
    /// Media sessions the Call Manager has anchored on the node (told it to hold and not yet
    /// to end): what `node_sessions` should say, once the node has applied its commands.
    pub media_sessions: u64,
    /// Sessions the node itself is serving.
    pub node_sessions: u64,
    /// Whether the node had applied every command sent to it when `node_sessions` was read:
    /// then it must equal `media_sessions`, and a difference is a real one.
    pub in_step: bool,
    pub packets_in: u64,
    pub packets_out: u64,
    pub unknown_packets: u64,
    /// Datagrams the node's socket would not take (full buffer, unreachable).
    pub send_errors: u64,
    /// Whether the node's process is serving (false: stopped, crashed or cut off).
    pub running: bool,
}

/// A snapshot of the running cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub elapsed: Duration,
    pub cm: cm::Stats,
    pub nodes: Vec<NodeStatus>,
    /// Balancer events so far (server down/up, alerts), as log lines.
    pub events: Vec<String>,
    /// CPU time of the Call Manager thread.
    pub cm_cpu: Duration,
    /// Datagrams the Call Manager's socket would not take.
    pub cm_send_errors: u64,
    pub whitelist: Vec<IpAddr>,
    /// How the emulator's own threads kept their schedules.
    pub pace: ClusterPace,
    /// The control link to nodes in their own processes: joins, and the datagrams dropped
    /// as forged or replayed.
    pub link: HubStats,
    /// Every Call Manager: one, or each replica of a group with its role and how far behind.
    pub callmanagers: Vec<super::CmStatus>,
}

/// How far the cluster's threads ran behind their schedules and what the kernel dropped on
/// their sockets: when either passes its bound, this machine was the bottleneck
/// ([`pbxlab_udp::pace`]). Nodes in their own processes keep their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterPace {
    /// The Call Manager's thread, against its timers (probe rounds, retransmissions).
    pub call_manager: PaceFigures,
    /// The node thread, against its 20 ms media grid.
    pub nodes: PaceFigures,
}

impl ClusterPace {
    /// Each thread as reports show it.
    pub fn drivers(&self) -> Vec<DriverPace> {
        vec![
            DriverPace::of("the Call Manager thread", &self.call_manager),
            DriverPace::of("the node thread", &self.nodes),
        ]
    }
}

pub(super) fn snapshot(
    cm: &CallManager,
    handles: &[NodeHandle],
    elapsed: Duration,
    log: &[String],
    cm_send_errors: u64,
    pace: ClusterPace,
) -> Status {
    let nodes = cm
        .nodes()
        .iter()
        .filter_map(|n| node_row(cm, handles, n, elapsed))
        .collect();
    Status {
        elapsed,
        cm: cm.stats(),
        nodes,
        events: log.to_vec(),
        cm_cpu: thread_cpu(),
        cm_send_errors,
        whitelist: cm.whitelist().to_vec(),
        pace,
        link: HubStats::default(),
        callmanagers: Vec::new(),
    }
}

/// One node's status row, as of `elapsed`; `None` once it has left the cluster.
pub(super) fn node_row(
    cm: &CallManager,
    handles: &[NodeHandle],
    n: &NodeSpec,
    elapsed: Duration,
) -> Option<NodeStatus> {
    let b = cm.balancer();
    // Removed servers leave the status.
    let view = b.server(n.id)?;
    let handle = handles.iter().find(|h| h.id == n.id.0);
    // In this order: commands applied, then the sessions they led to.
    let in_step = handle.is_some_and(NodeHandle::in_step);
    let counters = handle.map(|h| h.counters.load());
    let counters = counters.as_ref();
    Some(NodeStatus {
        id: n.id,
        name: n.name.clone(),
        place: n.place,
        role: n.role.name(),
        addr: n.addr,
        state: match view.state {
            ServerState::Online => "online",
            ServerState::Down => "offline",
            ServerState::Disabled => "disabled",
            ServerState::Draining => "draining",
        },
        load: view.load,
        capacity: view.capacity,
        last_probe: view.last_probe.map(|(at, p)| {
            let result = match p {
                Probe::Ok => "ok",
                Probe::Timeout => "timeout",
                Probe::Failed => "failed",
            };
            (elapsed.saturating_sub(at), result)
        }),
        probe_rtt: cm.probe_rtt(n.id),
        media_sessions: cm.media_sessions(n.id),
        node_sessions: counters.map_or(0, |c| c.sessions),
        in_step,
        packets_in: counters.map_or(0, |c| c.packets_in),
        packets_out: counters.map_or(0, |c| c.packets_out),
        unknown_packets: counters.map_or(0, |c| c.unknown_packets),
        send_errors: handle.map_or(0, |h| h.counters.io_errors()),
        running: handle.is_some_and(NodeHandle::is_alive),
    })
}

/// CPU time of the calling thread, from /proc (Linux); zero where unavailable.
fn thread_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}
