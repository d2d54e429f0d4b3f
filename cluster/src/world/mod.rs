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
    MOVE_WAIT, Options, Records, answered_since, cm_config, not_back, start_limit, take_records,
};
use crate::cm::{CallManager, NodeSpec};
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
    Cm,
    Node(usize),
    Peer,
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
    pub cm: SocketAddr,
    /// Each server's name and address, in the scenario's order.
    pub servers: Vec<(String, SocketAddr)>,
}

/// The Call Manager, the nodes and the network on one virtual clock.
pub struct World {
    now: Nanos,
    pub net: Net,
    cm: CallManager,
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
        Ok(World {
            now: 0,
            net: Net::new(seed),
            cm: CallManager::new(cfg, balancer, specs),
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
            servers: self
                .nodes
                .iter()
                .map(|n| (n.node.name().to_owned(), n.node.addr()))
                .collect(),
        }
    }

    pub fn cm(&self) -> &CallManager {
        &self.cm
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
            Some(self.cm.next_deadline()),
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
        let taken = take_records(&mut self.cm, &mut self.log);
        self.records.events.extend(taken.events);
        self.records.reassigned.extend(taken.reassigned);
        self.records.dropped.extend(taken.dropped);
    }

    /// Hands one datagram to its destination; true if it was the peer's.
    fn deliver(&mut self, now: Nanos, d: &Datagram, peer: &mut dyn Peer) -> bool {
        match self.routes.get(&d.to).copied() {
            Some(Route::Cm) => self.cm.handle(now, d.from, &d.bytes),
            Some(Route::Node(i)) => {
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
                    self.cm.on_node_event(now, id, event);
                }
                self.flush_node(i);
            }
            Some(Route::Peer) => {
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
        self.cm.advance(now);
        let (net, from) = (&mut self.net, self.cm_addr);
        self.cm.transmit_all(|datagrams| {
            for &(to, bytes) in datagrams {
                net.send(now, from, to, bytes);
            }
        });
        let commands: Vec<(ServerId, NodeCommand)> = self.cm.node_commands().collect();
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
                let ours = self.cm.media_sessions(ServerId(n.node.id()));
                let theirs = n.node.sessions() as u64;
                (ours != theirs).then(|| (n.node.name().to_owned(), theirs, ours))
            })
            .collect()
    }

    /// Starts an operator action on the server named `server`, as `Control::act` would.
    pub fn act(&mut self, verb: Verb, server: &str) -> Result<Action, String> {
        let i = self
            .index_of(server)
            .ok_or_else(|| format!("no server named {server:?}"))?;
        let id = self
            .nodes
            .get(i)
            .map(|n| ServerId(n.node.id()))
            .ok_or_else(|| format!("no server named {server:?}"))?;
        let start_limit = start_limit(&self.cm.balancer().health());
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
            node: i,
            id,
            steps: steps.into(),
            waiting: None,
            started: self.now,
            error: None,
        })
    }

    /// Carries `action` on as far as it goes now; true once it is over (see `Action::error`).
    pub fn poll(&mut self, action: &mut Action) -> bool {
        let now = self.now;
        loop {
            if let Some((wait, since, deadline)) = action.waiting {
                let holds = match wait {
                    Wait::Idle => self
                        .nodes
                        .get(action.node)
                        .is_none_or(|n| n.node.sessions() == 0),
                    Wait::Answered => {
                        answered_since(&self.cm, action.id, Duration::from_nanos(since))
                    }
                    Wait::Sleep => now >= deadline,
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
            }
            let Some(step) = action.steps.pop_front() else {
                return true;
            };
            match step {
                Step::Alive(alive) => {
                    if let Some(n) = self.nodes.get_mut(action.node) {
                        n.alive = alive;
                    }
                }
                Step::Reset => {
                    if let Some(n) = self.nodes.get_mut(action.node) {
                        n.node.command(NodeCommand::Reset);
                    }
                }
                Step::Admin(verb) => {
                    if let Err(e) = self.cm.admin(now, action.id, verb) {
                        action.error = Some(e.to_string());
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

    /// Whether the server named so is running and reachable.
    pub fn is_alive(&self, name: &str) -> bool {
        self.index_of(name)
            .and_then(|i| self.nodes.get(i))
            .is_some_and(|n| n.alive)
    }
}

fn ns(d: Duration) -> Nanos {
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Idle,
    Answered,
    Sleep,
}

/// An operator action under way in the world (`World::act`, `World::poll`).
#[derive(Debug)]
pub struct Action {
    node: usize,
    id: ServerId,
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
