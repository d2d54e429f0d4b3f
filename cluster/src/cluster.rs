//! `pbxlab cluster`: the Call Manager and the scenario's nodes, live on loopback.
//!
//! Two threads: the Call Manager's (one SIP socket, batched reads with kernel timestamps) and
//! one that serves every node's socket ([`super::node::spawn`]). A 2-core machine gains nothing
//! from a thread per node, and one thread batches better. The Call Manager's commands reach
//! the nodes over channels; its probes reach them over UDP, like a real cluster's.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use pbxlab_balancer::{EventKind, HealthConfig, Probe, Role, ServerId};

use super::Nanos;
use super::NodeCommand;
use super::cm::{self, CallManager, DroppedCall, NodeSpec, Reassigned};
use super::ha::{HaConfig, Replica};
use super::hub::Hub;
use super::link;
use super::node::{self, NodeHandle, Place, ToThread};
use crate::Error;

mod group;
mod process;
mod serve;
mod status;
pub use group::{CATCH_UP_LIMIT, CmCheck, CmFaultWatch, CmStatus};
use group::{Slot, VipWatch};
use pbxlab_scenario::Scenario;
use pbxlab_udp::pace::Pace;
pub use process::CmProcess;
use serve::{CmThread, requeue, serve};
pub use status::{ClusterPace, NodeStatus, Status};
use status::{node_row, snapshot};

/// How the cluster listens and whom it trusts.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Call Manager's SIP address; port 0 picks a free one.
    pub sip: SocketAddr,
    pub domain: String,
    pub password_prefix: String,
    /// Per-source request rate before 503s, and the burst a quiet source may send.
    pub rate_limit_per_s: f64,
    pub rate_burst: f64,
    /// The rate and burst of every source that is neither whitelisted nor a node, together
    /// (`cm::Config::global_rate_limit_per_s`).
    pub global_rate_limit_per_s: f64,
    pub global_rate_burst: f64,
    /// A call still up this many seconds after its INVITE is ended (0: never).
    pub max_call_s: u64,
    /// Sources the rate limit never applies to (the nodes always pass).
    pub whitelist: Vec<IpAddr>,
    /// Sources whose calls are never challenged, besides the scenario's `[cluster] trusted`.
    pub trusted: Vec<IpAddr>,
    /// The services callers without credentials may reach, in place of the scenario's
    /// `[cluster] public` (whose default is every service).
    pub public: Option<Vec<String>>,
    /// The join token a node in its own process (`pbxlab node`) proves to join; without one,
    /// none may. Never the control endpoint's (admin) token.
    pub join_token: Option<String>,
    /// With several Call Managers: the network namespace of each (`ip netns` names), and its
    /// address there. Each Call Manager's thread enters its namespace, replicates from its
    /// address and binds the virtual IP (`sip`) with `IP_FREEBIND` when it serves; a VRRP daemon
    /// in each namespace (keepalived) moves the address itself, following `vrrp_track`.
    pub cm_netns: Vec<(String, IpAddr)>,
    /// Where each Call Manager writes its keepalived track file (`DIR/cm-N`): 0 while it serves,
    /// 1 otherwise, so that only the serving one's namespace may hold the virtual IP.
    pub vrrp_track: Option<std::path::PathBuf>,
    /// The nodes' address (default: the Call Manager's).
    pub node_ip: Option<IpAddr>,
    /// This process is one Call Manager of a group whose others run elsewhere.
    pub process: Option<CmProcess>,
}

impl Options {
    pub fn new(sip: SocketAddr) -> Options {
        Options {
            sip,
            domain: "pbxlab.test".into(),
            password_prefix: "pw-".into(),
            rate_limit_per_s: 200.0,
            rate_burst: 400.0,
            global_rate_limit_per_s: cm::GLOBAL_RATE_FACTOR * 200.0,
            global_rate_burst: cm::GLOBAL_RATE_FACTOR * 400.0,
            max_call_s: cm::MAX_CALL_S,
            whitelist: vec![IpAddr::from([127, 0, 0, 1])],
            trusted: Vec::new(),
            public: None,
            join_token: None,
            cm_netns: Vec::new(),
            vrrp_track: None,
            node_ip: None,
            process: None,
        }
    }
}

/// A balancer event with the server's name, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEvent {
    /// Since the cluster started.
    pub at: Duration,
    pub server: String,
    pub kind: EventKind,
}

/// What the Call Manager recorded for reports: events, moved calls, dropped calls.
#[derive(Debug, Clone, Default)]
pub struct Records {
    pub events: Vec<ClusterEvent>,
    pub reassigned: Vec<Reassigned>,
    pub dropped: Vec<DroppedCall>,
}

/// What an operator or a drill does to servers: the one vocabulary of `[[fault]]`, `plan`,
/// `pbxlab ctl` and drills.
pub use pbxlab_scenario::Verb;

/// Which servers an action applies to; empty: every server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub role: Option<Role>,
    pub server: Option<String>,
    pub addr: Option<SocketAddr>,
}

impl Filter {
    fn matches(&self, name: &str, role: Role, addr: SocketAddr) -> bool {
        self.role.is_none_or(|r| r == role)
            && self.server.as_deref().is_none_or(|s| s == name)
            && self.addr.is_none_or(|a| a == addr)
    }
}

/// Why an operation was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    #[error("no server matches {0}")]
    NoMatch(String),
    #[error("a server named {0:?} already exists")]
    DuplicateName(String),
    #[error("address {0} is taken by server {1:?}")]
    DuplicateAddr(SocketAddr, String),
    #[error("the cluster has no {0} pool to add to")]
    NoPool(Role),
    #[error("cannot bind {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("{server}: {reason}")]
    Failed { server: String, reason: String },
    /// Another action is still under way on one of the servers this one would touch.
    #[error(
        "{server} is busy: {} started {:.1} s ago and has not finished; actions on a \
         server run one at a time, so try again when it is done",
        action.name(),
        running.as_secs_f64()
    )]
    Busy {
        server: String,
        action: Verb,
        running: Duration,
    },
    #[error("the cluster has stopped")]
    Stopped,
    /// A verb a Call Manager does not take (drain, disable, ...).
    #[error(
        "{server} is a Call Manager: it can fail, partition, heal, recover (start), stop, \
         restart or upgrade, not {}",
        action.name()
    )]
    NotForCallManager { server: String, action: Verb },
    #[error("no Call Manager took the request within {:.0} s (none serves the virtual IP)", .0.as_secs_f64())]
    Unserved(Duration),
    /// This process is a Call Manager of a group that does not serve now.
    #[error("{0}")]
    Elsewhere(String),
    /// Not what this cluster does, and why.
    #[error("{0}")]
    Refused(String),
}

/// Servers with an operator action under way, and which: two actions on one server at once
/// (two rolling upgrades of one role started seconds apart) would take more of a pool out of
/// service than either meant to.
type Busy = Mutex<std::collections::BTreeMap<String, (Verb, Instant)>>;

/// Releases the servers an action claimed, however it ends.
struct Claim<'a> {
    busy: &'a Busy,
    servers: Vec<String>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.busy.lock() {
            for s in &self.servers {
                busy.remove(s);
            }
        }
    }
}

/// What one action did to one server.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub server: String,
    pub action: Verb,
    /// Since the cluster started: when the action began and ended.
    pub started: Duration,
    pub finished: Duration,
    /// The server's state afterwards.
    pub state: &'static str,
}

/// Requests the Call Manager thread carries out between datagrams.
enum Request {
    Admin(ServerId, Verb, Sender<Result<(), String>>),
    /// Add a server on this bound socket: the Call Manager's thread numbers it, makes its
    /// node and handle, and hands the node to the node thread, all in one turn.
    Add(AddNode),
    Whitelist(Option<(IpAddr, bool)>, Sender<Result<Vec<IpAddr>, String>>),
    /// Answer once a condition holds for a server, or at the deadline.
    Await(Await),
    /// Publish the status now, then answer: what an action just did shows in the next read.
    Publish(Sender<()>),
    /// Every server's row as of now: the node table, read live.
    Rows(Sender<Vec<NodeStatus>>),
    /// Whom the serving Call Manager holds now (a drill's takeover check).
    Census(Sender<crate::cm::Census>),
}

struct AddNode {
    name: String,
    role: Role,
    socket: UdpSocket,
    capacity: u32,
    reply: Sender<Result<ServerId, String>>,
}

/// A condition an operator action waits for, judged on the Call Manager's thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The node serves no session any more (it has let go of the ones moved away).
    Idle,
    /// A probe answered after `after` (time since the start) says it is up, and the
    /// balancer counts it healthy.
    Answered { after: Duration },
}

struct Await {
    server: ServerId,
    until: Until,
    deadline: Instant,
    reply: Sender<Result<(), ()>>,
}

impl Await {
    fn holds(&self, cm: &CallManager, handles: &[NodeHandle]) -> bool {
        match self.until {
            Until::Idle => handles
                .iter()
                .find(|h| h.id == self.server.0)
                .is_none_or(|h| h.counters.load().sessions == 0),
            Until::Answered { after } => answered_since(cm, self.server, after),
        }
    }
}

/// Whether a probe answered after `after` (time since the start) says the server is up and
/// the balancer counts it healthy: what a started server waits for.
pub(crate) fn answered_since(cm: &CallManager, server: ServerId, after: Duration) -> bool {
    cm.balancer().server(server).is_some_and(|v| {
        // Healthy, not only answering: an upgraded server is disabled whatever its health,
        // and enabling it before its probes count it up would leave its pool one short while
        // the next server is taken out.
        v.healthy
            && v.last_probe
                .is_some_and(|(at, p)| p == Probe::Ok && at > after)
    })
}

/// How long a started server's probes get to bring it back: `up_after` rounds after the next,
/// the timeout, and a second's slack.
pub(crate) fn start_limit(h: &HealthConfig) -> Duration {
    h.interval * (h.up_after + 1) + h.timeout + Duration::from_secs(1)
}

/// The error of a start whose probes did not bring the server back within `limit`.
pub(crate) fn not_back(limit: Duration) -> String {
    format!(
        "started, but its probes did not bring it back within {:.1} s",
        limit.as_secs_f64()
    )
}

struct Shared {
    epoch: Instant,
    /// The virtual IP: the Call Manager's SIP address.
    sip: SocketAddr,
    /// Each with the time by which a Call Manager must take it: a request nobody served in
    /// time was given up by its sender, and is dropped rather than carried out late.
    requests: Mutex<Sender<(Instant, Request)>>,
    /// Requests and node events are taken by whichever Call Manager serves.
    requests_rx: Mutex<Receiver<(Instant, Request)>>,
    node_events: Mutex<Receiver<(u32, super::NodeEvent)>>,
    /// The Call Managers: one, or the replicas of a group.
    cms: Vec<Slot>,
    /// How far behind the active each replica is, as the active last saw it.
    behind: Mutex<Vec<Option<u64>>>,
    vip: Mutex<VipWatch>,
    /// Datagrams a cut-off replica's sockets took and dropped.
    lost_fenced: std::sync::atomic::AtomicU64,
    /// The cluster's log: balancer events and Call Manager changes, whichever wrote them.
    log: Mutex<Vec<String>>,
    handles: Mutex<Vec<NodeHandle>>,
    adds: Mutex<Sender<ToThread>>,
    status: Mutex<Status>,
    records: Mutex<Records>,
    /// Capacity of a new server of each role, from the scenario's pools.
    capacities: Vec<(Role, u32)>,
    /// The token nodes in their own processes prove to join (each replica's hub takes it).
    join_token: Option<String>,
    /// This process runs one Call Manager of the group; the others run elsewhere.
    process: bool,
    health: HealthConfig,
    ip: IpAddr,
    busy: Busy,
    cm_pace: Arc<Pace>,
    node_pace: Arc<Pace>,
}

impl Shared {
    fn pace(&self) -> ClusterPace {
        ClusterPace {
            call_manager: self.cm_pace.figures(),
            nodes: self.node_pace.figures(),
        }
    }
}

/// A handle to operate a running cluster from any thread: status, operator actions, faults.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

/// A running cluster; dropping it without [`Cluster::stop`] leaves the threads running until
/// the process ends.
pub struct Cluster {
    sip: SocketAddr,
    stop: Arc<AtomicBool>,
    node_thread: JoinHandle<()>,
    control: Control,
}

impl Cluster {
    /// Binds every socket and starts the threads; the cluster serves until [`Cluster::stop`].
    pub fn start(sc: &Scenario, opts: &Options) -> Result<Cluster, Error> {
        let balancer = sc.balancer()?;
        let health = balancer.health();
        let group = usize::try_from(sc.callmanager.nodes.max(1)).unwrap_or(1);
        let process = opts.process.as_ref();
        if let Some(p) = process {
            p.check(sc, opts.sip, group)?;
        }
        let in_netns = !opts.cm_netns.is_empty();
        if in_netns && (opts.cm_netns.len() != group || opts.sip.port() == 0) {
            return Err(Error::Unsupported(format!(
                "Call Managers in network namespaces: give one namespace per Call Manager ({} \
                 given for {group}) and the virtual IP with its port (not {})",
                opts.cm_netns.len(),
                opts.sip
            )));
        }
        for (ns, _) in &opts.cm_netns {
            let path = std::path::Path::new("/var/run/netns").join(ns);
            std::fs::File::open(&path).map_err(|e| {
                Error::Unsupported(format!(
                    "Call Manager namespace {ns:?}: {}: {e} (make it with ip netns add)",
                    path.display()
                ))
            })?;
        }
        // In namespaces the virtual IP is bound in the serving one's namespace, by its thread;
        // a Call Manager process binds it once it serves.
        let (socket, sip) = if in_netns || process.is_some() {
            (None, opts.sip)
        } else {
            let socket = UdpSocket::bind(opts.sip).map_err(|e| Error::Bind {
                addr: opts.sip,
                error: e,
            })?;
            let sip = socket.local_addr().map_err(|e| Error::Bind {
                addr: opts.sip,
                error: e,
            })?;
            (Some(socket), sip)
        };
        let node_ip = opts.node_ip.unwrap_or(sip.ip());
        let mut handles = Vec::new();
        let mut served = Vec::new();
        let mut specs = Vec::new();
        for pool in &sc.pools {
            for (i, s) in pool.servers.iter().enumerate() {
                let id = balancer
                    .server_by_name(&s.name)
                    .ok_or_else(|| Error::UnknownServer(s.name.clone()))?;
                let port = pool.first_port.map_or(0, |p| {
                    p.saturating_add(u16::try_from(i).unwrap_or(u16::MAX))
                });
                let want = SocketAddr::new(node_ip, port);
                let (handle, parts) =
                    node::bind(id.0, pool.role, s.name.clone(), want).map_err(|e| Error::Bind {
                        addr: want,
                        error: e,
                    })?;
                specs.push(NodeSpec {
                    id,
                    name: s.name.clone(),
                    role: pool.role,
                    addr: parts.0.addr(),
                    place: Place::InProcess,
                    instance: 0,
                });
                handles.push(handle);
                served.push(parts);
            }
        }
        // Each replica of a group replicates from an address of its own, next to the virtual
        // IP; a group of one has only the virtual IP.
        let mut peers = Vec::new();
        if let Some(p) = process {
            let own = p.peers.get(p.index).copied().unwrap_or(sip);
            peers.push(UdpSocket::bind(own).map_err(|e| Error::Bind {
                addr: own,
                error: e,
            })?);
        } else if group > 1 && !in_netns {
            for _ in 0..group {
                let want = SocketAddr::new(sip.ip(), 0);
                peers.push(UdpSocket::bind(want).map_err(|e| Error::Bind {
                    addr: want,
                    error: e,
                })?);
            }
        }
        let addrs: Vec<SocketAddr> = if let Some(p) = process {
            p.peers.clone()
        } else if in_netns {
            let port = crate::world::REPLICA_PORT_BASE;
            opts.cm_netns
                .iter()
                .map(|&(_, ip)| SocketAddr::new(ip, port))
                .collect()
        } else if group > 1 {
            peers
                .iter()
                .map(UdpSocket::local_addr)
                .collect::<io::Result<_>>()
                .map_err(|e| Error::Bind {
                    addr: sip,
                    error: e,
                })?
        } else {
            vec![sip]
        };
        let mut cfg = cm_config(sc, opts, sip);
        cfg.key = match process {
            Some(p) => p.key.clone(),
            None => crate::random_key().map_err(Error::Random)?,
        };
        let replication = cfg.key.derive("replication");
        let cm_secrets = cfg.secrets();
        let cm = CallManager::new(cfg, balancer, specs);
        let ha = |i: usize| HaConfig {
            index: u8::try_from(i).unwrap_or(u8::MAX),
            addrs: addrs.clone(),
            heartbeat: crate::world::ns(sc.callmanager.heartbeat),
            misses: sc.callmanager.misses,
            key: replication.clone(),
            cm_secrets: cm_secrets.clone(),
        };

        let stop = Arc::new(AtomicBool::new(false));
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let (adds_tx, adds_rx) = std::sync::mpsc::channel();
        let node_pace = Arc::new(Pace::default());
        let node_thread = node::spawn(
            served,
            adds_rx,
            events_tx,
            Arc::clone(&node_pace),
            sip,
            Arc::clone(&stop),
        )
        .map_err(|e| Error::Bind {
            addr: sip,
            error: e,
        })?;
        let (requests_tx, requests_rx) = std::sync::mpsc::channel();
        let capacities: Vec<(Role, u32)> = sc.pools.iter().map(|p| (p.role, p.capacity)).collect();
        let names = sc.callmanager.names();
        let local = |i: usize| process.is_none_or(|p| p.index == i);
        let cms = (0..group)
            .map(|i| Slot {
                local: local(i),
                // Moved by keepalived: in a namespace, or a process behind a track file.
                vrrp: i < opts.cm_netns.len() || (process.is_some() && opts.vrrp_track.is_some()),
                name: names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("cm-{}", i + 1)),
                cfg: ha(i),
                cut: AtomicBool::new(false),
                resign: AtomicBool::new(false),
                run: Mutex::new(None),
                row: Mutex::new(CmStatus::default()),
                netns: opts
                    .cm_netns
                    .get(i)
                    .map(|(n, _)| std::path::Path::new("/var/run/netns").join(n)),
                track: opts
                    .vrrp_track
                    .as_ref()
                    .filter(|_| local(i))
                    .map(|d| d.join(format!("cm-{}", i + 1))),
            })
            .collect::<Vec<Slot>>();
        for slot in &cms {
            // Nobody serves yet: no namespace may take the address before its Call Manager does.
            slot.track(None).map_err(|error| Error::Io {
                what: "writing a keepalived track file",
                error,
            })?;
        }
        let epoch = match process {
            Some(p) => p.epoch_instant()?,
            None => Instant::now(),
        };
        let shared = Arc::new(Shared {
            epoch,
            process: process.is_some(),
            sip,
            requests: Mutex::new(requests_tx),
            requests_rx: Mutex::new(requests_rx),
            node_events: Mutex::new(events_rx),
            cms,
            behind: Mutex::new(vec![None; group]),
            vip: Mutex::new(VipWatch::default()),
            lost_fenced: std::sync::atomic::AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            handles: Mutex::new(handles),
            adds: Mutex::new(adds_tx),
            status: Mutex::new(Status::default()),
            records: Mutex::new(Records::default()),
            capacities,
            join_token: opts.join_token.clone(),
            health,
            ip: node_ip,
            busy: Busy::default(),
            cm_pace: Arc::new(Pace::default()),
            node_pace,
        });
        let mut socket = socket;
        let mut peers = peers.into_iter();
        for i in (0..group).filter(|&i| local(i)) {
            // Every replica of a new group starts from the same new Call Manager; the first
            // is the active of term 1 and holds the virtual IP from the start (in a process,
            // once it has a lease). A process started afresh syncs.
            let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let replica = match process {
                Some(p) => Replica::joining(ha(i), (!p.fresh).then(|| cm.clone()), now),
                None => Replica::new(ha(i), Some(cm.clone()), now),
            };
            let peer = peers.next();
            let started = group::start(&shared, i, replica, socket.take(), peer).map_err(|e| {
                Error::Bind {
                    addr: sip,
                    error: e,
                }
            })?;
            if let Some(slot) = shared.cms.get(i)
                && let Ok(mut r) = slot.run.lock()
            {
                *r = Some(started);
            }
        }
        let control = Control { shared };
        Ok(Cluster {
            sip,
            stop,
            node_thread,
            control,
        })
    }

    /// Where the Call Manager listens: the virtual IP, with several.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }

    /// A handle for operators and drills; clone it freely.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The latest snapshot (refreshed every 100 ms).
    pub fn status(&self) -> Status {
        self.control.status()
    }

    /// Stops every thread and returns the final snapshot.
    pub fn stop(self) -> io::Result<Status> {
        // The Call Managers as they were at the end, not as stopped threads.
        let callmanagers = self.control.callmanagers();
        let mut result = Ok(());
        for slot in &self.control.shared.cms {
            let taken = slot.run.lock().ok().and_then(|mut r| r.take());
            if let Some(r) = taken {
                r.stop.store(true, Ordering::Relaxed);
                let joined = r
                    .thread
                    .join()
                    .map_err(|_| io::Error::other(format!("the {} thread panicked", slot.name)))
                    .and_then(|r| r);
                if result.is_ok() {
                    result = joined;
                }
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        self.node_thread
            .join()
            .map_err(|_| io::Error::other("the node thread panicked"))?;
        result?;
        Ok(Status {
            callmanagers,
            ..self.control.status()
        })
    }
}

/// The Call Manager's configuration for a scenario and the cluster's options, listening at
/// `sip`; the key is the caller's to set (from the operating system live, from the seed in
/// virtual time).
pub(crate) fn cm_config(sc: &Scenario, opts: &Options, sip: SocketAddr) -> cm::Config {
    let reg = sc.traffic.registrations.as_ref();
    let queue = sc.traffic.queue.as_ref();
    let mut cfg = cm::Config::new(sip);
    cfg.domain = opts.domain.clone();
    cfg.password_prefix = opts.password_prefix.clone();
    cfg.first_user = reg.map_or(1000, |r| r.first_user);
    cfg.users = reg.map_or(0, |r| r.users);
    cfg.queues = queue.map_or(0, |q| q.queues);
    cfg.agents_per_queue = queue.map_or(0, |q| q.agents);
    cfg.rate_limit_per_s = opts.rate_limit_per_s;
    cfg.rate_burst = opts.rate_burst;
    cfg.global_rate_limit_per_s = opts.global_rate_limit_per_s;
    cfg.global_rate_burst = opts.global_rate_burst;
    cfg.max_call_s = opts.max_call_s;
    cfg.whitelist = opts.whitelist.clone();
    cfg.trust.trusted = sc.cluster.trusted.clone();
    cfg.trust.trusted.extend(&opts.trusted);
    if let Some(public) = opts.public.as_ref().or(sc.cluster.public.as_ref()) {
        cfg.trust.public = public.clone();
    }
    cfg
}

/// How long a stopped or upgraded node gets to finish moving its sessions before it stops.
pub(crate) const MOVE_WAIT: Duration = Duration::from_secs(5);

impl Control {
    /// The latest snapshot (refreshed every 100 ms).
    pub fn status(&self) -> Status {
        let mut s = self
            .shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        s.callmanagers = self.callmanagers();
        if let Ok(log) = self.shared.log.lock() {
            s.events.clone_from(&log);
        }
        s
    }

    /// When the cluster started: every `Duration` in its records counts from here.
    pub fn epoch(&self) -> Instant {
        self.shared.epoch
    }

    /// Time since the cluster started.
    pub fn now(&self) -> Duration {
        self.shared.epoch.elapsed()
    }

    pub fn health(&self) -> HealthConfig {
        self.shared.health
    }

    /// How the cluster's threads have kept their schedules, as of now.
    pub fn pace(&self) -> ClusterPace {
        self.shared.pace()
    }

    /// Holds the node thread for `d`, as a machine with no core to spare would: what the
    /// cluster then reports of its own lateness is checked by tests with it. Ignored once
    /// the cluster has stopped.
    pub fn stall_node_thread(&self, d: Duration) {
        if let Ok(adds) = self.shared.adds.lock() {
            let _ = adds.send(ToThread::Stall(d));
        }
    }

    /// Events, moved calls and dropped calls recorded so far.
    pub fn records(&self) -> Records {
        self.shared
            .records
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The events recorded after the first `seen`, for whoever follows them (alert sinks)
    /// without copying every record each time.
    pub fn events_since(&self, seen: usize) -> Vec<ClusterEvent> {
        self.shared
            .records
            .lock()
            .map(|r| r.events.get(seen..).unwrap_or_default().to_vec())
            .unwrap_or_default()
    }

    /// The servers `filter` selects, in cluster order.
    /// None when no Call Manager answers (see [`Control::act`] for the error).
    pub fn select(&self, filter: &Filter) -> Vec<NodeStatus> {
        self.try_select(filter).unwrap_or_default()
    }

    fn try_select(&self, filter: &Filter) -> Result<Vec<NodeStatus>, OpError> {
        Ok(self
            .rows()?
            .into_iter()
            .filter(|n| Role::from_name(n.role).is_some_and(|r| filter.matches(&n.name, r, n.addr)))
            .collect())
    }

    /// Every server's row, from the Call Manager's node table now (the status is a snapshot
    /// of up to `serve::STATUS_EVERY` ago); `Unserved` if no Call Manager took the request in time.
    fn rows(&self) -> Result<Vec<NodeStatus>, OpError> {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(why) = self.elsewhere() {
            return Err(OpError::Elsewhere(why));
        }
        self.request(Request::Rows(tx))
            .map_err(|_| OpError::Stopped)?;
        rx.recv_timeout(REPLY_LIMIT).map_err(unanswered)
    }

    /// Carries out `action` on every server `filter` selects, one after the other (a rolling
    /// upgrade finishes each server before the next).
    pub fn act(&self, action: Verb, filter: &Filter) -> Result<Vec<Done>, OpError> {
        if let Some(i) = filter.server.as_deref().and_then(|n| self.cm_index(n))
            && filter.role.is_none()
            && filter.addr.is_none()
        {
            let name = self
                .shared
                .cms
                .get(i)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            if !group::CM_VERBS.contains(&action) {
                return Err(OpError::NotForCallManager {
                    server: name,
                    action,
                });
            }
            if self.shared.cms.get(i).is_some_and(|s| !s.local) {
                return Err(OpError::Elsewhere(format!(
                    "{name} runs in another process: send this to its own control endpoint"
                )));
            }
            let _claim = self.claim(action, vec![name.clone()])?;
            let started = self.now();
            self.act_on_cm(action, i)
                .map_err(|reason| OpError::Failed {
                    server: name.clone(),
                    reason,
                })?;
            let state = self.callmanagers().get(i).map_or("stopped", |c| c.role);
            return Ok(vec![Done {
                server: name,
                action,
                started,
                finished: self.now(),
                state,
            }]);
        }
        let targets = self.try_select(filter)?;
        if targets.is_empty() {
            return Err(OpError::NoMatch(describe(filter)));
        }
        let _claim = self.claim(action, targets.iter().map(|t| t.name.clone()).collect())?;
        let mut done = Vec::with_capacity(targets.len());
        for t in targets {
            let started = self.now();
            self.act_on(action, &t).map_err(|reason| OpError::Failed {
                server: t.name.clone(),
                reason,
            })?;
            let finished = self.now();
            let state = self.row(t.id).map_or("removed", |n| n.state);
            done.push(Done {
                server: t.name,
                action,
                started,
                finished,
                state,
            });
        }
        Ok(done)
    }

    /// Claims every server of an action, or none: refused if any has an action under way.
    fn claim(&self, action: Verb, servers: Vec<String>) -> Result<Claim<'_>, OpError> {
        let mut busy = self.shared.busy.lock().map_err(|_| OpError::Stopped)?;
        if let Some((server, &(running, since))) =
            servers.iter().find_map(|s| busy.get(s).map(|b| (s, b)))
        {
            return Err(OpError::Busy {
                server: server.clone(),
                action: running,
                running: since.elapsed(),
            });
        }
        let now = Instant::now();
        for s in &servers {
            busy.insert(s.clone(), (action, now));
        }
        Ok(Claim {
            busy: &self.shared.busy,
            servers,
        })
    }

    fn act_on(&self, action: Verb, node: &NodeStatus) -> Result<(), String> {
        let (id, name) = (node.id, &node.name);
        let handle = self
            .handle(id)
            .ok_or_else(|| format!("no node numbered {} ({name:?})", id.0))?;
        if node.place == Place::Remote && action.acts_on_process() {
            return Err(format!(
                "{name} runs in its own process at {}: {} acts only on nodes of the cluster's \
                 process (stop, restart or cut off that process where it runs)",
                node.addr,
                action.name()
            ));
        }
        match action {
            Verb::Fail => {
                handle.set_alive(false);
                handle.send(NodeCommand::Reset);
            }
            Verb::Partition => handle.set_alive(false),
            Verb::Heal => handle.set_alive(true),
            Verb::Recover => self.start_node(&handle, id)?,
            Verb::Stop => self.stop_node(&handle, id, Verb::Stop)?,
            Verb::Restart => {
                self.stop_node(&handle, id, Verb::Stop)?;
                self.start_node(&handle, id)?;
            }
            Verb::Upgrade => {
                self.stop_node(&handle, id, Verb::Disable)?;
                // The upgrade itself: the process is down this long.
                std::thread::sleep(pbxlab_scenario::UPGRADE_RESTART);
                self.start_node(&handle, id)?;
                self.admin(id, Verb::Enable)?;
            }
            Verb::Remove => self.stop_node(&handle, id, Verb::Remove)?,
            Verb::Disable => self.admin(id, Verb::Disable)?,
            Verb::Enable => self.admin(id, Verb::Enable)?,
            Verb::Drain => self.admin(id, Verb::Drain)?,
        }
        Ok(())
    }

    /// Moves the node's sessions away (`how`), waits until the node has let them go (or
    /// [`MOVE_WAIT`] has passed: a node that keeps a session is stopped all the same), then
    /// stops its process.
    fn stop_node(&self, handle: &NodeHandle, id: ServerId, how: Verb) -> Result<(), String> {
        self.admin(id, how)?;
        let _ = self.wait_for(id, Until::Idle, MOVE_WAIT);
        handle.set_alive(false);
        handle.send(NodeCommand::Reset);
        Ok(())
    }

    /// Starts the node's process afresh and waits until a probe answered after the start
    /// says it is up.
    fn start_node(&self, handle: &NodeHandle, id: ServerId) -> Result<(), String> {
        let since = self.now();
        handle.send(NodeCommand::Reset);
        handle.set_alive(true);
        let limit = start_limit(&self.shared.health);
        self.wait_for(id, Until::Answered { after: since }, limit)
            .map_err(|()| not_back(limit))
    }

    /// Blocks until the Call Manager's thread sees `until` hold for the server, checked
    /// on its own loop after every round of datagrams and timers: no sleeping and polling of
    /// snapshots here. `Err` once `limit` has passed (or the cluster stopped).
    fn wait_for(&self, server: ServerId, until: Until, limit: Duration) -> Result<(), ()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + limit;
        self.request(Request::Await(Await {
            server,
            until,
            deadline,
            reply: tx,
        }))
        .map_err(|_| ())?;
        rx.recv_timeout(limit + REPLY_LIMIT).unwrap_or(Err(()))
    }

    /// The handle of node `id`.
    fn handle(&self, id: ServerId) -> Option<NodeHandle> {
        self.shared
            .handles
            .lock()
            .ok()?
            .iter()
            .find(|h| h.id == id.0)
            .cloned()
    }

    fn admin(&self, id: ServerId, action: Verb) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.request(Request::Admin(id, action, tx))?;
        rx.recv_timeout(REPLY_LIMIT)
            .map_err(|e| unanswered(e).to_string())?
    }

    fn request(&self, request: Request) -> Result<(), String> {
        if let Some(why) = self.elsewhere() {
            return Err(why);
        }
        requeue(&self.shared, request).map_err(|()| OpError::Stopped.to_string())
    }

    /// Server `id`'s status row after the Call Manager's thread has published the status
    /// anew, so that it, and every status read after it, shows what an action just did.
    fn row(&self, id: ServerId) -> Option<NodeStatus> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.request(Request::Publish(tx)).ok()?;
        rx.recv_timeout(REPLY_LIMIT).ok()?;
        self.status().nodes.into_iter().find(|n| n.id == id)
    }

    /// Adds a server of `role` named `name`, at `addr` (default: the Call Manager's IP, any
    /// port). Names and addresses are unique in the cluster, as the vendor requires.
    pub fn add(
        &self,
        role: Role,
        name: &str,
        addr: Option<SocketAddr>,
    ) -> Result<NodeStatus, OpError> {
        // The node table answers the common mistakes before a socket is bound; the Call
        // Manager's thread checks again when it adds the node (`Request::Add`).
        let nodes = self.rows()?;
        if self.shared.process {
            return Err(OpError::Refused(format!(
                "{name}: with Call Managers in processes of their own, servers join as \
                 `pbxlab node --role {role} --name {name}`, not as a node of one of them"
            )));
        }
        if nodes.iter().any(|n| n.name == name) {
            return Err(OpError::DuplicateName(name.to_owned()));
        }
        if let Some(a) = addr
            && let Some(n) = nodes.iter().find(|n| n.addr == a)
        {
            return Err(OpError::DuplicateAddr(a, n.name.clone()));
        }
        let capacity = self
            .shared
            .capacities
            .iter()
            .find(|(r, _)| *r == role)
            .map(|&(_, c)| c)
            .ok_or(OpError::NoPool(role))?;
        let want = addr.unwrap_or(SocketAddr::new(self.shared.ip, 0));
        let bind_error = |e: io::Error| OpError::Bind {
            addr: want,
            reason: e.to_string(),
        };
        // The socket first, so that the Call Manager learns the address; the balancer then
        // numbers the server, and the node takes that number (a remote node's JOIN may have
        // taken the next one meanwhile: nobody predicts ids).
        let socket = UdpSocket::bind(want).map_err(bind_error)?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.request(Request::Add(AddNode {
            name: name.to_owned(),
            role,
            socket,
            capacity,
            reply: tx,
        }))
        .map_err(|_| OpError::Stopped)?;
        let id = rx
            .recv_timeout(REPLY_LIMIT)
            .map_err(unanswered)?
            .map_err(|reason| OpError::Failed {
                server: name.to_owned(),
                reason,
            })?;
        self.row(id).ok_or(OpError::Stopped)
    }

    /// The whitelist after adding (`Some((ip, true))`), removing (`Some((ip, false))`) or
    /// nothing (`None`).
    pub fn whitelist(&self, change: Option<(IpAddr, bool)>) -> Result<Vec<IpAddr>, OpError> {
        if let Some(why) = self.elsewhere() {
            return Err(OpError::Elsewhere(why));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.request(Request::Whitelist(change, tx))
            .map_err(|_| OpError::Stopped)?;
        let list = rx
            .recv_timeout(REPLY_LIMIT)
            .map_err(unanswered)?
            .map_err(|reason| OpError::Failed {
                server: "the whitelist".to_owned(),
                reason,
            })?;
        // The next snapshot is up to 100 ms away; a status read right after the change must
        // already show it.
        if let Ok(mut s) = self.shared.status.lock() {
            s.whitelist = list.clone();
        }
        Ok(list)
    }
}

/// How long an operator's request waits for the serving Call Manager to take it: with a group
/// that has lost its majority, nobody does.
const REPLY_LIMIT: Duration = Duration::from_secs(10);

fn unanswered(e: std::sync::mpsc::RecvTimeoutError) -> OpError {
    match e {
        std::sync::mpsc::RecvTimeoutError::Timeout => OpError::Unserved(REPLY_LIMIT),
        std::sync::mpsc::RecvTimeoutError::Disconnected => OpError::Stopped,
    }
}

fn describe(filter: &Filter) -> String {
    let mut parts = Vec::new();
    if let Some(r) = filter.role {
        parts.push(format!("role {r}"));
    }
    if let Some(s) = &filter.server {
        parts.push(format!("name {s:?}"));
    }
    if let Some(a) = filter.addr {
        parts.push(format!("address {a}"));
    }
    if parts.is_empty() {
        "(no servers at all)".to_owned()
    } else {
        parts.join(" and ")
    }
}

/// What the Call Manager recorded since the last call, with each event's server named, and
/// each event as a line of the log.
pub(crate) fn take_records(cm: &mut CallManager, log: &mut Vec<String>) -> Records {
    let events = cm.take_events();
    let mut taken = Records {
        events: Vec::with_capacity(events.len()),
        reassigned: cm.take_reassigned(),
        dropped: cm.take_dropped_calls(),
    };
    for e in events {
        let name = cm
            .nodes()
            .iter()
            .find(|n| n.id == e.server)
            .map_or("?", |n| n.name.as_str())
            .to_owned();
        let what = event_words(&e.kind);
        log.push(format!("{:.3}s {name} {what}", e.at.as_secs_f64()));
        taken.events.push(ClusterEvent {
            at: e.at,
            server: name,
            kind: e.kind,
        });
    }
    taken
}

/// A balancer event in the log's words: "down", "up", "alert: ...".
pub(crate) fn event_words(kind: &EventKind) -> String {
    match kind {
        EventKind::Alert(text) => format!("alert: {text}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn elapsed(started: Instant) -> Nanos {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(Nanos::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbxlab_loadgen::report::DriverPace;

    const TWO_MEDIA: &str = r#"name = "two media"
seed = 1
[health]
probe_interval = "100ms"
probe_timeout = "50ms"
down_after = 2
up_after = 1
[[pool]]
role = "media"
servers = 2
capacity = 10
"#;

    /// Two rolling upgrades of one role started seconds apart once disabled both media servers
    /// at once; now the second is refused, naming the server and the action under way.
    #[test]
    fn an_action_on_a_server_with_one_under_way_is_refused() {
        let sc = Scenario::from_toml("<two media>", TWO_MEDIA).expect("valid");
        let cluster = Cluster::start(&sc, &Options::new("127.0.0.1:0".parse().expect("addr")))
            .expect("starts on loopback");
        let control = cluster.control();
        let media = Filter {
            role: Some(Role::Media),
            ..Filter::default()
        };
        let first = {
            let (control, media) = (control.clone(), media.clone());
            std::thread::spawn(move || control.act(Verb::Upgrade, &media))
        };
        let claimed = Instant::now() + Duration::from_secs(5);
        while control.shared.busy.lock().expect("lock").is_empty() && Instant::now() < claimed {
            std::thread::sleep(Duration::from_millis(1));
        }
        let one = Filter {
            server: Some("media-2".into()),
            ..Filter::default()
        };
        match control.act(Verb::Disable, &one) {
            Err(OpError::Busy { server, action, .. }) => {
                assert_eq!((server.as_str(), action), ("media-2", Verb::Upgrade));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(matches!(
            control.act(Verb::Upgrade, &media),
            Err(OpError::Busy { .. })
        ));
        let done = first
            .join()
            .expect("no panic")
            .expect("the first upgrade completes");
        assert_eq!(done.len(), 2);
        // Once it has finished, the servers take actions again.
        assert_eq!(control.act(Verb::Disable, &one).expect("accepted").len(), 1);
        cluster.stop().expect("stops");
    }

    /// A node thread held up (as on a machine with no core to spare) is reported as pbxlab's
    /// own lateness, with the datagrams the kernel dropped meanwhile on its sockets.
    #[test]
    fn a_stalled_node_thread_reports_its_lateness_and_the_kernels_drops() {
        let sc = Scenario::from_toml("<two media>", TWO_MEDIA).expect("valid");
        let cluster = Cluster::start(&sc, &Options::new("127.0.0.1:0".parse().expect("addr")))
            .expect("starts on loopback");
        let control = cluster.control();
        std::thread::sleep(Duration::from_millis(300));
        assert!(!control.pace().nodes.saturated(), "{:?}", control.pace());
        let to = control.select(&Filter::default())[0].addr;
        control.stall_node_thread(Duration::from_millis(600));
        std::thread::sleep(Duration::from_millis(50));
        // More than any socket buffer holds, while nobody reads: segmented, so it is sent
        // well within the stall.
        let flood = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let packet = [0x80u8; 200];
        let burst: Vec<(SocketAddr, &[u8])> = (0..4096).map(|_| (to, &packet[..])).collect();
        let mut sender = pbxlab_udp::Sender::default();
        for _ in 0..100 {
            let _ = sender.send_segmented(&flood, &burst);
        }
        // The kernel tells its drop count with the datagrams queued after the drops: a few
        // more, once the thread reads again.
        let settled = Instant::now() + Duration::from_secs(5);
        while control.status().pace.nodes.kernel_drops == 0 && Instant::now() < settled {
            std::thread::sleep(Duration::from_millis(50));
            let _ = flood.send_to(&packet, to);
        }
        let pace = control.status().pace;
        assert!(pace.nodes.worst >= Duration::from_millis(500), "{pace:?}");
        assert!(pace.nodes.behind >= 1 && pace.nodes.saturated(), "{pace:?}");
        assert!(pace.nodes.kernel_drops > 0, "{pace:?}");
        let said = pace
            .drivers()
            .iter()
            .filter_map(DriverPace::describe)
            .collect::<Vec<_>>();
        assert!(
            said.iter().any(|s| s.starts_with("the node thread fell")
                && s.contains("packets dropped in this machine's kernel")),
            "{said:?}"
        );
        cluster.stop().expect("stops");
    }
}
