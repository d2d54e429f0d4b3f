//! `pbxlab cluster`: the Call Manager and the scenario's nodes, live on loopback.
//!
//! Two threads: the Call Manager's (one SIP socket, batched reads with kernel timestamps) and
//! one that serves every node's socket ([`super::node::spawn`]). A 2-core machine gains nothing
//! from a thread per node, and one thread batches better. The Call Manager's commands reach
//! the nodes over channels; its probes reach them over UDP, like a real cluster's.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use pbxlab_balancer::{EventKind, ServerId};

use super::Nanos;
use super::cm::{self, CallManager, NodeSpec};
use super::node::{self, NodeHandle};
use crate::Error;
use crate::scenario::Scenario;

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
    /// Sources the rate limit never applies to (the nodes always pass).
    pub whitelist: Vec<IpAddr>,
}

impl Options {
    pub fn new(sip: SocketAddr) -> Options {
        Options {
            sip,
            domain: "pbxlab.test".into(),
            password_prefix: "pw-".into(),
            rate_limit_per_s: 200.0,
            rate_burst: 400.0,
            whitelist: vec![IpAddr::from([127, 0, 0, 1])],
        }
    }
}

/// One node in the status.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    pub name: String,
    pub role: &'static str,
    pub addr: SocketAddr,
    pub state: &'static str,
    /// Sessions (weight) placed by the balancer, and the capacity.
    pub load: u32,
    pub capacity: u32,
    /// Sessions the node itself is serving.
    pub node_sessions: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub unknown_packets: u64,
    /// Datagrams the node's socket would not take (full buffer, unreachable).
    pub send_errors: u64,
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
}

/// A running cluster; dropping it without [`Cluster::stop`] leaves the threads running until
/// the process ends.
pub struct Cluster {
    sip: SocketAddr,
    stop: Arc<AtomicBool>,
    cm_thread: JoinHandle<io::Result<()>>,
    node_thread: JoinHandle<()>,
    handles: Vec<NodeHandle>,
    status: Arc<Mutex<Status>>,
}

impl Cluster {
    /// Binds every socket and starts the threads; the cluster serves until [`Cluster::stop`].
    pub fn start(sc: &Scenario, opts: &Options) -> Result<Cluster, Error> {
        let balancer = sc.balancer()?;
        let socket = UdpSocket::bind(opts.sip).map_err(|e| Error::Bind {
            addr: opts.sip,
            source: e,
        })?;
        let sip = socket.local_addr().map_err(|e| Error::Bind {
            addr: opts.sip,
            source: e,
        })?;
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
                let want = SocketAddr::new(sip.ip(), port);
                let (handle, parts) =
                    node::bind(id.0, pool.role, s.name.clone(), want).map_err(|e| Error::Bind {
                        addr: want,
                        source: e,
                    })?;
                specs.push(NodeSpec {
                    id,
                    name: s.name.clone(),
                    role: pool.role,
                    addr: handle.addr,
                });
                handles.push(handle);
                served.push(parts);
            }
        }
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
        cfg.whitelist = opts.whitelist.clone();
        cfg.seed = sc.seed;
        let cm = CallManager::new(cfg, balancer, specs);

        let stop = Arc::new(AtomicBool::new(false));
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let node_thread =
            node::spawn(served, events_tx, Arc::clone(&stop)).map_err(|e| Error::Bind {
                addr: sip,
                source: e,
            })?;
        let status = Arc::new(Mutex::new(Status::default()));
        let cm_thread = {
            let (stop, status, handles) = (Arc::clone(&stop), Arc::clone(&status), handles.clone());
            std::thread::Builder::new()
                .name("pbxlab-cm".into())
                .spawn(move || serve(cm, socket, &handles, &events_rx, &stop, &status))
                .map_err(|e| Error::Bind {
                    addr: sip,
                    source: e,
                })?
        };
        Ok(Cluster {
            sip,
            stop,
            cm_thread,
            node_thread,
            handles,
            status,
        })
    }

    /// Where the Call Manager listens.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }

    /// The nodes, to stop or cut one off (drills).
    pub fn nodes(&self) -> &[NodeHandle] {
        &self.handles
    }

    /// The latest snapshot (refreshed every 100 ms).
    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops every thread and returns the final snapshot.
    pub fn stop(self) -> io::Result<Status> {
        self.stop.store(true, Ordering::Relaxed);
        let cm = self
            .cm_thread
            .join()
            .map_err(|_| io::Error::other("the Call Manager thread panicked"))?;
        self.node_thread
            .join()
            .map_err(|_| io::Error::other("the node thread panicked"))?;
        cm?;
        Ok(self.status.lock().map(|s| s.clone()).unwrap_or_default())
    }
}

/// How often the status snapshot is refreshed.
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// The longest the thread sleeps, so `stop` and node events are seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// While datagrams keep arriving, read on a 1 ms grid instead of waking for each one; the
/// kernel's arrival timestamps keep every time exact.
const BUSY_TICK: Duration = Duration::from_millis(1);

fn serve(
    mut cm: CallManager,
    socket: UdpSocket,
    handles: &[NodeHandle],
    node_events: &Receiver<(u32, super::NodeEvent)>,
    stop: &AtomicBool,
    status: &Mutex<Status>,
) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    let mut socket = mio::net::UdpSocket::from_std(socket);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut socket, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(8);
    let started = Instant::now();
    // 50,000 users registering at once arrive in bursts; a small buffer would drop them.
    let _ = pbxlab_udp::set_buffer_sizes(&socket, 8 << 20);
    let mut receiver = pbxlab_udp::Receiver::new(&socket, started)?;
    let mut sender = pbxlab_udp::Sender::default();
    let mut next_status = Duration::ZERO;
    let mut log: Vec<String> = Vec::new();
    let names: Vec<String> = cm.nodes().iter().map(|n| n.name.clone()).collect();
    while !stop.load(Ordering::Relaxed) {
        let read = receiver.drain(&socket, |at, from, bytes| cm.handle(at, from, bytes));
        let busy = matches!(read, Ok(n) if n > 0);
        let now = elapsed(started);
        while let Ok((id, event)) = node_events.try_recv() {
            cm.on_node_event(now, ServerId(id), event);
        }
        cm.advance(now);
        cm.transmit_all(|datagrams| {
            // A send error (full buffer, unreachable peer) costs that datagram only; SIP's
            // retransmissions are there for exactly that.
            let _ = sender.send_all(&socket, datagrams);
        });
        for (server, command) in cm.node_commands() {
            if let Some(h) = handles.get(server.0 as usize) {
                let _ = h.send(command);
            }
        }
        for e in cm.take_events() {
            let name = names.get(e.server.0 as usize).map_or("?", String::as_str);
            let what = match &e.kind {
                EventKind::Alert(text) => format!("alert: {text}"),
                other => format!("{other:?}").to_lowercase(),
            };
            log.push(format!("{:.3}s {name} {what}", e.at.as_secs_f64()));
        }
        let since = started.elapsed();
        if since >= next_status {
            next_status = since + STATUS_EVERY;
            let snapshot = snapshot(&cm, handles, since, &log);
            if let Ok(mut s) = status.lock() {
                *s = snapshot;
            }
        }
        let until = Duration::from_nanos(cm.next_deadline().saturating_sub(elapsed(started)));
        if busy {
            let tick = BUSY_TICK.as_nanos() as u64;
            let nap = tick - started.elapsed().as_nanos() as u64 % tick;
            std::thread::sleep(Duration::from_nanos(nap).min(until));
        } else if let Err(e) = poll.poll(&mut events, Some(until.min(MAX_WAIT)))
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(e);
        }
    }
    let last = snapshot(&cm, handles, started.elapsed(), &log);
    if let Ok(mut s) = status.lock() {
        *s = last;
    }
    Ok(())
}

fn elapsed(started: Instant) -> Nanos {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(Nanos::MAX)
}

fn snapshot(cm: &CallManager, handles: &[NodeHandle], elapsed: Duration, log: &[String]) -> Status {
    let b = cm.balancer();
    let nodes = cm
        .nodes()
        .iter()
        .map(|n| {
            let view = b.server(n.id);
            let counters = handles.get(n.id.0 as usize).map(|h| h.counters.load());
            NodeStatus {
                name: n.name.clone(),
                role: n.role.name(),
                addr: n.addr,
                state: view.as_ref().map_or("?", |v| v.state.name()),
                load: view.as_ref().map_or(0, |v| v.load),
                capacity: view.as_ref().map_or(0, |v| v.capacity),
                node_sessions: counters.as_ref().map_or(0, |c| c.sessions),
                packets_in: counters.as_ref().map_or(0, |c| c.packets_in),
                packets_out: counters.as_ref().map_or(0, |c| c.packets_out),
                unknown_packets: counters.as_ref().map_or(0, |c| c.unknown_packets),
                send_errors: handles
                    .get(n.id.0 as usize)
                    .map_or(0, |h| h.counters.io_errors()),
            }
        })
        .collect();
    Status {
        elapsed,
        cm: cm.stats(),
        nodes,
        events: log.to_vec(),
        cm_cpu: thread_cpu(),
    }
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
