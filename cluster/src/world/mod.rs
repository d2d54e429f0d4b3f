//! The whole cluster in virtual time: the real Call Manager and the real node cores exchange
//! their real datagrams with a load generator over an in-memory network ([`net`]), on one
//! clock that jumps from one event to the next. No socket, no thread, no wall clock; every
//! random choice comes from the seed, so one seed is one run, and a failure found here is
//! replayed exactly (the approach of FoundationDB's simulation and TigerBeetle's VOPR: the
//! real code, a simulated world).
//!
//! What stands in for the live cluster's threads is small: datagrams for a node go to its
//! core at once (the node thread reads them as they come), nodes tick on the 20 ms grid, the
//! Call Manager's commands reach its nodes and their digits come back at once (the live
//! cluster passes them over channels), and operator actions are carried out as the live
//! `Control` does, step by step, waiting where it waits (see [`Action`]).

pub mod drill;
pub mod explore;
pub mod net;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use pbxlab_balancer::ServerId;
use pbxlab_scenario::{Scenario, Verb};

use crate::cluster::{
    MOVE_WAIT, Options, Records, answered_since, cm_config, not_back, start_limit,
};
use crate::cm::{CallManager, NodeSpec};
use crate::ha::{HaConfig, Replica};
use crate::node::FRAME_NS;
use crate::node::{Node, Place};
use crate::{Error, Nanos, NodeCommand};
use net::{Datagram, Net};

/// The far side of the network from the cluster: the load generator (or a test's script).
pub trait Peer {
    /// The addresses it receives on.
    fn addrs(&self) -> Vec<SocketAddr>;
    /// A datagram that arrived at `now` for one of its addresses.
    fn handle(&mut self, now: Nanos, from: SocketAddr, to: SocketAddr, bytes: &[u8]);
    /// When it next has something to do; `None` when it never will.
    fn next_wakeup(&self) -> Option<Nanos>;
    /// Does what is due by `now` and sends (from, to, bytes).
    fn advance(&mut self, now: Nanos, send: &mut dyn FnMut(SocketAddr, SocketAddr, &[u8]));
}

/// Where a datagram's destination lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The virtual IP: whichever Call Manager serves.
    Cm,
    /// A Call Manager's own address (replication).
    Replica(usize),
    Node(usize),
    Peer,
}

/// One Call Manager of the group and what its process's state is.
struct VCm {
    replica: Replica,
    cfg: HaConfig,
    /// False while failed or stopped: it runs nothing and its state is gone.
    alive: bool,
    /// Cut off by a partition: it runs, but nothing reaches it and nothing it sends arrives.
    cut: bool,
    /// Whether it served at the end of the last step.
    serving: bool,
}

/// A node core and what its process's state is.
#[derive(Debug)]
struct VNode {
    node: Node,
    /// False while failed, stopped or partitioned: it reads nothing and sends nothing.
    alive: bool,
    dead_drops: u64,
}

/// Where every part of the world listens.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// The Call Managers' one (virtual) address.
    pub cm: SocketAddr,
    /// Each Call Manager's own address, for replication, when there are standbys.
    pub replicas: Vec<SocketAddr>,
    /// Each server's name and address, in the scenario's order.
    pub servers: Vec<(String, SocketAddr)>,
}

/// The Call Manager, the nodes and the network on one virtual clock.
pub struct World {
    now: Nanos,
    pub net: Net,
    cms: Vec<VCm>,
    /// The Call Manager whose state is the cluster's: the one serving, or the last that did.
    current: usize,
    /// When each Call Manager began or stopped serving: (time, index, serving).
    serving_log: Vec<(Nanos, usize, bool)>,
    /// Datagrams for the virtual IP while no Call Manager served it.
    pub vip_unserved: u64,
    /// Which Call Manager sent from the virtual IP, from when: (time, index), a row per change.
    vip_senders: Vec<(Nanos, usize)>,
    /// SIP from the virtual IP to the peer: when the last came, and the longest wait since
    /// `silence_from`.
    peer_sip_last: Nanos,
    silence_from: Nanos,
    silence_max: Nanos,
    cm_addr: SocketAddr,
    nodes: Vec<VNode>,
    routes: HashMap<SocketAddr, Route>,
    next_tick: Nanos,
    log: Vec<String>,
    records: Records,
    /// Instants at which something happened, for the events-per-second figure.
    steps: u64,
    datagrams: u64,
}

/// The virtual address of a server: one port per server above the Call Manager's.
/// The port of the first server in a world; the others follow, on the Call Manager's address.
pub const SERVER_PORT_BASE: u16 = 20_000;

/// The port of the first Call Manager's own address (replication), when there are standbys.
pub const REPLICA_PORT_BASE: u16 = 19_000;

fn replica_addr(cm: SocketAddr, index: usize) -> SocketAddr {
    let port = REPLICA_PORT_BASE.saturating_add(u16::try_from(index).unwrap_or(u16::MAX));
    SocketAddr::new(cm.ip(), port)
}

fn server_addr(cm: SocketAddr, index: usize) -> SocketAddr {
    let port = SERVER_PORT_BASE.saturating_add(u16::try_from(index).unwrap_or(u16::MAX));
    SocketAddr::new(cm.ip(), port)
}

impl World {
    /// The scenario's cluster: its Call Manager at `opts.sip`, each pool's servers at
    /// addresses of their own, the key of every nonce and tag drawn from `seed`.
    pub fn new(sc: &Scenario, opts: &Options, seed: u64) -> Result<World, Error> {
        let balancer = sc.balancer()?;
        let cm_addr = opts.sip;
        let mut nodes = Vec::new();
        let mut specs = Vec::new();
        let mut routes = HashMap::new();
        routes.insert(cm_addr, Route::Cm);
        for pool in &sc.pools {
            for s in &pool.servers {
                let id = balancer
                    .server_by_name(&s.name)
                    .ok_or_else(|| Error::UnknownServer(s.name.clone()))?;
                let addr = server_addr(cm_addr, nodes.len());
                routes.insert(addr, Route::Node(nodes.len()));
                specs.push(NodeSpec {
                    id,
                    name: s.name.clone(),
                    role: pool.role,
                    addr,
                    place: Place::InProcess,
                    instance: 0,
                });
                nodes.push(VNode {
                    node: Node::new(id.0, pool.role, s.name.clone(), addr),
                    alive: true,
                    dead_drops: 0,
                });
            }
        }
        let mut cfg = cm_config(sc, opts, cm_addr);
        cfg.key = seeded_key(seed);
        let replication = cfg.key.derive("replication");
        let cm_secrets = cfg.secrets();
        let cm = CallManager::new(cfg, balancer, specs);
        let n = sc.callmanager.nodes.max(1) as usize;
        let addrs: Vec<SocketAddr> = if n > 1 {
            (0..n).map(|i| replica_addr(cm_addr, i)).collect()
        } else {
            vec![cm_addr]
        };
        let mut cms = Vec::with_capacity(n);
        for (i, &addr) in addrs.iter().enumerate() {
            if n > 1 {
                routes.insert(addr, Route::Replica(i));
            }
            let cfg = HaConfig {
                index: u8::try_from(i).unwrap_or(u8::MAX),
                addrs: addrs.clone(),
                heartbeat: ns(sc.callmanager.heartbeat),
                misses: sc.callmanager.misses,
                key: replication.clone(),
                cm_secrets: cm_secrets.clone(),
            };
            cms.push(VCm {
                replica: Replica::new(cfg.clone(), Some(cm.clone()), 0),
                cfg,
                alive: true,
                cut: false,
                serving: false,
            });
        }
        Ok(World {
            now: 0,
            net: Net::new(seed),
            cms,
            current: 0,
            serving_log: Vec::new(),
            vip_unserved: 0,
            vip_senders: Vec::new(),
            peer_sip_last: 0,
            silence_from: 0,
            silence_max: 0,
            cm_addr,
            nodes,
            routes,
            next_tick: FRAME_NS,
            log: Vec::new(),
            records: Records::default(),
            steps: 0,
            datagrams: 0,
        })
    }

    pub fn now(&self) -> Nanos {
        self.now
    }

    pub fn addresses(&self) -> Addresses {
        Addresses {
            cm: self.cm_addr,
            replicas: if self.cms.len() > 1 {
                self.cms
                    .iter()
                    .map(|c| c.cfg.addrs[usize::from(c.cfg.index)])
                    .collect()
            } else {
                Vec::new()
            },
            servers: self
                .nodes
                .iter()
                .map(|n| (n.node.name().to_owned(), n.node.addr()))
                .collect(),
        }
    }

    /// The Call Manager whose state is the cluster's: the one serving, or the last one that
    /// did; `None` only if no Call Manager holds any state.
    pub fn cm(&self) -> Option<&CallManager> {
        self.cms
            .get(self.current)
            .filter(|c| c.alive)
            .and_then(|c| c.replica.cm())
            .or_else(|| {
                self.cms
                    .iter()
                    .filter(|c| c.alive)
                    .find_map(|c| c.replica.cm())
            })
    }

    /// Changes every Call Manager alike (a test's planted bug).
    #[cfg(test)]
    pub(crate) fn plant(&mut self, f: impl Fn(&mut CallManager)) {
        for c in &mut self.cms {
            if let Some(cm) = c.replica.cm_mut() {
                f(cm);
            }
        }
    }

    /// The Call Managers: name, replica, whether its process runs and whether it is cut off.
    pub fn replicas(&self) -> impl Iterator<Item = (String, &Replica, bool, bool)> {
        self.cms
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("cm-{}", i + 1), &c.replica, c.alive, c.cut))
    }

    /// The Call Manager replica that serves now, if one does.
    pub fn serving_replica(&self) -> Option<&crate::ha::Replica> {
        let now = self.now;
        self.cms
            .iter()
            .find(|c| c.alive && c.replica.serving(now))
            .map(|c| &c.replica)
    }

    /// When each Call Manager began or stopped serving the virtual IP: (time, index,
    /// serving), in order.
    pub fn serving_log(&self) -> &[(Nanos, usize, bool)] {
        &self.serving_log
    }

    /// The first Call Manager other than `not` to send from the virtual IP at or after `t`,
    /// and when.
    pub fn vip_sender_after(&self, t: Nanos, not: usize) -> Option<(Nanos, usize)> {
        self.vip_senders
            .iter()
            .find(|&&(at, i)| at >= t && i != not)
            .copied()
    }

    /// Starts measuring the peer's longest wait for SIP from the virtual IP.
    pub fn watch_silence(&mut self) {
        self.silence_from = self.now;
        self.silence_max = 0;
    }

    /// The peer's longest wait for SIP from the virtual IP since [`World::watch_silence`],
    /// counting the wait still under way.
    pub fn longest_silence(&self) -> Nanos {
        let since = self.peer_sip_last.max(self.silence_from);
        self.silence_max.max(self.now.saturating_sub(since))
    }

    /// The Call Manager that is the active now, by index: the one serving, else one that
    /// waits for its lease to be renewed (a cut-off old active is not it).
    pub fn active_index(&self) -> Option<usize> {
        self.vip_owner().or_else(|| {
            self.cms
                .iter()
                .position(|c| c.alive && !c.cut && c.replica.role() == crate::ha::Role::Active)
        })
    }

    /// The Call Manager serving the virtual IP now, by index.
    pub fn serving_index(&self) -> Option<usize> {
        self.vip_owner()
    }

    /// Whether the Call Manager whose state is the cluster's has let out everything its state
    /// says it did: outputs wait for their inputs to be replicated, and until then its state
    /// runs ahead of the nodes' and the callers'.
    pub fn cm_settled(&self) -> bool {
        self.cms
            .get(self.current)
            .is_none_or(|c| c.replica.settled())
    }

    /// The Call Managers serving the virtual IP now (more than one is a split brain).
    pub fn serving_now(&self) -> Vec<usize> {
        self.cms
            .iter()
            .enumerate()
            .filter(|(_, c)| c.alive && c.replica.serving(self.now))
            .map(|(i, _)| i)
            .collect()
    }

    /// The one serving and reachable at the virtual IP, if any.
    fn vip_owner(&self) -> Option<usize> {
        self.cms
            .iter()
            .position(|c| c.alive && !c.cut && c.replica.serving(self.now))
    }

    /// Lets the peer's addresses receive.
    pub fn attach(&mut self, peer: &dyn Peer) {
        for a in peer.addrs() {
            self.routes.insert(a, Route::Peer);
        }
    }

    /// When anything in the world or the peer next happens.
    pub fn next_event(&self, peer: &dyn Peer) -> Nanos {
        [
            self.net.next_delivery(),
            self.cms
                .iter()
                .filter(|c| c.alive)
                .map(|c| c.replica.next_deadline())
                .min(),
            Some(self.next_tick),
            peer.next_wakeup(),
            self.net.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Nanos::MAX)
        .max(self.now)
    }

    /// Moves the clock to `t` and does everything due there: deliveries, node ticks, the
    /// Call Manager's timers and the peer's.
    pub fn step(&mut self, t: Nanos, peer: &mut dyn Peer) {
        self.now = t.max(self.now);
        let now = self.now;
        self.steps += 1;
        // A fault whose time is up ends here even if nothing is sent now ([`Net::next_expiry`]
        // made this instant a step).
        self.net.expire(now);
        let mut peer_heard = false;
        while let Some(d) = self.net.pop_due(now) {
            self.datagrams += 1;
            peer_heard |= self.deliver(now, &d, peer);
            self.net.recycle(d.bytes);
        }
        if now >= self.next_tick {
            for i in 0..self.nodes.len() {
                if let Some(n) = self.nodes.get_mut(i)
                    && n.alive
                {
                    n.node.tick(now);
                    self.flush_node(i);
                }
            }
            // The next slot of the grid after now: one tick, however long the jump.
            self.next_tick = (now / FRAME_NS + 1) * FRAME_NS;
        }
        self.cm_round(now);
        if peer_heard || peer.next_wakeup().is_some_and(|w| w <= now) {
            let net = &mut self.net;
            peer.advance(now, &mut |from, to, bytes| net.send(now, from, to, bytes));
        }
        for c in &mut self.cms {
            if c.alive {
                let taken = c.replica.take_records(&mut self.log);
                self.records.events.extend(taken.events);
                self.records.reassigned.extend(taken.reassigned);
                self.records.dropped.extend(taken.dropped);
            }
        }
    }

    /// Hands one datagram to its destination; true if it was the peer's.
    fn deliver(&mut self, now: Nanos, d: &Datagram, peer: &mut dyn Peer) -> bool {
        match self.routes.get(&d.to).copied() {
            Some(Route::Cm) => match self.vip_owner() {
                Some(i) => {
                    if let Some(c) = self.cms.get_mut(i) {
                        c.replica.handle(now, d.from, &d.bytes);
                    }
                }
                None => self.vip_unserved += 1,
            },
            Some(Route::Replica(i)) => {
                if let Some(c) = self.cms.get_mut(i)
                    && c.alive
                    && !c.cut
                {
                    c.replica.on_peer(now, &d.bytes);
                }
            }
            Some(Route::Node(i)) => {
                let owner = self.vip_owner();
                let Some(n) = self.nodes.get_mut(i) else {
                    return false;
                };
                if !n.alive {
                    n.dead_drops += 1;
                    return false;
                }
                n.node.handle(d.from, &d.bytes);
                let id = ServerId(n.node.id());
                for event in n.node.events() {
                    // The node's channel leads to the serving Call Manager's process.
                    if let Some(c) = owner.and_then(|i| self.cms.get_mut(i)) {
                        c.replica.node_event(now, id, event);
                    }
                }
                self.flush_node(i);
            }
            Some(Route::Peer) => {
                if d.from == self.cm_addr {
                    let since = self.peer_sip_last.max(self.silence_from);
                    self.silence_max = self.silence_max.max(now.saturating_sub(since));
                    self.peer_sip_last = now;
                }
                peer.handle(now, d.from, d.to, &d.bytes);
                return true;
            }
            None => self.net.stats.unroutable += 1,
        }
        false
    }

    /// Sends what node `i` has queued.
    fn flush_node(&mut self, i: usize) {
        let now = self.now;
        let Some(n) = self.nodes.get_mut(i) else {
            return;
        };
        let from = n.node.addr();
        let net = &mut self.net;
        n.node.transmit_all(|datagrams| {
            for &(to, bytes) in datagrams {
                net.send(now, from, to, bytes);
            }
        });
    }

    /// The Call Manager's timers, its datagrams and its commands to the nodes (applied at
    /// once, as the node thread applies what its channel brings).
    fn cm_round(&mut self, now: Nanos) {
        let mut commands: Vec<(ServerId, NodeCommand)> = Vec::new();
        let group = self.cms.len() > 1;
        for (i, c) in self.cms.iter_mut().enumerate() {
            if !c.alive {
                continue;
            }
            c.replica.advance(now);
            let (net, vip, cut) = (&mut self.net, self.cm_addr, c.cut);
            // What a cut-off Call Manager sends is lost on the way, as its datagrams to the
            // nodes and its commands are.
            // The takeover is timed to the first datagram that reaches the peer (a caller), not
            // a probe to a node.
            let mut sent = false;
            let routes = &self.routes;
            c.replica.transmit(|to, bytes| {
                if !cut {
                    sent |= routes.get(&to) == Some(&Route::Peer);
                    net.send(now, vip, to, bytes);
                }
            });
            if sent && group && self.vip_senders.last().is_none_or(|&(_, s)| s != i) {
                self.vip_senders.push((now, i));
            }
            let own = c.cfg.addrs.get(usize::from(c.cfg.index)).copied();
            for (to, bytes) in c.replica.take_peer(now) {
                if let (false, Some(own)) = (cut, own) {
                    net.send(now, own, to, &bytes);
                }
            }
            let taken = c.replica.take_commands();
            if !cut {
                commands.extend(taken);
            }
            let serving = c.replica.serving(now);
            if serving != c.serving && group {
                c.serving = serving;
                self.serving_log.push((now, i, serving));
                let role = c.replica.role().name();
                let what = if serving {
                    "serves the virtual IP"
                } else {
                    "stopped serving"
                };
                self.log.push(format!(
                    "{:.3}s cm-{} {what} ({role}, term {})",
                    Duration::from_nanos(now).as_secs_f64(),
                    i + 1,
                    c.replica.term()
                ));
                if serving {
                    self.current = i;
                }
            }
        }
        for (server, command) in commands {
            if let Some(i) = self.nodes.iter().position(|n| n.node.id() == server.0)
                && let Some(n) = self.nodes.get_mut(i)
            {
                // A dead process's channel is read by nobody; a restart resets it anyway.
                if n.alive {
                    n.node.command(command);
                    self.flush_node(i);
                }
            }
        }
    }

    /// What the Call Manager recorded so far: events, moved and dropped calls.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// The log lines of the balancer's events, as the live status has them.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// Instants stepped through and datagrams delivered.
    pub fn work(&self) -> (u64, u64) {
        (self.steps, self.datagrams)
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.node.name() == name)
    }

    /// Sessions each node holds against the media sessions the Call Manager anchored there:
    /// `(name, node's, Call Manager's)` for every node that disagrees. Commands are applied
    /// at once here, so the two agree after every step unless something is wrong.
    pub fn sessions_differ(&self) -> Vec<(String, u64, u64)> {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .filter_map(|n| {
                let ours = self
                    .cm()
                    .map_or(0, |cm| cm.media_sessions(ServerId(n.node.id())));
                let theirs = n.node.sessions() as u64;
                (ours != theirs).then(|| (n.node.name().to_owned(), theirs, ours))
            })
            .collect()
    }

    /// Starts an operator action on the server named `server`, as `Control::act` would.
    pub fn act(&mut self, verb: Verb, server: &str) -> Result<Action, String> {
        if let Some(i) = self.cm_index(server) {
            return self.act_on_cm(verb, i);
        }
        let i = self
            .index_of(server)
            .ok_or_else(|| format!("no server named {server:?}"))?;
        let id = self
            .nodes
            .get(i)
            .map(|n| ServerId(n.node.id()))
            .ok_or_else(|| format!("no server named {server:?}"))?;
        let start_limit = self
            .cm()
            .map(|cm| start_limit(&cm.balancer().health()))
            .unwrap_or_default();
        use Step::*;
        let steps: Vec<Step> = match verb {
            Verb::Fail => vec![Alive(false), Reset],
            Verb::Partition => vec![Alive(false)],
            Verb::Heal => vec![Alive(true)],
            Verb::Recover => vec![Reset, Alive(true), Answered(start_limit)],
            Verb::Stop => vec![Admin(Verb::Stop), Idle(MOVE_WAIT), Alive(false), Reset],
            Verb::Restart => vec![
                Admin(Verb::Stop),
                Idle(MOVE_WAIT),
                Alive(false),
                Reset,
                Alive(true),
                Answered(start_limit),
            ],
            Verb::Upgrade => vec![
                Admin(Verb::Disable),
                Idle(MOVE_WAIT),
                Alive(false),
                Reset,
                Sleep(pbxlab_scenario::UPGRADE_RESTART),
                Reset,
                Alive(true),
                Answered(start_limit),
                Admin(Verb::Enable),
            ],
            Verb::Remove => vec![Admin(Verb::Remove), Idle(MOVE_WAIT), Alive(false), Reset],
            Verb::Disable | Verb::Enable | Verb::Drain => vec![Admin(verb)],
        };
        Ok(Action {
            target: Target::Node { index: i, id },
            steps: steps.into(),
            waiting: None,
            started: self.now,
            error: None,
        })
    }

    /// A line in the log about Call Manager `i`.
    fn note(&mut self, i: usize, what: &str) {
        self.log.push(format!(
            "{:.3}s cm-{} {what}",
            Duration::from_nanos(self.now).as_secs_f64(),
            i + 1
        ));
    }

    /// The number of the Call Manager named `cm-N`, when there are standbys.
    pub fn cm_index(&self, name: &str) -> Option<usize> {
        let n: usize = name.strip_prefix("cm-")?.parse().ok()?;
        (self.cms.len() > 1 && (1..=self.cms.len()).contains(&n)).then(|| n - 1)
    }

    /// What happens to a Call Manager's process: it crashes (its state is gone), is cut off
    /// and reconnected, starts afresh and catches up, or is upgraded (it resigns, stops,
    /// starts afresh after the upgrade's pause and catches up).
    fn act_on_cm(&mut self, verb: Verb, i: usize) -> Result<Action, String> {
        use Step::*;
        let steps = match verb {
            Verb::Fail => vec![CmDown],
            Verb::Partition => vec![Cut(true)],
            Verb::Heal => vec![Cut(false)],
            Verb::Recover => vec![CmUp, Synced(CATCH_UP_LIMIT)],
            Verb::Upgrade => vec![
                Resign,
                CmDown,
                Sleep(pbxlab_scenario::UPGRADE_RESTART),
                CmUp,
                Synced(CATCH_UP_LIMIT),
            ],
            other => {
                return Err(format!(
                    "cm-{} is a Call Manager: it can fail, partition, heal, recover or upgrade, \
                     not {}",
                    i + 1,
                    other.name()
                ));
            }
        };
        Ok(Action {
            target: Target::Cm(i),
            steps: steps.into(),
            waiting: None,
            started: self.now,
            error: None,
        })
    }

    /// Carries `action` on as far as it goes now; true once it is over (see `Action::error`).
    pub fn poll(&mut self, action: &mut Action) -> bool {
        let now = self.now;
        let (node, id, cm) = match action.target {
            Target::Node { index, id } => (index, id, usize::MAX),
            Target::Cm(i) => (usize::MAX, ServerId(u32::MAX), i),
        };
        loop {
            if let Some((wait, since, deadline)) = action.waiting {
                let holds = match wait {
                    Wait::Idle => self.nodes.get(node).is_none_or(|n| n.node.sessions() == 0),
                    Wait::Answered => self
                        .cm()
                        .is_some_and(|c| answered_since(c, id, Duration::from_nanos(since))),
                    Wait::Sleep => now >= deadline,
                    Wait::Synced => self
                        .cms
                        .get(cm)
                        .is_some_and(|c| c.replica.role() == crate::ha::Role::Standby),
                };
                if !holds && now < deadline {
                    return false;
                }
                action.waiting = None;
                if !holds && wait == Wait::Answered {
                    action.error = Some(not_back(Duration::from_nanos(deadline - since)));
                    action.steps.clear();
                    return true;
                }
                if holds && wait == Wait::Synced {
                    self.note(cm, "caught up: a standby");
                }
                if !holds && wait == Wait::Synced {
                    action.error = Some(format!(
                        "cm-{} did not catch up within {} s",
                        cm + 1,
                        (deadline - since) / 1_000_000_000
                    ));
                    action.steps.clear();
                    return true;
                }
            }
            let Some(step) = action.steps.pop_front() else {
                return true;
            };
            match step {
                Step::Alive(alive) => {
                    if let Some(n) = self.nodes.get_mut(node) {
                        n.alive = alive;
                    }
                }
                Step::Reset => {
                    if let Some(n) = self.nodes.get_mut(node) {
                        n.node.command(NodeCommand::Reset);
                    }
                }
                Step::CmDown => {
                    if let Some(c) = self.cms.get_mut(cm) {
                        c.alive = false;
                        if c.serving {
                            c.serving = false;
                            self.serving_log.push((now, cm, false));
                        }
                    }
                    self.note(cm, "stopped (its state is gone)");
                }
                Step::CmUp => {
                    if let Some(c) = self.cms.get_mut(cm) {
                        c.replica = Replica::new(c.cfg.clone(), None, now);
                        c.alive = true;
                        c.cut = false;
                    }
                    self.note(cm, "started afresh, syncing");
                }
                Step::Cut(cut) => {
                    if let Some(c) = self.cms.get_mut(cm) {
                        c.cut = cut;
                    }
                    self.note(cm, if cut { "cut off" } else { "reconnected" });
                }
                Step::Resign => {
                    if let Some(c) = self.cms.get_mut(cm) {
                        c.replica.resign();
                    }
                    self.cm_round(now);
                }
                Step::Synced(limit) => {
                    action.waiting = Some((Wait::Synced, now, now + ns(limit)));
                }
                Step::Admin(verb) => {
                    let serving = self.vip_owner();
                    let answer = match serving.and_then(|i| self.cms.get_mut(i)) {
                        Some(c) => c.replica.admin(now, id, verb),
                        None => Err("no Call Manager serves the virtual IP".to_owned()),
                    };
                    if let Err(e) = answer {
                        action.error = Some(e);
                        action.steps.clear();
                        return true;
                    }
                    // What the admin action made the Call Manager do goes out in this step.
                    self.cm_round(now);
                }
                Step::Idle(limit) => action.waiting = Some((Wait::Idle, now, now + ns(limit))),
                Step::Answered(limit) => {
                    action.waiting = Some((Wait::Answered, now, now + ns(limit)));
                }
                Step::Sleep(d) => action.waiting = Some((Wait::Sleep, now, now + ns(d))),
            }
        }
    }

    /// Whether the server (or Call Manager) named so is running and reachable.
    pub fn is_alive(&self, name: &str) -> bool {
        if let Some(i) = self.cm_index(name) {
            return self.cms.get(i).is_some_and(|c| c.alive && !c.cut);
        }
        self.index_of(name)
            .and_then(|i| self.nodes.get(i))
            .is_some_and(|n| n.alive)
    }
}

pub(crate) fn ns(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(Nanos::MAX)
}

/// The key of the Call Manager's nonces and tags, from the seed: a virtual run must not read
/// the operating system's random source, or no seed would repeat it.
fn seeded_key(seed: u64) -> pbxlab_proto::mac::Key {
    let mut bytes = [0u8; 32];
    let mut state =
        pbxlab_balancer::hash::mix64(seed ^ pbxlab_balancer::hash::fnv1a(b"call manager key"));
    for chunk in bytes.chunks_exact_mut(8) {
        chunk.copy_from_slice(&pbxlab_balancer::hash::splitmix64(&mut state).to_le_bytes());
    }
    pbxlab_proto::mac::Key::from_bytes(bytes)
}

/// One step of an operator action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Tell the Call Manager, as the console does.
    Admin(Verb),
    /// The node's process runs (and is reachable) or not.
    Alive(bool),
    /// The node's process starts afresh: every session gone.
    Reset,
    /// Until the node holds no session, at most this long (then it goes on all the same).
    Idle(Duration),
    /// Until a probe answered after now counts it healthy, at most this long (an error then).
    Answered(Duration),
    Sleep(Duration),
    /// The Call Manager's process stops (its state is lost).
    CmDown,
    /// The Call Manager's process starts afresh, with no state.
    CmUp,
    /// The Call Manager is cut off from the network, or reconnected.
    Cut(bool),
    /// The active Call Manager hands over before it stops.
    Resign,
    /// Until the Call Manager holds the active's state, at most this long (then an error).
    Synced(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Idle,
    Answered,
    Sleep,
    Synced,
}

/// Whom an action acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Node { index: usize, id: ServerId },
    Cm(usize),
}

/// How long a Call Manager that started afresh may take to hold the active's state.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// An operator action under way in the world (`World::act`, `World::poll`).
#[derive(Debug)]
pub struct Action {
    target: Target,
    steps: VecDeque<Step>,
    /// What it waits for, since when, and until when at most.
    waiting: Option<(Wait, Nanos, Nanos)>,
    pub started: Nanos,
    pub error: Option<String>,
}

impl Action {
    /// When the wait it is in ends at the latest.
    pub fn deadline(&self) -> Option<Nanos> {
        self.waiting.map(|(_, _, d)| d)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod ha_tests;
